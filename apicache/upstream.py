"""
The upstream client: fetches one URL on a caller's behalf over pooled,
persistent connections, bounded in time, size and concurrency.

It knows nothing of caches: the cache core calls :meth:`IUpstream.fetch`.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import Attribute, Interface, implementer

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
    """The upstream gave no usable answer."""


class UpstreamUnreachable(UpstreamError):
    """Refused, reset, bad HTTP: no answer (502)."""


class BodyTooLarge(UpstreamUnreachable):
    """The answer's body is over ``max_body_bytes`` (502)."""


class UpstreamTimeout(UpstreamError):
    """No complete answer within ``upstream.timeout`` (504)."""


class Overloaded(UpstreamError):
    """``max_in_flight`` fetches are running already (503)."""


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

    def fetch(path: str, headers: Sequence[tuple[bytes, bytes]]) -> Deferred[UpstreamResponse]:
        """
        GET ``base_url + path`` (``path`` already encoded, query included)
        with ``headers``; redirects are not followed.

        Fires with an L{UpstreamResponse}; errbacks with L{Overloaded},
        L{UpstreamTimeout}, L{UpstreamUnreachable} or L{BodyTooLarge}.
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

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self.limit = limit
        self.finished = finished
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts = []
            self.finished.errback(BodyTooLarge(f"body over {self.limit} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(UpstreamUnreachable(f"body cut short: {reason.getErrorMessage()}"))


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
    reader = _BodyReader(limit, finished)
    response.deliverBody(reader)
    return finished


@implementer(IUpstream)
class UpstreamClient:
    """
    The real upstream client: one persistent connection pool, a bound on
    fetches in flight, a deadline covering connect and the whole body.

    treq's ``HTTPClient`` is not used for the request itself: it always adds a
    cookie jar (which would carry one tenant's upstream cookies to another)
    and a gzip decoder (which would strip ``Content-Encoding``, which the
    cache must store and replay).  Bodies are read with a size limit.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        base_url: str,
        timeout: float,
        max_body_bytes: int,
        max_connections: int,
        max_in_flight: int,
        agent: IAgent | None = None,
    ) -> None:
        self._clock = reactor
        self._base = base_url.rstrip("/").encode("ascii")
        self._timeout = timeout
        self._max_body = max_body_bytes
        self._max_in_flight = max_in_flight
        self.in_flight = 0
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool._factory = _QuietFactory
            self._pool.maxPersistentPerHost = max_connections
            self._pool.cachedConnectionTimeout = 60
            # Agent's default policy verifies TLS certificates (service_identity)
            agent = Agent(reactor, connectTimeout=timeout, pool=self._pool)
        self._agent = agent

    def url(self, path: str) -> bytes:
        """
        Return the full URL for ``path`` (already encoded).
        """
        return self._base + path.encode("ascii")

    def fetch(self, path: str, headers: Sequence[tuple[bytes, bytes]]) -> Deferred[UpstreamResponse]:
        if self.in_flight >= self._max_in_flight:
            # an errback, never a synchronous raise: IUpstream's contract
            return fail(Overloaded(f"{self.in_flight} upstream fetches in flight"))
        self.in_flight += 1
        d = Deferred.fromCoroutine(self._fetch(self.url(path), headers))
        deadline = self._clock.callLater(self._timeout, d.cancel)

        def done(result: object) -> object:
            self.in_flight -= 1
            if deadline.active():
                deadline.cancel()
            elif isinstance(result, Failure):
                # whatever the cancellation surfaced as, the cause is the deadline
                return Failure(UpstreamTimeout(f"no complete answer within {self._timeout:g} s"))
            return result

        d.addBoth(done)
        return d

    async def _fetch(self, url: bytes, headers: Sequence[tuple[bytes, bytes]]) -> UpstreamResponse:
        h = Headers()
        for name, value in headers:
            h.addRawHeader(name, value)
        try:
            response = await self._agent.request(b"GET", url, h, None)
            body = await read_body(response, self._max_body)
        except (UpstreamError, CancelledError):
            raise
        except (ConnectTimeoutError, ConnectingCancelledError) as e:
            raise UpstreamTimeout(f"connect timed out: {e}") from None
        except Exception as e:
            raise UpstreamUnreachable(_describe(e)) from None
        return UpstreamResponse(
            response.code,
            [(k.lower(), v) for k, vs in response.headers.getAllRawHeaders() for v in vs],
            body,
        )

    def close(self) -> Deferred[None]:
        if self._pool is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        return self._pool.closeCachedConnections()


class _QuietFactory(_HTTP11ClientFactory):
    """Pooled connections come and go: don't log each one."""

    noisy = False


def _describe(e: Exception) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return f"{type(e).__name__}: {e}"


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
