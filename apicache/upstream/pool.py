"""
Persistent upstream connections, kept apart per tenant (SPEC §3
"Connections upstream").

Twisted's L{HTTPConnectionPool} keys connections by (scheme, host, port)
only, bounds the idle connections of each key but not their total, and hands
back a connection whatever happened on it while it sat idle.  Its HTTP/1.1
client also ignores bytes that arrive after the end of an answer
(L{apicache._twisted.LeftoverAwareClientProtocol} says where).  An
upstream that sends more than it announced, or a second answer nobody asked
for, therefore gets those bytes read as the answer to the next request on the
connection, which may be another tenant's.  This module gives
L{twisted.web.client.Agent} a pool that:

 - keys connections by (tenant, scheme, host, port), so that a connection
   only ever carries one tenant's requests;
 - bounds idle connections per tenant and in all (the oldest idle one is
   closed to make room);
 - never reuses a connection whose answer was followed by bytes in the same
   read, nor one that receives a byte while idle: both are closed at once;
 - forgets a connection as soon as it is lost, rather than when it is next
   picked.

Remaining risk, between callers of ONE tenant: they share connections.  An
upstream that splits one answer into two (an extra answer sent after a pause,
a 204 followed later by body bytes) can still have its extra bytes read as the
answer to the next request of the same tenant, when that request is written
on the connection before the extra bytes arrive: HTTP/1.1 gives a client no way
to tell the two apart.  Such a connection is closed once the mismatch shows,
but the one answer already misread goes to that caller (and may be cached for
the tenant).  Every other tenant is out of reach: their requests never travel
on that connection.  (Handing out the connection idle the longest narrows
the window; it cannot close it.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived

from apicache._twisted import (
    HeaderBlockTooLarge,
    LeftoverAwareClientProtocol,
    RequestNotSent,
    UnknownTransferCoding,
    bound_answer_parser,
    connection_field,
)

__all__ = [
    "GuardedHTTP11ClientProtocol",
    "TenantConnectionPool",
    "HeaderBlockTooLarge",
    "UnknownTransferCoding",
]

#: (tenant, scheme, host, port)
PoolKey = tuple[str, bytes, bytes, int]


class GuardedHTTP11ClientProtocol(LeftoverAwareClientProtocol):
    """
    An HTTP/1.1 client connection that notices bytes it was not asked for.

    Twisted's protocol has no public hook for either case (a subclass, not a
    patch on the class every other client in the process shares):

     - the bytes that followed the end of an answer (L{leftover}; Twisted
       ignores them) mark the connection unusable before the pool sees it.
     - C{request} bounds the header block of the answer to
       C{max_header_bytes} and refuses an unknown C{Transfer-Encoding}
       (L{apicache._twisted.bound_answer_parser}).
     - C{dataReceived} while no request is in flight (Twisted fails on its
       missing parser and closes the connection some time later, leaving it in
       the pool meanwhile): here the connection is taken out of the pool at
       once and aborted.

    @ivar reusable: C{False} once the connection must not carry another
        request.
    """

    def __init__(
        self,
        quiescentCallback: Callable[[GuardedHTTP11ClientProtocol], None],
        lostCallback: Callable[[GuardedHTTP11ClientProtocol], None],
        max_header_bytes: int = 65536,
    ) -> None:
        super().__init__(quiescentCallback)
        self._lost_callback = lostCallback
        self._max_header_bytes = max_header_bytes
        self.reusable = True

    def leftover(self, rest: bytes) -> None:
        if rest:
            # bytes past the answer's end: the framing is off, or the upstream
            # sent an answer nobody asked for; the pool closes the connection
            self.reusable = False

    def dataReceived(self, bytes: bytes) -> None:
        if self.state == "QUIESCENT":
            # idle: nothing may arrive until the next request is written
            self._retire()
            return
        super().dataReceived(bytes)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reusable = False
        super().connectionLost(reason)
        self._lost_callback(self)

    def _retire(self) -> None:
        if self.reusable:
            self.reusable = False
            self._lost_callback(self)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def request(self, request: Any) -> Deferred[Any]:
        """
        Send ``request``; its answer is read with its header block bounded
        (L{apicache._twisted.bound_answer_parser}), and carries, as
        C{connection_fields}, the values of the upstream's C{Connection}
        field.  Twisted's parser
        keeps that field apart from the answer's headers
        (L{apicache._twisted.connection_field}), so the fields it names would
        otherwise be replayed to callers (SPEC.md section 3, v3: never, on
        misses and hits alike).
        """
        d: Deferred[Any] = super().request(request)
        bound_answer_parser(self, self._max_header_bytes)
        fields = connection_field(self)
        if fields is not None:
            d.addCallback(_with_connection_fields, fields)
        return d


def _with_connection_fields(response: Any, fields: Callable[[], tuple[bytes, ...]]) -> Any:
    response.connection_fields = fields()
    return response


class _ConnectionFactory(Factory):
    """Builds one pool key's connections."""

    noisy = False  # pooled connections come and go: don't log each one

    def __init__(self, pool: TenantConnectionPool, key: PoolKey) -> None:
        self._pool = pool
        self._key = key

    def buildProtocol(self, addr: IAddress | None) -> GuardedHTTP11ClientProtocol:
        self._pool.opened += 1
        key = self._key
        return GuardedHTTP11ClientProtocol(
            lambda p: self._pool._put(key, p), self._pool._forget, self._pool.max_header_bytes
        )


