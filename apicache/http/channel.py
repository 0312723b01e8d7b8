"""
Inbound connections and requests (SPEC.md section 4): L{ApiChannel} (the
limits of a connection: count, head deadline, body size, the checks made
once a request's head is in), L{ApiSite} and L{ApiRequest} (requests in
flight, draining for a graceful shutdown, metrics, span and access log line
per request) and L{HTTPService}, which listens.

The front resource and the hit path are L{apicache.http.front}; the writers
of answers L{apicache.http.writers}; the Klein application (routes and
error handlers) L{apicache.http.api}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote_to_bytes as unquote

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource

from apicache._twisted import HTTPChannelInternals, bound_writes, raw_headers
from apicache.auth.apikey import ApiKeys
from apicache.auth.tokens import Claims, TokenRefused, TokenVerifier, bearer_token
from apicache.cache.routes import RESERVED_PATHS
from apicache.cache.wire import canonical_name
from apicache.http.errors import JSON, ApiError, error_body, invalid_token
from apicache.ops.logs import AccessLog
from apicache.ops.metrics import Metrics
from apicache.ops.tracing import RequestTrace, Tracer
from apicache.ops.tracing import enter as enter_trace
from apicache.ops.tracing import leave as leave_trace

__all__ = [
    "ApiRequest",
    "ApiChannel",
    "ApiSite",
    "ConnectionLimits",
    "HTTPService",
    "check_head",
    "check_token",
    "request_token",
    "token_needed",
    "connection_limit",
    "TokenMemo",
]

_UNAUTHENTICATED = frozenset({b"/healthz", b"/readyz"})
#: Reserved paths that touch no tenant's entries, whatever headers come
#: with them: no bearer token is asked for there.
_NO_TENANT_PATHS = RESERVED_PATHS - {b"/clear"}


class ApiRequest(server.Request):
    """
    A request that counts itself in its site's in-flight requests (for a
    graceful shutdown) and writes the access log line when it finishes.
    """

    route_type = "-"
    tenant = "-"
    cache = "-"
    trace: RequestTrace | None = None
    #: the checks before routing passed when the head came in (L{ApiChannel})
    head_checked = False
    #: the claims of the request's verified bearer token (C{[auth]} set and
    #: the request names a tenant), else C{None}
    token_claims: Claims | None = None
    _counted = False

    _postpath: list[bytes] | None = None

    def process(self) -> None:
        site: ApiSite = self.channel.site  # type: ignore[attr-defined]
        self.started = site.clock.seconds()
        self._counted = True
        site.active += 1
        # log lines written while handling carry the trace id; the upstream
        # gets our span as its parent (the API's GET forwards it: a hit
        # never goes upstream)
        trace = self.trace = site.tracer.start(self.requestHeaders, "apicache")
        token = enter_trace(trace)
        try:
            if not site.leaf_root or self.path == b"*":
                super().process()
                return
            # twisted.web's Request.process without what this API never
            # uses, since the hit path is short enough for these to matter:
            # no Server header, the Date formatted once a second, no
            # traversal below a leaf root, postpath split only if Klein
            # asks for it
            self.site = site
            self.responseHeaders.setRawHeaders(b"date", [site.http_date(self.started)])
            self.prepath = []
            self.sitepath: list[bytes] = []
            try:
                self.render(site.resource)
            except BaseException:
                self.processingFailed(Failure())
        finally:
            leave_trace(token)

    @property
    def postpath(self) -> list[bytes]:  # type: ignore[override]
        if self._postpath is None:
            self._postpath = [unquote(p) for p in self.path[1:].split(b"/")]
        return self._postpath

    @postpath.setter
    def postpath(self, value: list[bytes]) -> None:
        self._postpath = value

    _body_bytes = 0

    def handleContentChunk(self, data: bytes) -> None:
        """
        Count the body while it is read (a chunked body declares no
        length): past ``server.max_body_bytes`` the request is answered
        ``413`` and the connection closed, and nothing more is kept.
        """
        channel = cast("ApiChannel | None", self.channel)
        if channel is None or channel.refused:
            return
        self._body_bytes += len(data)
        limit = channel.site.limits.max_body_bytes
        if self._body_bytes > limit:
            channel.refuse(_too_large(limit))
            return
        super().handleContentChunk(data)

    def _done(self) -> None:
        if self._counted:
            self._counted = False
            self.site.request_done(self)  # type: ignore[union-attr]

    def finish(self) -> None:
        super().finish()
        self._done()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._done()


@dataclass(frozen=True)
class ConnectionLimits:
    """
    What one connection may hold and how long it may take (SPEC.md
    section 2, ``[server]``).

    @ivar max_connections: connections held at once; past it new ones are
        closed at once (0: no limit here; see L{connection_limit}).
    @ivar header_timeout: seconds from a request's first byte for its
        request line and headers to arrive.
    @ivar idle_timeout: seconds a keep-alive connection may sit idle
        between requests (twisted.web's C{timeOut}).
    @ivar max_body_bytes: the largest request body read.
    @ivar body_timeout: seconds from the end of a request's head for its
        body to arrive in full (v3).
    @ivar max_write_buffer: bytes of answers waiting for a connection before
        no more of its requests are read (v3).
    """

    max_connections: int = 0
    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_body_bytes: int = 1048576
    body_timeout: float = 30.0
    max_write_buffer: int = 1048576


def connection_limit(configured: int, open_files: int) -> int:
    """
    Return ``server.max_connections`` in effect: ``configured``, or when it
    is 0, 80 % of ``open_files`` (the soft open-file limit; the rest is left
    for upstream and Redis connections, logs and the like).
    """
    if configured > 0:
        return configured
    return max(1, open_files * 4 // 5)


# the checks read twisted.web's table of raw headers directly, with
# names worked out once: getRawHeaders encodes the name on every call
_RAW_API_KEY = canonical_name(b"api-key")


def check_head(keys: ApiKeys, tenant_header: bytes, path: bytes, headers: Headers) -> ApiError | None:
    """
    Check what is checked before routing and before any body byte is read:
    the tenant header and ``api-key`` given at most once, and the key.

    @return: the error to answer, or ``None`` when the request may go on.
    """
    raw = raw_headers(headers)
    given = raw.get(_RAW_API_KEY) or None
    tenants = raw.get(canonical_name(tenant_header)) or None
    if (given and len(given) > 1) or (tenants and len(tenants) > 1):
        return ApiError(400, "duplicate_header", "the tenant header or api-key is given more than once")
    if keys.required and path not in _UNAUTHENTICATED:
        if not given or not keys.accepts(given[0]):
            return ApiError(401, "unauthorized", "api-key missing or wrong")
    return None


_RAW_AUTHORIZATION = canonical_name(b"authorization")


class TokenMemo:
    """
    The last bearer token a connection sent, as the verifier's cache knows
    it: a keep-alive connection sends the same token again and again, and
    handing the verifier that same bytes object (its hash computed once)
    spares hashing the whole token, 0.5-2 KiB, on every request.  Every
    check still runs (the verifier's cache holds the verdict and its expiry).

    @ivar header: the C{Authorization} value it came from.
    @ivar token: the token taken from it.
    """

    __slots__ = ("header", "token")

    def __init__(self) -> None:
        self.header: bytes | None = None
        self.token: bytes | None = None


def token_needed(verifier: TokenVerifier | None, tenant_header: bytes, path: bytes, headers: Headers) -> bool:
    """
    Return whether a request must carry a verified bearer token: C{[auth]}
    is set and it names a tenant (SPEC.md section 4: reads, purges, tag
    purges, C{/clear} and pass-through writes, whatever the method; no
    tenant header, or C{/}, C{/healthz}, C{/readyz}, C{/metrics}: none).
    """
    if verifier is None or path in _NO_TENANT_PATHS:
        return False
    return bool(raw_headers(headers).get(canonical_name(tenant_header)))


def request_token(headers: Headers, memo: TokenMemo | None = None) -> bytes | None:
    """
    Return the bearer token of a request (L{bearer_token}), the memo's when
    the C{Authorization} value is the one it came from.

    @return: the token, or C{None} when none was sent.
    @raise TokenRefused: C{malformed} (not counted here).
    """
    values = raw_headers(headers).get(_RAW_AUTHORIZATION) or None
    if memo is not None and values is not None and len(values) == 1 and values[0] == memo.header:
        return memo.token
    token = bearer_token(values)
    if memo is not None and values is not None and len(values) == 1:
        memo.header, memo.token = values[0], token
    return token


def check_token(
    verifier: TokenVerifier | None,
    tenant_header: bytes,
    path: bytes,
    headers: Headers,
    memo: TokenMemo | None = None,
) -> Claims | Deferred[Claims] | None:
    """
    Verify the bearer token of a request that must carry one
    (L{token_needed}).

    @param memo: the connection's last token (L{TokenMemo}), or C{None}.
    @return: C{None} when no token is needed; the verified claims; or, only
        for a token whose C{kid} is not known yet, a Deferred firing with
        them (or failing with L{TokenRefused}) once the key set was read.
    @raise TokenRefused: refused at once (counted in the verifier's
        C{failures}).
    """
    if verifier is None or not token_needed(verifier, tenant_header, path, headers):
        return None
    try:
        token = request_token(headers, memo)
    except TokenRefused as refused:
        verifier.failures[refused.reason] += 1
        raise
    return verifier.verify_or_refresh(token)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")


class ApiChannel(HTTPChannelInternals):
    """
    An HTTP/1.1 channel with the limits of SPEC.md section 2: it keeps its
    transport in its site's L{ApiSite.connections} while it is connected
    (the count behind ``max_connections``, and what a shutdown closes),
    closes a connection whose first byte takes longer than
    ``header_timeout`` to come (v3), or whose request head takes longer than
    that from its first byte, answers ``408 body_timeout`` to a body not in
    within ``body_timeout`` from the end of its head (v3), stops reading a
    client that leaves ``max_write_buffer`` bytes unread (v3), and checks the ``api-key`` and
    the declared body length once the headers are in, before any body byte
    is read and before ``100 Continue`` is sent.

    Requests twisted.web refuses itself (a malformed request line or
    header, a head over its size limits) are answered with the API's JSON
    error instead of an empty 400.

    Hits are answered by the site's fast path (L{apicache.http.fast}) from
    L{dataReceived} while no request is in twisted.web's hands; what it
    declines is handed to twisted.web before any byte of it is consumed.

    @ivar refused: a refusal was written; nothing more is read.
    @ivar write_blocked: the transport holds more than
        ``server.max_write_buffer`` bytes of answers: no further request is
        parsed, nothing more is read, until the client has taken them.
    @ivar peer: the client's address.
    """

    site: ApiSite
    refused = False
    #: the transport holds ``server.max_write_buffer`` bytes: no request is parsed
    write_blocked = False
    peer: IAddress | None = None
    #: where the fast path writes this connection's answers (made on first use)
    fast_answers: Any = None
    #: a request's head waits for its bearer token (an unknown kid: the
    #: key set is being read); nothing more of the connection is parsed
    _token_wait = False
    #: that request had no body: it is complete once the token verifies
    _content_due = False
    _lost = False
    _token_memo: TokenMemo | None = None

    _tracked: ITransport | None = None
    _head_deadline: IDelayedCall | None = None
    _body_deadline: IDelayedCall | None = None
    #: no byte has arrived yet: the head deadline runs from the connection
    _silent = True
    #: when the first byte of the request head being read arrived (the
    #: duration logged for a request refused before routing)
    _head_at = 0.0

    def connectionMade(self) -> None:
        super().connectionMade()
        # (v3) the first byte, too, must arrive within header_timeout: a
        # connection that sends nothing was held for the idle timeout
        self._head_deadline = self.callLater(self.site.limits.header_timeout, self._head_too_slow)
        self._head_at = self.site.clock.seconds()
        self._tracked = self.transport
        if self._tracked is not None:
            self.site.connections.add(self._tracked)
            self.peer = self._tracked.getPeer()
            # A TCP transport pauses its streaming producer (this channel)
            # while it holds more than server.max_write_buffer bytes, and
            # resumes it once it holds none
            bound_writes(self._tracked, self.site.limits.max_write_buffer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self.fast_answers = None
        self._stop_head_deadline()
        self._stop_body_deadline()
        self._drop_unread()
        if self._tracked is not None:
            self.site.connections.discard(self._tracked)
        try:
            super().connectionLost(reason)
        finally:
            self.site.connection_closed()

    # -- reading -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self._silent and data:
            # the first byte is in: what follows is the head's own deadline
            self._silent = False
            self._stop_head_deadline()
        fast = self.site.fast_path
        if fast is not None and self._between_requests():
            # no request is queued: a head has begun only if bytes of it are held
            held = self.line_pending()
            if held:
                # the beginning of the next request: held back while the
                # client was not reading (write_blocked), or cut short
                data = self.take_unparsed() + data
            self.resetTimeout()
            left = fast.serve(self, data)
            if left is not data and self._head_deadline is not None:
                # a head begun in an earlier read was completed and answered
                self._stop_head_deadline()
            if self.write_blocked:
                # parse nothing more until the client reads (resumeProducing)
                self.hold_unparsed(left)
                return
            if not left:
                return
            if left is not data or not held:
                # a new request head begins with what is left
                self._head_at = self.site.clock.seconds()
            data = left
        elif data and not self._head_begun():
            # a new request head begins with this read
            self._head_at = self.site.clock.seconds()
        super().dataReceived(data)
        if (
            self._head_deadline is None
            and not self.refused
            # held back by a full write buffer: the client's to read first
            and not self.write_blocked
            # line mode: between requests or within a head (a body is read,
            # and pipelined bytes held while a request is handled, in raw mode)
            and self.line_mode
            and self._head_begun()
        ):
            # a request's head has begun and is not complete: its deadline
            # starts now, and unlike the idle timeout a byte now and then
            # does not push it back.  A head that arrives whole in one read
            # (nearly all of them) needs no timer at all.
            self._head_deadline = self.callLater(self.site.limits.header_timeout, self._head_too_slow)

    def _between_requests(self) -> bool:
        """
        Return whether twisted.web holds no part of a request: none is being
        parsed or handled, none is waiting, the next byte begins a request.
        Only then may the fast path answer one (pipelined answers keep
        their order), and what it declines reach twisted.web intact.
        """
        return bool(
            self.between_requests()
            and not self.paused
            and not self.write_blocked
            and self.persistent
            and self.transport is not None
            and not self.transport.disconnecting  # type: ignore[attr-defined]
        )

    def _head_begun(self) -> bool:
        """
        Return whether a request's head is being read: a request line came
        in (its request is queued) and its head was not checked yet, or a
        line is cut short.
        """
        return bool((self.requests and not self.requests[-1].head_checked) or self.line_pending())

    def lineReceived(self, line: bytes) -> None:
        if not line.isascii() and not (self.requests and not self.requests[-1].head_checked):
            # a request line (no head is being read): twisted.web refuses a
            # request target that is not printable ASCII as unparsable; a
            # raw byte outside ASCII in the query alone is the query's
            # fault (SPEC.md section 4, v3)
            parts = line.split(b" ")
            if len(parts) == 3 and parts[1].partition(b"?")[0].isascii():
                self.refuse(
                    ApiError(400, "invalid_query", "the query string holds a byte outside ASCII that is not percent-encoded"),
                    head=parts[0] == b"HEAD",
                    line=(parts[0], parts[1]),
                )
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_malformed(f"a request line or header is longer than {self.MAX_LENGTH} bytes")

    def allHeadersReceived(self) -> None:
        self._stop_head_deadline()
        request = self.requests[-1]
        method, target = self.request_line() or (b"-", b"-")
        path = target.partition(b"?")[0]
        limits = self.site.limits
        error = check_head(self.site.keys, self.site.tenant_header, path, request.requestHeaders)
        if error is None and self.length is not None and self.length > limits.max_body_bytes:
            error = _too_large(limits.max_body_bytes)
        if error is not None:
            self.refuse(error, head=method == b"HEAD")
            return
        # checked once here: ApiFront need not check again
        request.head_checked = True  # type: ignore[attr-defined]
        verifier = self.site.verifier
        try:
            verified = check_token(verifier, self.site.tenant_header, path, request.requestHeaders, self.token_memo())
        except TokenRefused as refused:
            self.refuse(invalid_token(refused), head=method == b"HEAD")
            return
        if isinstance(verified, Deferred):
            self._wait_for_token(request, verified)
            return
        request.token_claims = verified  # type: ignore[attr-defined]
        self._start_body_deadline()
        # now the request body may be read (twisted.web buffers it) and
        # ``Expect: 100-continue`` answered
        super().allHeadersReceived()

    def token_memo(self) -> TokenMemo | None:
        """
        Return the connection's last bearer token (L{TokenMemo}), when
        C{[auth]} is set; else ``None``.
        """
        if self._token_memo is None and self.site.verifier is not None:
            self._token_memo = TokenMemo()
        return self._token_memo

    def _start_body_deadline(self) -> None:
        if self.length != 0:
            # (v3) a body (declared, or chunked: None) must be in within
            # body_timeout from now, when it may be read, however slowly
            # it trickles in
            self._body_deadline = self.callLater(self.site.limits.body_timeout, self._body_too_slow)

    def _wait_for_token(self, request: Any, verified: Deferred[Claims]) -> None:
        """
        Hold the connection while the key set is read for a token whose
        C{kid} is unknown: stop reading from the transport and parsing what
        is buffered (no body byte is read, no 100 Continue sent), then go on
        with the request, or refuse it.
        """
        outcome: list[Claims | Failure] = []
        verified.addBoth(outcome.append)
        if outcome:
            # the key set was read at once (a file): no need to wait
            self._token_verified(request, outcome[0], waited=False)
            return
        self._token_wait = True
        # LineReceiver's own flag: what is buffered stays unparsed
        self.paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        verified.addCallback(lambda _: self._token_verified(request, outcome[0], waited=True))

    def _token_verified(self, request: Any, result: Claims | Failure, waited: bool) -> None:
        command = (self.request_line() or (b"-", b"-"))[0]
        self._token_wait = False
        if self._lost or self.refused:
            return
        if isinstance(result, Failure):
            if result.check(TokenRefused):
                self.refuse(invalid_token(result.value), head=command == b"HEAD")  # type: ignore[arg-type]
            else:
                self.site.log_.failure("verifying a bearer token failed", result)
                self.refuse(ApiError(500, "internal_error", "an unexpected error occurred"))
            return
        request.token_claims = result
        self._start_body_deadline()
        super().allHeadersReceived()
        if not waited:
            return
        if self._content_due:
            self._content_due = False
            self.allContentReceived()
        if self.write_blocked:
            # answers wait for the client: resumeProducing goes on
            return
        self.paused = False
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        # parse what arrived meanwhile (the body, pipelined requests)
        self.dataReceived(b"")

    def allContentReceived(self) -> None:
        self._stop_body_deadline()
        if self.refused:
            return
        if self._token_wait:
            # a request without a body: processed once its token verifies
            self._content_due = True
            return
        super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def bad_request(self) -> None:
        # twisted.web's own refusal (an unparsable request line or header,
        # a NUL in a header value, too many headers, a head over
        # totalHeadersSize) would write an empty 400
        if self.head_too_large():
            self._refuse_malformed(f"the request head is larger than {self.totalHeadersSize} bytes")
        else:
            self._refuse_malformed("the request could not be parsed")

    # -- writing: a client that does not read ------------------------------

    def pauseProducing(self) -> None:
        """
        Called by the transport when it holds more than
        ``server.max_write_buffer`` bytes: parse no further request and read
        nothing more from the connection until the client has taken them.

        twisted.web alone pauses the transport only between requests: an
        answer written in one go (the hit path, and every proxied answer,
        L{apicache.http.writers.write_result}) finishes its request before
        this returns, and the next pipelined request is parsed from what was
        already read, so a client that pipelines and never reads made
        apicache hold every answer.
        """
        self.write_blocked = True
        super().pauseProducing()
        # LineReceiver's loop stops before the next line: the requests
        # already read stay unparsed in its buffer
        self.paused = True
        # and stop reading even while a request is handled (twisted.web
        # leaves the transport reading then); twisted.web resumes it when
        # the transport drains or, if a request is in hand then, when that
        # request is done
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Called by the transport once the client has taken what it held:
        parse the requests held back, and read again.
        """
        self.write_blocked = False
        super().resumeProducing()
        if self._token_wait:
            # a head waits for its token: the connection stays unread until
            # its verification goes on (twisted.web resumed the transport)
            if self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            return
        self.paused = False
        # a client that takes max_write_buffer bytes is not idle: the idle
        # timeout counts from here (a client that reads nothing still meets it)
        self.resetTimeout()
        if self.line_pending() and not self.refused and self.transport is not None:
            self.dataReceived(b"")

    # -- refusing ----------------------------------------------------------

    def refuse(self, error: ApiError, head: bool = False, line: tuple[bytes, bytes] | None = None) -> None:
        """
        Answer ``error`` as the API's JSON error, outside any request's
        processing, and close the connection once it is sent: the rest of
        the request (its body) is never read.

        @param head: answer without a body (a ``HEAD`` request).
        @param line: the request's method and target, for its access line,
            when twisted.web has not parsed its request line (default: the
            one it parsed, if any).
        """
        if self.refused or self.transport is None:
            return
        self.refused = True
        self._stop_head_deadline()
        self._stop_body_deadline()
        self._drop_unread()
        body = error_body(error.code, error.message)
        reason = RESPONSES.get(error.status, b"Error")
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (error.status, reason),
            b"Date: %s\r\n" % self.site.http_date(self.site.clock.seconds()),
            b"Content-Type: %s\r\n" % JSON,
            b"Content-Length: %d\r\n" % len(body),
            *[b"%s: %s\r\n" % (name, value) for name, value in error.headers],
            b"Connection: close\r\n\r\n",
        ]
        if not head:
            lines.append(body)
        self.transport.write(b"".join(lines))
        headers = self.requests[-1].requestHeaders if self.requests else Headers()
        line = line or self.request_line()
        method, target = line if line is not None else (b"-", b"-")
        peer = self.transport.getPeer()
        self.site.refused(
            method,
            target,
            error.status,
            headers,
            client=getattr(peer, "host", None),
            sent=0 if head else len(body),
            duration=self.site.clock.seconds() - self._head_at,
        )
        self.loseConnection()

    def _drop_unread(self) -> None:
        # What was read but not parsed (up to a socket read, 64 KiB, of a
        # refused body) would otherwise live as long as the channel, and a
        # channel is freed by the cyclic garbage collector, which the
        # daemon runs seldom (GarbageCollectorTuning): thousands of refused
        # uploads held 130 MiB that way.
        self.drop_unread()

    def _refuse_malformed(self, message: str) -> None:
        self.refuse(ApiError(400, "bad_request", message))

    # -- the head deadline -------------------------------------------------

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self.site.counters["head_timeouts"] += 1
        # as twisted.web's idle timeout does: close, and abort a peer that
        # does not read what is still to be sent
        self.timeoutConnection()

    def _stop_head_deadline(self) -> None:
        if self._head_deadline is not None:
            if self._head_deadline.active():
                self._head_deadline.cancel()
            self._head_deadline = None

    # -- the body deadline -------------------------------------------------

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        self.site.counters["body_timeouts"] += 1
        timeout = self.site.limits.body_timeout
        self.refuse(ApiError(408, "body_timeout", f"the request body did not arrive within {timeout:g} s"))

    def _stop_body_deadline(self) -> None:
        if self._body_deadline is not None:
            if self._body_deadline.active():
                self._body_deadline.cancel()
            self._body_deadline = None


class ApiSite(server.Site):
    """
    The site: no twisted.web access log (apicache writes its own JSON line
    to an L{AccessLog}), a count of requests in flight and the open
    connections, for a graceful shutdown.

    @param access_log: where access lines go: an L{AccessLog}, C{True} for
        one writing each line to stdout at once, or C{False}/C{None}.
    @param worker: this process's worker number (``--workers``), written
        in each access line.
    """

    requestFactory = ApiRequest
    #: warnings about the site itself (connections refused); access lines go to the AccessLog
    log_ = Logger()
    # the channel itself, not twisted.web's protocol that wraps a channel to
    # switch to HTTP/2 after TLS negotiation (no h2 here): HTTPFactory's
    # buildProtocol gives it the site's clock and idle timeout all the same
    protocol = ApiChannel  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        access_log: AccessLog | bool | None = True,
        tracer: Tracer | None = None,
        worker: int | None = None,
        keys: ApiKeys | None = None,
        limits: ConnectionLimits | None = None,
        tenant_header: bytes = b"org_id",
        verifier: TokenVerifier | None = None,
        fast_path: bool = True,
    ) -> None:
        """
        @param fast_path: answer hits of the front resource on the fast path
            (L{apicache.http.fast}).
        @param keys: the api-keys checked once a request's headers are in
            (none: every request passes; L{ApiFront} checks again).
        @param verifier: verifies the bearer token of every request naming
            a tenant once its headers are in (C{[auth]}; none: no token is
            asked for).
        @param limits: connection limits (default: SPEC's defaults, no
            connection limit).
        """
        limits = limits or ConnectionLimits()
        # the clock times twisted.web's idle timeout too
        super().__init__(resource, timeout=limits.idle_timeout, reactor=clock)
        self.limits = limits
        self.keys = keys or ApiKeys(())
        self.tenant_header = tenant_header
        self.verifier = verifier
        #: connections refused past max_connections, request heads and bodies too slow
        self.counters = {"connections_refused": 0, "head_timeouts": 0, "body_timeouts": 0, "requests_refused": 0}
        self._refusal_logged = float("-inf")
        self.clock = clock
        self.tracer = tracer or Tracer()
        self.metrics = metrics
        if access_log is True:
            access_log = AccessLog(clock)
        self.access_log: AccessLog | None = access_log or None
        self.worker = worker
        self.active = 0
        self.displayTracebacks = False
        self.leaf_root = bool(getattr(resource, "isLeaf", False))
        self._date_second = -1
        self._date = b""
        # a late import: the fast path is built on this module's checks
        from apicache.http.fast import FastPath

        #: answers hits from the channel's dataReceived (None: every request
        #: goes through twisted.web)
        self.fast_path: FastPath | None = FastPath.for_site(self, resource) if fast_path else None
        self._idle_waiters: list[Deferred[None]] = []
        #: the transports of open connections, closed gracefully on shutdown
        self.connections: set[ITransport] = set()
        self._closed_waiters: list[Deferred[None]] = []

    def http_date(self, now: float) -> bytes:
        """
        Return the ``Date`` header value for ``now``, formatted once a second.
        """
        second = int(now)
        if second != self._date_second:
            self._date = datetimeToString(second)
            self._date_second = second
        return self._date

    def buildProtocol(self, addr: IAddress | None) -> ApiChannel | None:  # type: ignore[override]
        """
        Return a channel for a new connection, or ``None`` (the connection
        is closed at once) while ``max_connections`` are held.
        """
        limit = self.limits.max_connections
        if limit and len(self.connections) >= limit:
            self.counters["connections_refused"] += 1
            now = self.clock.seconds()
            if now - self._refusal_logged >= 1.0:
                # at most once a second: a flood must not flood the log
                self._refusal_logged = now
                self.log_.warn("{n} connections open: refusing new ones (server.max_connections)", n=len(self.connections))
            return None
        return super().buildProtocol(addr)

    def metrics_families(self) -> Iterator[Metric]:
        """
        Yield the connection metrics (a source for
        L{apicache.ops.metrics.Metrics.add_source}).
        """
        c = self.counters
        yield GaugeMetricFamily("apicache_connections", "Inbound connections open.", value=len(self.connections))
        yield CounterMetricFamily("apicache_connections_refused", "Connections closed at once: server.max_connections were open.", value=c["connections_refused"])
        yield CounterMetricFamily("apicache_header_timeouts", "Connections closed: a request head took longer than server.header_timeout.", value=c["head_timeouts"])
        yield CounterMetricFamily("apicache_body_timeouts", "Requests answered 408: a body took longer than server.body_timeout.", value=c["body_timeouts"])
        yield CounterMetricFamily("apicache_requests_refused", "Requests answered before their body was read (bad key, body too large, malformed).", value=c["requests_refused"])
        if self.fast_path is not None:
            yield CounterMetricFamily("apicache_fast_path_answers", "Hits answered on the fast path, from the connection's reads (every other request goes through twisted.web).", value=self.fast_path.answered)

    def refused(
        self,
        method: bytes,
        path: bytes,
        status: int,
        headers: Headers,
        client: str | None = None,
        sent: int = 0,
        duration: float = 0.0,
    ) -> None:
        """
        Count, trace and log (as the access log does) a request refused by
        its channel before it was processed.

        @param path: the request target, its query included.
        @param client: the client's address.
        @param sent: bytes of body sent.
        @param duration: seconds from the head's first byte to the refusal.
        """
        self.counters["requests_refused"] += 1
        if self.metrics is not None:
            self.metrics.count_request("-", status, "-", "-")
        m = method.decode("ascii", "replace")
        trace = self.tracer.start(headers, "apicache")
        if trace.span is not None:
            self.tracer.end(trace, f"{m} -", {"http.status_code": status, "apicache.cache": "-", "apicache.tenant": "-"})
        if self.access_log is not None:
            raw_path, _, query = path.partition(b"?")
            self.access_log.request(
                self.clock.seconds(), method, raw_path, query, status, sent, duration, "-", "-", "-", client,
                trace.trace_id, worker=self.worker,
            )

    def connection_closed(self) -> None:
        """
        Called by L{ApiChannel} when a connection is lost: fire
        L{close_connections}'s Deferreds once none is left.
        """
        if not self.connections and self._closed_waiters:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def close_connections(self) -> Deferred[None]:
        """
        Close every connection once what was written to it is sent (the
        reactor's own shutdown would drop unsent answers).

        @return: a Deferred firing with ``None`` when all are closed.
        """
        d: Deferred[None] = Deferred()
        if not self.connections:
            d.callback(None)
            return d
        self._closed_waiters.append(d)
        for transport in list(self.connections):
            transport.loseConnection()
        return d

    def log(self, request: Any) -> None:
        """
        Write nothing: see L{request_done}.
        """

    def request_done(self, request: ApiRequest) -> None:
        """
        Count a finished (or abandoned) request: metrics, the trace's span,
        the access log line, and L{when_idle}'s Deferreds.
        """
        self.active -= 1
        status = request.code
        if self.metrics is not None:
            self.metrics.count_request(request.route_type, status, request.cache, request.tenant)
        trace = request.trace
        if trace is not None and trace.span is not None:  # only exported spans end
            self.tracer.end(
                trace,
                f"{request.method.decode('ascii', 'replace')} {request.route_type}",
                {"http.status_code": status, "apicache.cache": request.cache, "apicache.tenant": request.tenant},
            )
        if self.access_log is not None:
            self._access_line(self.access_log, request, status, trace)
        if self.active == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _access_line(self, log: AccessLog, request: ApiRequest, status: int, trace: RequestTrace | None) -> None:
        """
        Write ``request``'s access line (SPEC.md section 4): never a
        header value, a body or a secret query value.
        """
        now = self.clock.seconds()
        upstream = None
        if trace is not None and trace.upstream_s is not None:
            upstream = (trace.upstream_status, trace.upstream_s, trace.upstream_error)
        log.request(
            now,
            request.method,
            request.path,
            request.uri.partition(b"?")[2],
            status,
            request.sentLength,
            now - request.started,
            request.tenant,
            request.route_type,
            request.cache,
            getattr(request.client, "host", None),
            getattr(request, "trace_id", None) if trace is None else trace.trace_id,
            upstream,
            self.worker,
        )

    def when_idle(self) -> Deferred[None]:
        """
        Return a Deferred firing with ``None`` when no request is in flight.
        """
        d: Deferred[None] = Deferred()
        if self.active == 0:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
        return d


