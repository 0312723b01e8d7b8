"""
The fast hit path (issue 23): a cached answer to a ``GET`` or ``HEAD``
written straight from the connection's C{dataReceived}, without
twisted.web's L{Request}, Klein's dispatch or a Deferred.

A request is answered here only when all of these hold, else every byte of
it is handed, unread, to twisted.web's L{HTTPChannel} (one HTTP/1.1
implementation for every hard case):

 - its whole head has arrived and L{parse_head} is sure of it: plain
   HTTP/1.1, CRLF line ends, printable ASCII, a request line and header
   lines twisted.web would read alike, no body, nothing twisted.web acts on
   itself (C{Content-Length}, C{Transfer-Encoding}, C{Expect},
   C{Connection: close});
 - the checks made before routing pass (L{check_head}, with the keys of the
   channel and of the front);
 - the front finds a hit (L{ApiFront.resolve_hit} and L{ApiFront.hit}:
   the same resolution, freshness, C{max_staleness}, conditional requests,
   C{HEAD}, C{Cache-Status} and C{Age} as the slow path, written by the
   same L{apicache.http.writers.write_result}).

A head answered so is remembered by its bytes (L{Plan}, bounded): when the
same bytes come again, only what can have changed is done again (the bearer
token's verdict, the store's lookup, freshness and the answer).

The request it answers is a L{FastRequest}: the few attributes those
functions and L{ApiSite.request_done} (metrics, span, access log line)
read and set.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers

from apicache._twisted import headers_over, raw_headers, send_now
from apicache.auth.tokens import Claims, TokenRefused
from apicache.cache.wire import canonical_name
from apicache.http.channel import check_head, request_token, token_needed
from apicache.http.front import ApiFront
from apicache.http.resolve import Resolved
from apicache.http.writers import write_result
from apicache.ops.tracing import NEW_TRACE_ID, RequestTrace, Tracer

if TYPE_CHECKING:
    from apicache.http.channel import ApiChannel, ApiSite

__all__ = [
    "FastPath",
    "FastRequest",
    "Head",
    "Plan",
    "parse_head",
    "PerRequestLines",
    "PER_REQUEST_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_HEADER_LINES",
    "PLANS_MAX",
]

#: Heads longer than this are left to twisted.web (its limits are larger:
#: 16 KiB a line and a head, so whatever it refuses is never taken here).
MAX_HEAD_BYTES = 8192
#: Heads of more header lines than this are left to twisted.web (it
#: refuses more than 500).
MAX_HEADER_LINES = 100

# The bytes a head taken here may hold: printable ASCII, SP and HTAB, and
# CR and LF as CRLF pairs only.  Anything else (NUL, another control,
# obs-text) is twisted.web's to judge.
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t"
# RFC 9110 tchar: a header name made of anything else is twisted.web's to refuse
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Header names twisted.web acts on itself (a body to read, a 100 Continue to
# send): a request carrying one is never taken here.
_ITS_OWN = frozenset({b"Content-Length", b"Transfer-Encoding", b"Expect"})
_CONNECTION = canonical_name(b"connection")
_RAW_TRACEPARENT = canonical_name(b"traceparent")

# header name as sent -> as twisted.web stores it, or b"" for a name of
# _ITS_OWN (only valid names are remembered: a name found needs no check)
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 1024


class Head:
    """
    A request head L{parse_head} is sure of.

    @ivar method: C{GET} or C{HEAD}.
    @ivar target: the request target (path and query), as received.
    @ivar headers: each header name as twisted.web stores it (its
        canonical capitalisation) to its values in order, each stripped of
        surrounding spaces and tabs, as twisted.web's table holds them.
    @ivar end: the offset just past the head's blank line.
    """

    __slots__ = ("method", "target", "headers", "end")

    def __init__(self, method: bytes, target: bytes, headers: dict[bytes, list[bytes]], end: int) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.end = end


def parse_head(data: bytes, start: int = 0) -> Head | None:
    """
    Parse the request head beginning at ``data[start]``, strictly.

    @return: the L{Head}, or ``None`` when the head is not complete yet or
        is anything but a plain HTTP/1.1 C{GET} or C{HEAD} without a body
        that twisted.web's L{HTTPChannel} would parse into the same method,
        target and header table: then twisted.web reads it.
    """
    end = data.find(b"\r\n\r\n", start, start + MAX_HEAD_BYTES)
    if end < 0:
        return None
    head = data[start:end]
    # what is left once the printable bytes are gone must be the line ends,
    # CRLF pairs and nothing else: no control byte, no obs-text, no lone
    # CR or LF (twisted.web splits lines at CRLF only)
    ends = head.translate(None, _PRINTABLE)
    crlf = len(ends) >> 1
    if crlf > MAX_HEADER_LINES or ends != b"\r\n" * crlf:
        return None
    lines = head.split(b"\r\n")
    if len(lines) != crlf + 1:
        # a CR and an LF apart ("a\rb\nc"): not a line end to twisted.web
        return None
    request_line = lines[0].split(b" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if (method != b"GET" and method != b"HEAD") or version != b"HTTP/1.1" or target[:1] != b"/" or b"\t" in target:
        return None
    headers: dict[bytes, list[bytes]] = {}
    names = _NAMES
    del lines[0]
    for line in lines:
        name, colon, value = line.partition(b":")
        canonical = names.get(name)
        if not canonical:
            # b"": a name twisted.web acts on itself; None: not seen yet, or
            # not a name (a space before the colon, an obs-fold line, which
            # begins with a space, no colon at all)
            if canonical is not None or not colon or not name or name.translate(None, _TCHAR):
                return None
            canonical = canonical_name(name)
            if canonical in _ITS_OWN:
                canonical = b""
            if len(names) < _NAMES_MAX:
                names[name] = canonical
            if not canonical:
                return None
        values = headers.get(canonical)
        if values is None:
            headers[canonical] = [value.strip(b" \t")]
        else:
            values.append(value.strip(b" \t"))
    connection = headers.get(_CONNECTION)
    # twisted.web reads the first Connection value only, token by token
    if connection is not None and b"close" in [t.lower() for t in connection[0].split(b" ")]:
        return None
    return Head(method, target, headers, end + 4)


#: Answers written on the fast path are gathered up to this many bytes, then
#: sent: pipelined hits leave in few writes, and no more than this waits
#: unsent beyond what the transport holds (``server.max_write_buffer``).
BATCH_BYTES = 16384


class _Answers:
    """
    Where the fast path's answers on one connection are written (the
    C{channel} of its L{FastRequest}s): gathered, then sent by L{flush}.
    Whatever else a request asks of its channel is the channel's.
    """

    __slots__ = ("channel", "site", "peer", "_pending", "_size")

    def __init__(self, channel: ApiChannel) -> None:
        self.channel = channel
        self.site = channel.site
        self.peer = channel.peer
        self._pending: list[bytes] = []
        self._size = 0

    def writeSequence(self, iovec: list[bytes]) -> None:
        """
        Queue an answer (sent by L{flush}, or now when L{BATCH_BYTES} wait).
        """
        pending = self._pending
        for data in iovec:
            pending.append(data)
            self._size += len(data)
        if self._size >= BATCH_BYTES:
            self.flush()

    def write(self, data: bytes) -> None:
        """
        Queue bytes of an answer.
        """
        self.writeSequence([data])

    def flush(self) -> None:
        """
        Send what is queued.
        """
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending = []
            self._size = 0
            transport = self.channel.transport
            if transport is not None:
                send_now(transport, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)


#: The response headers of a L{FastRequest} that set none (never written to).
_NO_HEADERS = Headers()


class FastRequest:
    """
    A request answered by the fast path: what the hit path's functions read
    and set on a request (L{check_head}, L{apicache.http.resolve.Resolver},
    L{ApiFront.answer_hit}, L{apicache.http.writers.write_result}) and what
    L{ApiSite.request_done} counts and logs, without twisted.web's
    L{Request}.
    """

    __slots__ = (
        "channel",
        "method",
        "uri",
        "path",
        "requestHeaders",
        "responseHeaders",
        "started",
        "client",
        "code",
        "code_message",
        "sentLength",
        "startedWriting",
        "finished",
        "route_type",
        "tenant",
        "cache",
        "trace",
        "trace_id",
        "token_claims",
    )

    clientproto = b"HTTP/1.1"
    #: the checks before routing passed (see L{FastPath.answer})
    head_checked = True

    def __init__(
        self, channel: _Answers, method: bytes, uri: bytes, path: bytes, headers: Headers, started: float, client: Any
    ) -> None:
        self.channel = channel
        self.method = method
        self.uri = uri
        self.path = path
        self.requestHeaders = headers
        # made by setHeader when a header is set: a hit sets none
        self.responseHeaders = _NO_HEADERS
        self.started = started
        self.client = client
        self.code = 200
        self.code_message = b"OK"
        self.sentLength = 0
        self.startedWriting = 0
        self.finished = False
        self.route_type = "-"
        self.tenant = "-"
        self.cache = "-"
        self.trace: RequestTrace | None = None
        #: the access line's trace id when no trace was made (NEW_TRACE_ID)
        self.trace_id: str | None = None
        #: the verified claims of its bearer token ([auth]), or None
        self.token_claims: Claims | None = None

    def getHeader(self, name: bytes) -> bytes | None:
        """
        Return the last value of the request header ``name``, or ``None``.
        """
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def setHeader(self, name: bytes, value: bytes) -> None:
        """
        Set the answer's header ``name`` (written before the stored headers).
        """
        if self.responseHeaders is _NO_HEADERS:
            self.responseHeaders = Headers()
        self.responseHeaders.setRawHeaders(name, [value])

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """
        Set the answer's status.
        """
        self.code = code
        self.code_message = message or RESPONSES.get(code, b"Unknown Status")

    def finish(self) -> None:
        """
        The answer is written: count, trace and log it as every request is
        (L{ApiSite.request_done}).
        """
        self.finished = True
        site = self.channel.site
        tracer = site.tracer
        if type(tracer) is not Tracer:
            # the span starts and ends here: nothing of a hit is traced in
            # between (no log line, no upstream call), and a request the
            # fast path declines must not have opened one
            self.trace = tracer.start(self.requestHeaders, "apicache")
        elif site.access_log is not None:
            # a plain Tracer exports nothing: only the access line reads the
            # trace id.  A caller's trace is read as Tracer.start reads it; a
            # new one's id is drawn when the line is written.
            if _RAW_TRACEPARENT in raw_headers(self.requestHeaders):
                self.trace = tracer.start(self.requestHeaders, "apicache")
            else:
                self.trace_id = NEW_TRACE_ID
        site.request_done(self)  # type: ignore[arg-type]


class Plan:
    """
    What a request head answered as a hit resolved to, remembered by the
    head's bytes (L{FastPath}): the same bytes again pass the same checks
    and resolve alike (the api-keys, the routes and the resolution are
    fixed for the process; what the bytes say does not change), so only
    what can change is done again: the bearer token's verdict (expiry, key
    set), the store's lookup and freshness, the answer.

    @ivar resolved: the resolution (read-only, as the resolver's memo).
    @ivar headers: the request's header table (read-only: the hit path
        reads request headers, never writes them).
    @ivar token: the bearer token to ask the verifier about, or ``None``.
    """

    __slots__ = ("method", "target", "path", "headers", "resolved", "token")

    def __init__(
        self, method: bytes, target: bytes, path: bytes, headers: Headers, resolved: Resolved, token: bytes | None
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.headers = headers
        self.resolved = resolved
        self.token = token


#: How many request heads answered as hits are remembered (L{Plan}), then
#: forgotten at once; and the longest head remembered.  At most about
#: 1024 x 3 KiB: a fixed overhead, whatever clients send.
PLANS_MAX = 1024
PLAN_HEAD_BYTES = 2048

# Request headers that callers, their tracers and their proxies set anew on
# every request, and that a hit never reads but for the trace context: a
# head is remembered without their lines, so that such a caller's requests
# find their plan, and each request's own values are put back into its
# headers (what selects a variant, or the trace, reads them there).  Any
# spelling, as twisted.web reads them.  Those keyed by the configuration
# (upstream.forward_headers less upstream.unkeyed_headers) are left out:
# they are part of the key.  The W3C trace context is never keyed
# (config.TRACING_HEADERS).
PER_REQUEST_HEADERS = (
    b"traceparent",
    b"tracestate",
    b"x-request-id",
    b"x-correlation-id",
    b"x-correlationid",
    b"request-id",
    b"x-amzn-trace-id",
    b"x-cloud-trace-context",
    b"b3",
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-parentspanid",
    b"x-b3-sampled",
)


class PerRequestLines:
    """
    Takes the lines of per-request headers (L{PER_REQUEST_HEADERS} but
    ``keyed``) out of a request head's bytes.
    """

    def __init__(self, keyed: tuple[bytes, ...] = (), unread: tuple[bytes, ...] = PER_REQUEST_HEADERS) -> None:
        #: the names taken, lower case
        self.names = tuple(n for n in unread if n not in keyed)
        # a line of one of them: its value up to the line's CRLF (a bare CR
        # or LF in it: not matched, the line stays in the bytes); the names
        # in any case, the CRLF before them not (as fast as exact case: the
        # search still starts from the literal CRLF)
        self._line = re.compile(
            rb"\r\n((?i:" + b"|".join(re.escape(n) for n in self.names) + rb")):([^\r\n]*)(?=\r\n)"
        ) if self.names else None
        # each name as twisted.web stores it
        self._stored = {n: canonical_name(n) for n in self.names}

    def split(self, raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """
        Return a request head's bytes without its lines of per-request
        headers, and what they held: each header name as twisted.web stores
        it and the value as it does (surrounding spaces and tabs stripped).

        @return: ``None`` when the head has none of those lines, one of them
            twice, or one holding anything but printable ASCII (then it has
            no key but its bytes).
        """
        if self._line is None:
            return None
        # [before, name, value, between, name, value, ..., after]
        pieces = self._line.split(raw)
        n = len(pieces)
        if n == 1:
            return None
        if n == 4:
            # one line (a traced caller's traceparent): the short way
            before, name, value, after = pieces
            if value.translate(None, _PRINTABLE):
                return None
            return before + after, [(self._stored[name.lower()], value.strip(b" \t"))]
        values = pieces[2::3]
        for value in values:
            if value.translate(None, _PRINTABLE):
                return None
        stored = self._stored
        names = [stored[name.lower()] for name in pieces[1::3]]
        if len(set(names)) < len(names):
            return None
        return b"".join(pieces[0::3]), [(name, value.strip(b" \t")) for name, value in zip(names, values, strict=True)]


def _per_request(name: bytes, trace: list[tuple[bytes, bytes]]) -> bool:
    return any(name == taken for taken, _ in trace)


class FastPath:
    """
    The fast path of one site: L{serve} answers the hits at the front of
    what a connection received and returns the rest for twisted.web.

    A head answered as a hit is remembered by its bytes (L{Plan}): a
    client asking the same again (a keep-alive client polling, a pool of
    them) is neither parsed, checked nor resolved again.

    @param site: the site whose channels call it (its keys, tenant header,
        clock, counts).
    @param front: the front resource: its keys (checked again when they are
        not the site's, as L{ApiFront.render} does) and its
        L{ApiFront.resolve_hit} and L{ApiFront.hit}.
    @ivar answered: requests answered here.
    """

    log = Logger()

    def __init__(self, site: ApiSite, front: ApiFront) -> None:
        self.site = site
        self.front = front
        self.answered = 0
        self._plans: dict[bytes, Plan] = {}
        # what a caller sets anew each request, unless the configuration keys
        # it or names it the tenant header (its tenant is the plan's)
        self._per_request = PerRequestLines(keyed=(*front.keyed_headers, site.tenant_header.lower()))

    @classmethod
    def for_site(cls, site: ApiSite, resource: Any) -> FastPath | None:
        """
        Return the fast path of ``site`` serving ``resource``, or ``None``
        when ``resource`` is not the front (a site serving anything else has
        no hit to answer).
        """
        return cls(site, resource) if isinstance(resource, ApiFront) else None

    def serve(self, channel: ApiChannel, data: bytes) -> bytes:
        """
        Answer the requests at the front of ``data`` (read by ``channel``,
        between two requests) that are hits, in order, until one is not, or
        until the channel must stop (its write buffer is full, it is closing).

        @return: the bytes not consumed, beginning at a request's first
            byte: the request declined and what follows, or what is held
            back until the client reads.
        """
        start = 0
        n = len(data)
        transport = channel.transport
        answers = channel.fast_answers
        if answers is None:
            answers = channel.fast_answers = _Answers(channel)
        plans = self._plans
        while start < n:
            end = data.find(b"\r\n\r\n", start, start + MAX_HEAD_BYTES)
            if end < 0:
                break
            # the head's bytes, its blank line included (a head read alone
            # is the read itself: no copy, and its hash is worked out once)
            raw = data if start == 0 and end + 4 == n else data[start : end + 4]
            plan = plans.get(raw)
            if plan is not None:
                if not self.answer(answers, plan):
                    break
            else:
                traced = self._per_request.split(raw)
                plan = plans.get(traced[0]) if traced is not None else None
                if plan is not None:
                    if not self.answer(answers, plan, traced[1]):  # type: ignore[index]
                        break
                else:
                    head = parse_head(data, start)
                    if head is None or not self.answer_new(answers, head, raw, traced):
                        break
            start = end + 4
            if channel.write_blocked or transport is None or transport.disconnecting:  # type: ignore[attr-defined]
                break
        answers.flush()
        return data[start:] if start else data

    def answer_new(
        self,
        answers: _Answers,
        head: Head,
        raw: bytes,
        traced: tuple[bytes, list[tuple[bytes, bytes]]] | None = None,
    ) -> bool:
        """
        Answer the request of ``head`` (first seen) if it is a hit whose
        checks pass, and remember its L{Plan} under ``raw``, its bytes, or
        (``traced``: L{PerRequestLines.split} of them) under its bytes
        without its per-request lines.

        @return: whether it was answered; if not, nothing was written and
            nothing counted.
        """
        site = self.site
        front = self.front
        target = head.target
        headers = headers_over(head.headers)
        path = target.partition(b"?")[0]
        # the channel's checks, then the front's when its keys differ
        # (ApiFront.render): a request they refuse is refused by twisted.web
        if check_head(site.keys, site.tenant_header, path, headers) is not None:
            return False
        if front.keys is not site.keys and check_head(front.keys, site.tenant_header, path, headers) is not None:
            return False
        token = None
        claims = None
        verifier = site.verifier
        if verifier is not None or front.verifier is not None:
            if front.verifier is not verifier:
                return False
            if token_needed(verifier, site.tenant_header, path, headers):
                # [auth]: only a token the verifier remembers as verified,
                # and still valid, is taken here; any other (new, refused,
                # waiting for its key set) is verified, counted and
                # answered by twisted.web's path
                try:
                    token = request_token(headers, answers.channel.token_memo())
                except TokenRefused:
                    return False
                claims = verifier.remembered(token) if token and verifier is not None else None
                if claims is None:
                    return False
        request = FastRequest(answers, head.method, target, path, headers, site.clock.seconds(), answers.peer)
        request.token_claims = claims
        try:
            resolved = front.resolve_hit(request)  # type: ignore[arg-type]
        except Exception:
            # nothing written: twisted.web's path answers it (a 500 with its
            # id, if it fails there too)
            self.log.failure("the fast path failed before answering")
            return False
        if resolved is None or not self._answer(request, resolved, headers):
            return False
        key = raw
        if traced is not None:
            table = head.headers
            # the per-request lines of this request only, once each: a head
            # with a second line of one is remembered as its bytes
            if all(len(table.get(name, ())) == 1 for name, _ in traced[1]):
                key = traced[0]
                headers = headers_over({k: v for k, v in table.items() if not _per_request(k, traced[1])})
        if len(key) <= PLAN_HEAD_BYTES:
            plans = self._plans
            if len(plans) >= PLANS_MAX:
                plans.clear()
            plans[key] = Plan(head.method, target, path, headers, resolved, token)
        return True

    def answer(self, answers: _Answers, plan: Plan, trace: list[tuple[bytes, bytes]] | None = None) -> bool:
        """
        Answer a request whose head was answered as a hit before (``plan``)
        if it is a hit now: its token still verified, its entry fresh.

        @param trace: the request's own per-request lines (trace context,
            request ids), when its plan was found without them (L{PerRequestLines.split}).
        @return: whether it was answered; if not, nothing was written and
            nothing counted.
        """
        claims = None
        if plan.token is not None:
            claims = self.site.verifier.remembered(plan.token)  # type: ignore[union-attr]
            if claims is None:
                return False
        headers = plan.headers
        if trace is not None:
            table = dict(raw_headers(headers))
            for name, value in trace:
                table[name] = [value]
            headers = headers_over(table)
        request = FastRequest(
            answers, plan.method, plan.target, plan.path, headers, self.site.clock.seconds(), answers.peer
        )
        request.token_claims = claims
        resolved = plan.resolved
        # as the resolver sets them
        request.route_type = resolved.route.type
        request.tenant = resolved.tenant
        return self._answer(request, resolved, headers)

    def _answer(self, request: FastRequest, resolved: Resolved, headers: Headers) -> bool:
        """
        Write the fresh answer held for ``resolved``, if any.
        """
        site = self.site
        site.active += 1
        answered = False
        try:
            result = self.front.hit(resolved, headers)
            if result is not None:
                # a FastRequest has what the writer reads and sets on a request
                write_result(request, result)
                answered = True
        except Exception:
            # written already: what failed is the bookkeeping after it; if
            # nothing was written, twisted.web's path answers the request (a
            # 500 with its id, if it fails there too)
            answered = bool(request.startedWriting)
            self.log.failure("the fast path failed {when}", when="after answering" if answered else "before answering")
        finally:
            if not request.finished:
                site.active -= 1
        if answered:
            self.answered += 1
            if request.token_claims is not None:
                # as the verifier counts a token it answers from its cache
                site.verifier.cache_hits += 1  # type: ignore[union-attr]
        return answered