class _RetryOnce:
    """
    A pooled connection handed out again.  The upstream may close an idle
    connection just as a request is written on it: a GET that failed before
    any answer byte is then sent once more on a new connection, as Twisted's
    own pool does (its wrapper for this is private).
    """

    def __init__(self, protocol: GuardedHTTP11ClientProtocol, new: Callable[[], Deferred[Any]]) -> None:
        self._protocol = protocol
        self._new = new

    def request(self, request: Any) -> Deferred[Any]:
        """
        Send C{request}; fires with its L{IResponse}.
        """
        d = self._protocol.request(request)

        def failed(f: Failure) -> Any:
            retry = (
                request.method in (b"GET", b"HEAD")
                and request.bodyProducer is None
                and f.check(RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)
                and not any(r.check(CancelledError) for r in getattr(f.value, "reasons", ()))
            )
            if retry:
                return self._new().addCallback(lambda p: p.request(request))
            return f

        return d.addErrback(failed)


class _TenantView:
    """
    What L{twisted.web.client.Agent} sees of the pool for one tenant: its
    (scheme, host, port) keys get the tenant in front.
    """

    persistent = True

    def __init__(self, pool: TenantConnectionPool, tenant: str) -> None:
        self._pool = pool
        self._tenant = tenant

    def getConnection(self, key: tuple[bytes, bytes, int], endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        """
        Fire with a connection of this tenant to ``key``'s host.
        """
        return self._pool.getConnection((self._tenant, *key), endpoint)


class TenantConnectionPool:
    """
    Idle HTTP/1.1 connections, at most ``max_idle_per_tenant`` per tenant and
    ``max_idle`` in all; an idle connection is closed after ``idle_timeout``
    seconds.  Connections in use are not counted: the upstream client bounds
    those with its in-flight limits.

    @ivar opened: connections opened so far.
    @ivar reused: connections handed out again from the pool.
    @ivar retired: connections closed because bytes arrived that were not
        part of an answer (after an answer's end, or while idle).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        max_idle: int,
        max_idle_per_tenant: int,
        idle_timeout: float = 60.0,
        max_header_bytes: int = 65536,
    ) -> None:
        """
        @param max_header_bytes: the largest header block of an answer
            (C{upstream.max_header_bytes}).
        """
        self._clock = clock
        self.max_header_bytes = max_header_bytes
        self.max_idle = max_idle
        self.max_idle_per_tenant = max_idle_per_tenant
        self.idle_timeout = idle_timeout
        #: idle connection -> (key, expiry timer), oldest first
        self._idle: OrderedDict[GuardedHTTP11ClientProtocol, tuple[PoolKey, IDelayedCall]] = OrderedDict()
        self._per_tenant: dict[str, int] = {}
        self.opened = 0
        self.reused = 0
        self.retired = 0

    def for_tenant(self, tenant: str) -> _TenantView:
        """
        Return the pool as an Agent's ``pool`` for ``tenant``'s requests.
        """
        return _TenantView(self, tenant)

    @property
    def idle(self) -> int:
        """
        The number of idle connections held.
        """
        return len(self._idle)

    def idle_of(self, tenant: str) -> int:
        """
        Return the number of ``tenant``'s idle connections.
        """
        return self._per_tenant.get(tenant, 0)

    def getConnection(self, key: PoolKey, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        """
        Fire with an idle connection of ``key``, or a new one from
        ``endpoint``; errbacks as ``endpoint.connect`` does.

        The connection idle the longest is taken: stray bytes an upstream
        sends late then have the most time to arrive (and retire the
        connection) before it carries another request.
        """
        for protocol in self._idle:
            if self._idle[protocol][0] == key:
                self._take(protocol)
                self.reused += 1
                return succeed(_RetryOnce(protocol, lambda: self._connect(key, endpoint)))
        return self._connect(key, endpoint)

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close every idle connection; fires once they are closed.
        """
        closing = []
        for protocol in list(self._idle):
            self._take(protocol)
            closing.append(protocol.abort())
        return gatherResults(closing).addCallback(lambda _: None)

    def _connect(self, key: PoolKey, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        return endpoint.connect(_ConnectionFactory(self, key))

    def _put(self, key: PoolKey, protocol: GuardedHTTP11ClientProtocol) -> None:
        """
        The quiescent callback: an answer was read to its end.
        """
        if not protocol.reusable or protocol.state != "QUIESCENT":
            if not protocol.reusable:
                self.retired += 1
                self.log.info("closing an upstream connection that sent bytes past the end of an answer")
            protocol.transport.abortConnection()  # type: ignore[union-attr]
            return
        tenant = key[0]
        if self._per_tenant.get(tenant, 0) >= self.max_idle_per_tenant:
            self._close_oldest(lambda k: k[0] == tenant)
        if len(self._idle) >= self.max_idle:
            self._close_oldest(lambda k: True)
        timer = self._clock.callLater(self.idle_timeout, self._expire, protocol)
        self._idle[protocol] = (key, timer)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1

    def _forget(self, protocol: GuardedHTTP11ClientProtocol) -> None:
        """
        The connection was lost, or retired: never hand it out.
        """
        if protocol in self._idle:
            if protocol.state == "QUIESCENT":
                # still open: it received bytes while idle
                self.retired += 1
                self.log.info("closing an idle upstream connection that received bytes")
            self._take(protocol)

    def _take(self, protocol: GuardedHTTP11ClientProtocol) -> None:
        key, timer = self._idle.pop(protocol)
        if timer.active():
            timer.cancel()
        tenant = key[0]
        left = self._per_tenant[tenant] - 1
        if left:
            self._per_tenant[tenant] = left
        else:
            del self._per_tenant[tenant]

    def _close_oldest(self, match: Callable[[PoolKey], bool]) -> None:
        for protocol, (key, _) in self._idle.items():
            if match(key):
                self._take(protocol)
                protocol.transport.loseConnection()  # type: ignore[union-attr]
                return

    def _expire(self, protocol: GuardedHTTP11ClientProtocol) -> None:
        if protocol in self._idle:
            self._take(protocol)
            protocol.transport.loseConnection()  # type: ignore[union-attr]