class HTTPService(Service):
    """
    Listens for HTTP; on stop, stops accepting and lets requests in flight
    finish for up to ``grace`` seconds.

    Twisted's C{StreamServerEndpointService} only logs a port it can't
    listen on; this one raises, so that the daemon says so and exits.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, site: ApiSite, grace: float, clock: IReactorTime) -> None:
        self.endpoint = endpoint
        self.site = site
        self.grace = grace
        self.clock = clock
        self._listening: Deferred[IListeningPort | None] | None = None

    def privilegedStartService(self) -> None:
        """
        Listen, before privileges are shed.

        @raise twisted.internet.error.CannotListenError: the endpoint can't
            listen (the address is in use, or privileged), when it says so
            at once, as TCP and UNIX endpoints do; a later failure is logged.
        """
        super().privilegedStartService()
        failures: list[Failure] = []
        starting = True

        def failed(f: Failure) -> None:
            if starting:
                failures.append(f)
            elif not f.check(CancelledError):
                self.log.failure("cannot listen", f)

        self._listening = self.endpoint.listen(self.site).addErrback(failed)
        starting = False
        if failures:
            failures[0].raiseException()

    def startService(self) -> None:
        """
        Start, listening now unless L{privilegedStartService} did.
        """
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, wait for the requests in flight (up to the grace
        period), then close the connections.

        @return: a Deferred firing with ``None`` when done.
        """

        async def stop_listening() -> None:
            listening = self._listening
            if listening is not None:
                listening.cancel()
                port = await listening
                stopped = None if port is None else port.stopListening()
                if stopped is not None:
                    await stopped

        async def drain() -> None:
            started = self.clock.seconds()
            super(HTTPService, self).stopService()
            await stop_listening()
            if self.site.active:
                self.log.info("waiting up to {grace} s for {n} requests in flight", grace=self.grace, n=self.site.active)
                try:
                    await self.site.when_idle().addTimeout(self.grace, self.clock)
                except DeferredTimeout:
                    self.log.warn("{n} requests still in flight after the grace period", n=self.site.active)
            # let the last answers reach their callers before the reactor
            # drops every connection
            left = max(self.grace - (self.clock.seconds() - started), 0.5)
            try:
                await self.site.close_connections().addTimeout(left, self.clock)
            except DeferredTimeout:
                pass

        return Deferred.fromCoroutine(drain())
