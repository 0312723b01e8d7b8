"""
The per-tenant connection pool, driven synchronously: an Agent over the pool,
connections on in-memory transports, a task.Clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from apicache.upstream.pool import GuardedHTTP11ClientProtocol, TenantConnectionPool

# readBody warns about the in-memory transport's proxy, not about the pool
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody with a transport")

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@implementer(IStreamClientEndpoint)
class Endpoint:
    """Connects at once over a StringTransport; keeps every connection made."""

    def __init__(self) -> None:
        self.connections: list[GuardedHTTP11ClientProtocol] = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.connections.append(protocol)
        return succeed(protocol)


class EndpointFactory:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri):
        return self.endpoint


class Harness:
    """An upstream host reached through one pool, for any tenant."""

    def __init__(self, max_idle: int = 4, per_tenant: int = 2) -> None:
        self.clock = Clock()
        self.pool = TenantConnectionPool(self.clock, max_idle, per_tenant, idle_timeout=60)
        self.endpoint = Endpoint()

    def request(self, tenant: str):
        """Start a GET for ``tenant``; return (connection, Deferred body)."""
        before = self.busy()
        agent = Agent.usingEndpointFactory(self.clock, EndpointFactory(self.endpoint), pool=self.pool.for_tenant(tenant))
        d = agent.request(b"GET", b"http://up.example/x").addCallback(readBody)
        (connection,) = [c for c in self.busy() if c not in before]
        return connection, d

    def busy(self) -> list[GuardedHTTP11ClientProtocol]:
        """Connections with a request written and no answer yet."""
        return [c for c in self.endpoint.connections if c.state == "WAITING"]

    def closed(self, connection: GuardedHTTP11ClientProtocol) -> bool:
        return connection.transport.disconnecting or connection.transport.connected is False


class Tests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()

    def answer(self, connection, data=OK):
        connection.dataReceived(data)

    def test_an_answered_connection_is_reused_by_its_tenant(self):
        c, d = self.h.request("a")
        self.answer(c)
        assert self.successResultOf(d) == b"ok"
        assert self.h.pool.idle_of("a") == 1
        c2, d2 = self.h.request("a")
        assert c2 is c and self.h.pool.reused == 1 and self.h.pool.opened == 1
        self.answer(c2)
        assert self.successResultOf(d2) == b"ok"

    def test_the_connection_idle_longest_is_reused_first(self):
        """Late stray bytes get the most time to show before a reuse."""
        (c1, d1), (c2, d2) = self.h.request("a"), self.h.request("a")
        self.answer(c2)
        self.answer(c1)
        assert [self.successResultOf(d) for d in (d1, d2)] == [b"ok", b"ok"]
        c3, _ = self.h.request("a")
        assert c3 is c2

    def test_another_tenant_never_gets_the_connection(self):
        c, d = self.h.request("a")
        self.answer(c)
        self.successResultOf(d)
        c2, d2 = self.h.request("b")
        assert c2 is not c
        assert self.h.pool.opened == 2 and self.h.pool.idle_of("a") == 1
        assert c.transport.value().count(b"GET") == 1

    def test_bytes_after_the_answer_in_the_same_read_close_the_connection(self):
        c, d = self.h.request("a")
        self.answer(c, OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
        assert self.successResultOf(d) == b"ok"
        assert self.h.closed(c)
        assert self.h.pool.idle == 0 and self.h.pool.retired == 1
        c2, _ = self.h.request("a")
        assert c2 is not c

    def test_a_204_with_a_body_closes_the_connection(self):
        c, d = self.h.request("a")
        self.answer(c, b"HTTP/1.1 204 No Content\r\n\r\nbody-bytes")
        assert self.successResultOf(d) == b""
        assert self.h.closed(c) and self.h.pool.idle == 0

    def test_bytes_while_idle_close_the_connection_at_once(self):
        c, d = self.h.request("a")
        self.answer(c)
        self.successResultOf(d)
        assert self.h.pool.idle_of("a") == 1
        self.answer(c, b"HTTP/1.1 200 OK\r\n")
        assert self.h.closed(c)
        assert self.h.pool.idle == 0 and self.h.pool.retired == 1
        c2, _ = self.h.request("a")
        assert c2 is not c

    def test_a_lost_idle_connection_is_forgotten(self):
        c, d = self.h.request("a")
        self.answer(c)
        self.successResultOf(d)
        c.connectionLost(None)
        assert self.h.pool.idle == 0 and self.h.pool.retired == 0

    def test_idle_connections_time_out(self):
        c, d = self.h.request("a")
        self.answer(c)
        self.successResultOf(d)
        self.h.clock.advance(59)
        assert self.h.pool.idle == 1
        self.h.clock.advance(1)
        assert self.h.pool.idle == 0 and self.h.closed(c)

    def test_idle_connections_per_tenant_are_bounded_oldest_closed_first(self):
        started = [self.h.request("a") for _ in range(3)]
        for c, d in started:
            self.answer(c)
            self.successResultOf(d)
        assert self.h.pool.idle_of("a") == 2
        assert [self.h.closed(c) for c, _ in started] == [True, False, False]

    def test_idle_connections_in_all_are_bounded(self):
        started = [self.h.request(t) for t in ("a", "a", "b", "b", "c")]
        for c, d in started:
            self.answer(c)
            self.successResultOf(d)
        assert self.h.pool.idle == 4
        assert [self.h.closed(c) for c, _ in started] == [True, False, False, False, False]
        assert (self.h.pool.idle_of("a"), self.h.pool.idle_of("b"), self.h.pool.idle_of("c")) == (1, 2, 1)

    def test_a_reused_connection_closed_by_the_upstream_is_retried_on_a_new_one(self):
        c, d = self.h.request("a")
        self.answer(c)
        self.successResultOf(d)
        agent = Agent.usingEndpointFactory(self.h.clock, EndpointFactory(self.h.endpoint), pool=self.h.pool.for_tenant("a"))
        d2 = agent.request(b"GET", b"http://up.example/x").addCallback(readBody)
        # the upstream closed the idle connection just as the request went out
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        c.connectionLost(Failure(ConnectionDone()))
        (c2,) = self.h.busy()
        assert c2 is not c
        self.answer(c2)
        assert self.successResultOf(d2) == b"ok"

    def test_close_aborts_idle_connections(self):
        started = [self.h.request(t) for t in ("a", "b")]
        for c, d in started:
            self.answer(c)
            self.successResultOf(d)
        d = self.h.pool.closeCachedConnections()
        assert self.h.pool.idle == 0
        for c, _ in started:
            assert self.h.closed(c)
            c.connectionLost(None)
        self.successResultOf(d)


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(1, 5)), max_size=30), st.integers(1, 6), st.integers(1, 4))
def test_idle_connections_never_exceed_their_bounds(rounds, max_idle, per_tenant):
    """Whatever the mix of tenants and concurrency, both bounds hold."""
    h = Harness(max_idle, per_tenant)
    for tenant, concurrent in rounds:
        started = [h.request(tenant) for _ in range(concurrent)]
        for c, _ in started:
            c.dataReceived(OK)
        assert h.pool.idle <= max_idle
        assert all(h.pool.idle_of(t) <= per_tenant for t in "abcde")
        assert sum(h.pool.idle_of(t) for t in "abcde") == h.pool.idle
        # every idle connection is open, and every connection beyond them closed
        open_ = [c for c in h.endpoint.connections if not h.closed(c)]
        assert len(open_) == h.pool.idle
