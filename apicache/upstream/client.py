"""
The upstream client: fetches one URL on a caller's behalf over persistent
connections pooled per tenant (L{apicache.upstream.pool}), bounded in time, size and
concurrency (in all and per tenant).

It knows nothing of caches: the cache core calls :meth:`IUpstream.fetch`.

Error messages are fixed texts that never quote the upstream's bytes (SPEC §4):
they reach callers in 502 answers.  What went wrong in detail is logged,
truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import Attribute, Interface, implementer

from apicache._twisted import RequestNotSent
from apicache.upstream.pool import HeaderBlockTooLarge, TenantConnectionPool, UnknownTransferCoding

__all__ = [
    "IUpstream",
    "UpstreamClient",
    "UpstreamService",
    "UpstreamResponse",
    "UpstreamError",
    "UpstreamUnreachable",
    "UpstreamTimeout",
    "BodyTooLarge",
    "Overloaded",
]


class UpstreamError(Exception):
    """
    The upstream gave no usable answer.

    @ivar sent: whether the request may have reached the upstream (a write
        lost after it was sent may have been applied: SPEC.md section 4
        invalidates then).  ``False`` only when it surely was not sent.
    @ivar detail: the kind of failure, a token for the C{detail} of the
        answer's C{Cache-Status} member (SPEC.md section 4, v3):
        C{connection-refused}, C{dns-error}, C{connection-failed},
        C{tls-error}, C{timeout}, C{too-large}, C{bad-response},
        C{connection-closed}, C{overloaded}.
    @ivar status: the upstream's status when its answer's head was read,
        else C{None} (the member's C{fwd-status}).
    """

    sent = True
    detail = "bad-response"
    status: int | None = None


class UpstreamUnreachable(UpstreamError):
    """Refused, reset, bad HTTP: no answer (502)."""


class BodyTooLarge(UpstreamUnreachable):
    """The answer's body is over ``max_body_bytes`` (502)."""

    detail = "too-large"


class UpstreamTimeout(UpstreamError):
    """No complete answer within ``upstream.timeout`` (504)."""

    detail = "timeout"


class Overloaded(UpstreamError):
    """
    ``max_in_flight`` fetches, or ``tenant_max_in_flight`` of the caller's
    tenant, are running already (503).

    @ivar tenant: the tenant at its own limit, or C{None} (the limit of all).
    """

    def __init__(self, message: str, tenant: str | None = None) -> None:
        super().__init__(message)
        self.tenant = tenant

    sent = False
    detail = "overloaded"


def _unsent(error: UpstreamError) -> UpstreamError:
    error.sent = False
    return error


class UpstreamResponse:
    """
    A complete upstream answer.

    @ivar headers: every response header as ``(lower-case name, value)``.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes]:
        """
        Return the values of the header ``name`` (lower case).
        """
        return [v for k, v in self.headers if k == name]

    def __repr__(self) -> str:
        return f"UpstreamResponse({self.status}, {len(self.body)} bytes)"


class IUpstream(Interface):
    """
    Fetches from the upstream API.
    """

    in_flight = Attribute("The number of fetches running now.")

    def fetch(
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        tenant: str,
        method: bytes = b"GET",
        body: bytes | None = None,
    ) -> Deferred[UpstreamResponse]:
        """
        Send ``method`` (``GET`` unless a pass-through write says otherwise)
        for ``base_url + path`` (``path`` already encoded, query included)
        with ``headers`` and, for a write, ``body``, on ``tenant``'s behalf,
        over a connection that carries only that tenant's requests;
        redirects are not followed, and a request with a body is never
        retried.

        Fires with an L{UpstreamResponse}; errbacks (never raises) with
        L{Overloaded}, L{UpstreamTimeout}, L{UpstreamUnreachable} or
        L{BodyTooLarge} (each saying in C{sent} whether the request may
        have been sent).
        """

    def close() -> Deferred[None]:
        """
        Close pooled connections; fires when they are closed.
        """


class _BodyReader(Protocol):
    """
    Collects a body up to a limit; past it, aborts the connection instead of
    reading (and buffering) the rest.
    """

    def __init__(self, limit: int, finished: Deferred[bytes], status: int | None = None) -> None:
        self.limit = limit
        self.finished = finished
        self.status = status
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts = []
            error = BodyTooLarge(f"the answer is over {self.limit} bytes")
            error.status = self.status
            self.finished.errback(error)
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            _log_detail("body cut short", reason.value)  # type: ignore[arg-type]
            error = UpstreamUnreachable("the upstream closed the connection before the whole answer")
            error.detail, error.status = "connection-closed", self.status
            self.finished.errback(error)


def read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    """
    Read ``response``'s body.  Fires with the bytes; errbacks with
    L{BodyTooLarge} past ``limit`` bytes (the connection is aborted) or
    L{UpstreamUnreachable}.  Cancelling aborts the connection.
    """
    def cancel(d: Deferred[bytes]) -> None:
        if reader.transport is not None:
            reader.transport.stopProducing()  # type: ignore[attr-defined]

    finished: Deferred[bytes] = Deferred(cancel)
    reader = _BodyReader(limit, finished, response.code)
    response.deliverBody(reader)
    return finished


@implementer(IBodyProducer)
class _Body:
    """
    A request body held in memory, written at once.  Giving every write a
    producer, even an empty one, also keeps twisted.web's pool from
    retrying it on a stale connection (it retries only bodiless requests).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IUpstream)
class UpstreamClient:
    """
    The real upstream client: persistent connections pooled per tenant, a
    bound on fetches in flight in all and per tenant, a deadline covering
    connect and the whole body.

    treq's ``HTTPClient`` is not used for the request itself: it always adds a
    cookie jar (which would carry one tenant's upstream cookies to another)
    and a gzip decoder (which would strip ``Content-Encoding``, which the
    cache must store and replay).  Bodies are read with a size limit.

    @param max_connections: idle connections kept in all; each tenant keeps
        at most a quarter of them (at least 1), and no more than
        ``tenant_max_in_flight`` when that is set: a tenant never uses more
        connections at once than it has fetches running, and one busy tenant
        then leaves at least three quarters of the pool warm for the others.
    @param tenant_max_in_flight: fetches of one tenant at once; 0: no limit
        but ``max_in_flight``.
    @param agent: for tests: used for every tenant instead of the pool.
    @param max_header_bytes: the largest header block of an answer; past
        it the fetch fails (502) and the connection is closed.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        base_url: str,
        timeout: float,
        max_body_bytes: int,
        max_connections: int,
        max_in_flight: int,
        tenant_max_in_flight: int = 0,
        agent: IAgent | None = None,
        max_header_bytes: int = 65536,
    ) -> None:
        self._clock = reactor
        self._base = base_url.rstrip("/").encode("ascii")
        self._timeout = timeout
        self._max_body = max_body_bytes
        self._max_in_flight = max_in_flight
        self._tenant_max_in_flight = tenant_max_in_flight
        self.in_flight = 0
        #: tenant -> fetches running now (tenants with none are left out)
        self.tenant_in_flight: dict[str, int] = {}
        per_tenant = max(1, max_connections // 4)
        if tenant_max_in_flight:
            per_tenant = min(per_tenant, tenant_max_in_flight)
        self.pool = TenantConnectionPool(
            reactor, max_connections, per_tenant, idle_timeout=60, max_header_bytes=max_header_bytes
        )
        # Agent's default policy, made once: it verifies TLS certificates (service_identity)
        self._tls = BrowserLikePolicyForHTTPS()
        self._agent = agent

    def url(self, path: str) -> bytes:
        """
        Return the full URL for ``path`` (already encoded).
        """
        return self._base + path.encode("ascii")

    def fetch(
        self,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        tenant: str,
        method: bytes = b"GET",
        body: bytes | None = None,
    ) -> Deferred[UpstreamResponse]:
        if self.in_flight >= self._max_in_flight:
            return fail(Overloaded("too many upstream fetches in flight"))
        running = self.tenant_in_flight.get(tenant, 0)
        if self._tenant_max_in_flight and running >= self._tenant_max_in_flight:
            return fail(Overloaded("too many upstream fetches in flight for this tenant", tenant))
        self.in_flight += 1
        self.tenant_in_flight[tenant] = running + 1
        d = Deferred.fromCoroutine(self._fetch(self._agent_for(tenant), self.url(path), headers, method, body))
        d.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)

        def done(result: object) -> object:
            self.in_flight -= 1
            left = self.tenant_in_flight[tenant] - 1
            if left:
                self.tenant_in_flight[tenant] = left
            else:
                del self.tenant_in_flight[tenant]
            return result

        d.addBoth(done)
        return d

    def _agent_for(self, tenant: str) -> IAgent:
        if self._agent is not None:
            return self._agent
        # an Agent is a few small objects; the pool it is given decides
        # which connections the tenant's request may use
        return Agent(self._clock, contextFactory=self._tls, connectTimeout=self._timeout, pool=self.pool.for_tenant(tenant))

    async def _fetch(
        self, agent: IAgent, url: bytes, headers: Sequence[tuple[bytes, bytes]], method: bytes, body: bytes | None
    ) -> UpstreamResponse:
        h = Headers()
        for name, value in headers:
            h.addRawHeader(name, value)
        producer = None if body is None and method in (b"GET", b"HEAD") else _Body(body or b"")
        try:
            response = await agent.request(method, url, h, producer)
            answer = await read_body(response, self._max_body)
        except (UpstreamError, CancelledError):
            raise
        except (ConnectTimeoutError, ConnectingCancelledError):
            raise _unsent(UpstreamTimeout(f"could not connect within {self._timeout:g} s")) from None
        except (ConnectError, DNSLookupError, RequestNotSent) as e:
            _log_detail("upstream request not sent", e)
            raise _unsent(_unreachable(e)) from None
        except Exception as e:
            _log_detail("upstream fetch failed", e)
            raise _unreachable(e) from None
        headers = [(k.lower(), v) for k, vs in response.headers.getAllRawHeaders() for v in vs]
        # the upstream's Connection field, which Twisted keeps apart
        # (GuardedHTTP11ClientProtocol.request): the cache's header filter
        # drops it and every field it names
        headers.extend([(b"connection", v) for v in getattr(response, "connection_fields", ())])
        return UpstreamResponse(response.code, headers, answer)

    def close(self) -> Deferred[None]:
        if self._agent is not None:
            return succeed(None)
        return self.pool.closeCachedConnections()


def _timed_out(result: UpstreamResponse | Failure, timeout: float) -> UpstreamResponse | Failure:
    """
    What a fetch cancelled at its deadline fires with: an L{UpstreamTimeout}
    (saying whether the request may have been sent) whatever the
    cancellation surfaced as; an answer complete just then is kept.
    """
    if isinstance(result, Failure):
        error = UpstreamTimeout(f"no complete answer within {timeout:g} s")
        error.sent = getattr(result.value, "sent", True)
        return Failure(error)
    return result


_log = Logger(namespace="apicache.upstream")

#: characters of an error's detail that are logged
DETAIL_CHARS = 200


def _log_detail(what: str, e: BaseException) -> None:
    """
    Log what went wrong, truncated: it may quote the upstream's bytes.
    """
    _log.info("{what}: {detail}", what=what, detail=_describe(e)[:DETAIL_CHARS])


def _reasons(e: BaseException) -> list[BaseException]:
    # ResponseFailed and its kin wrap the real causes in Failures
    failures = getattr(e, "reasons", None) or []
    return [e] + [f.value for f in failures if isinstance(f, Failure) and f.value is not None]


#: Twisted's exceptions for an answer that is not valid HTTP/1.1
_BAD_HTTP = frozenset({"ParseError", "BadHeaders", "BadResponseVersion", "_WrongContentLength", "_MalformedChunkedDataError"})


def _unreachable(e: BaseException) -> UpstreamUnreachable:
    """
    Return the L{UpstreamUnreachable} for ``e``: a fixed message
    (L{_generic_message}) and the kind of failure in C{detail}.
    """
    error = UpstreamUnreachable(_generic_message(e))
    error.detail = _detail(e)
    return error


def _detail(e: BaseException) -> str:
    """
    Return the kind of failure ``e`` is (L{UpstreamError.detail}).
    """
    causes = _reasons(e)
    kinds = {type(c).__name__ for c in causes}
    if any(isinstance(c, HeaderBlockTooLarge) for c in causes):
        return "too-large"
    if any(isinstance(c, UnknownTransferCoding) for c in causes) or kinds & _BAD_HTTP:
        return "bad-response"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection-refused"
    if any(isinstance(c, DNSLookupError) for c in causes):
        return "dns-error"
    if "tls" in _generic_message(e).lower():
        return "tls-error"
    if any(isinstance(c, ConnectError) for c in causes):
        return "connection-failed"
    return "connection-closed"


def _generic_message(e: BaseException) -> str:
    """
    Return a fixed text for ``e``, chosen by the kind of failure, never by
    the bytes the upstream sent.
    """
    causes = _reasons(e)
    for c in causes:
        if isinstance(c, (HeaderBlockTooLarge, UnknownTransferCoding)):
            return str(c)  # fixed texts of our own
    try:
        from OpenSSL.SSL import Error as TLSError

        if any(isinstance(c, TLSError) for c in causes):
            # OpenSSL's own (local, fixed) reason strings tell a refused
            # certificate from other handshake failures
            if "certificate" in _describe(e).lower():
                return "the upstream's TLS certificate was not accepted"
            return "the TLS handshake with the upstream failed"
    except ImportError:  # pragma: no cover (pyOpenSSL comes with Twisted[tls])
        pass
    if any(isinstance(c, ConnectError) for c in causes):
        return "could not connect to the upstream"
    names = {type(c).__name__ for c in causes}
    if names & _BAD_HTTP:
        return "the upstream's answer is not valid HTTP"
    return "the upstream closed the connection without a complete answer"


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(f"{type(r.value).__name__}: {r.value!r}" for r in reasons)
    return f"{type(e).__name__}: {e!r}"


class UpstreamService(Service):
    """
    Closes the upstream client's pooled connections when the daemon stops.
    """

    def __init__(self, upstream: IUpstream) -> None:
        self.upstream = upstream

    def stopService(self) -> Deferred[None]:
        """
        @return: fires once the pooled connections are closed.
        """
        Service.stopService(self)
        return self.upstream.close()  # type: ignore[no-any-return]
