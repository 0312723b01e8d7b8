"""
Issue 10, findings 1 and 8, and ``upstream.tenant_max_in_flight``: the real
upstream client against a misbehaving upstream on loopback (a raw TCP server
that writes the bytes the test scripts, so nothing in between fixes them).

- An answer followed by a second, unasked-for one (or a 204 followed by body
  bytes) never reaches another tenant (SPEC §3 "Connections upstream").
- A connection with bytes past an answer's end, or with bytes arriving while
  idle, is closed and never reused.
- 502 messages never quote the upstream's bytes (SPEC §4); the log has them,
  truncated.
- One tenant at its ``tenant_max_in_flight`` does not overload another.

The last tests run the real daemon (``twistd``) against a threaded raw
upstream: the same faults, seen through the HTTP API and the cache.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest
import pytest_twisted
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from apicache.cache.keys import CacheKey
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import FetchRequest
from apicache.config import ConfigError, RouteConfig, parse_config
from apicache.harness.polling import wait_until_async
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import DETAIL_CHARS, Overloaded, UpstreamClient, UpstreamTimeout, UpstreamUnreachable

#: how long after its answer the upstream sends what nobody asked for
LATE = 0.05
#: how long after tenant A's answer tenant B asks (before the late bytes)
B_AFTER = 0.02
ROUNDS = 6

#: in a script: the upstream closes the connection LATE seconds after its answer
CLOSE = b"<close>"

LEAK = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nSECRET-OF-A!!"


def answer(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


class Connection(Protocol):
    """
    One upstream connection: requests are answered in order, each by the
    script for its path, which returns (bytes now, bytes after LATE).  Like a
    real HTTP/1.1 server, a later request's answer waits for the earlier
    request's last bytes.
    """

    def __init__(self, upstream: RawUpstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.busy_until = 0.0

    def connectionMade(self) -> None:
        self.number = len(self.upstream.connections)
        self.upstream.connections.append([])

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            self.upstream.connections[self.number].append(path)
            now, late = self.upstream.script[path.split("?")[0]]()
            delay = max(0.0, self.busy_until - reactor.seconds())
            reactor.callLater(delay, self.transport.write, now)
            if late == CLOSE:
                reactor.callLater(delay + LATE, self.transport.loseConnection)
            elif late:
                reactor.callLater(delay + LATE, self.transport.write, late)
                self.busy_until = reactor.seconds() + delay + LATE


class RawUpstream(Factory):
    def __init__(self, script: dict[str, Callable[[], tuple[bytes, bytes]]]) -> None:
        self.script = script
        #: per connection, the paths it carried
        self.connections: list[list[str]] = []

    def buildProtocol(self, addr):
        return Connection(self)

    def carriers(self, prefix: str) -> set[int]:
        """Return the connections that carried a path starting with ``prefix``."""
        return {i for i, paths in enumerate(self.connections) if any(p.startswith(prefix) for p in paths)}


async def listen(script):
    upstream = RawUpstream(script)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(upstream)
    client = UpstreamClient(
        reactor,
        f"http://127.0.0.1:{port.getHost().port}",
        timeout=5.0,
        max_body_bytes=10000,
        max_connections=8,
        max_in_flight=16,
    )
    return upstream, port, client


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def a_then_b(script) -> tuple[RawUpstream, list[object]]:
    """
    ROUNDS times: tenant A fetches /a, tenant B fetches /b B_AFTER seconds
    after A's answer.  Return the upstream and what B got each time.
    """
    upstream, port, client = await listen(script)
    got: list[object] = []
    try:
        for i in range(ROUNDS):
            await client.fetch(f"/a?round={i}", [], tenant="tenant-a")
            await sleep(B_AFTER)
            try:
                got.append((await client.fetch(f"/b?round={i}", [], tenant="tenant-b")).body)
            except UpstreamUnreachable as e:
                got.append(str(e))
            await sleep(LATE)
    finally:
        await client.close()
        await port.stopListening()
    return upstream, got


@pytest_twisted.ensureDeferred
async def test_an_unasked_answer_after_tenant_a_never_reaches_tenant_b():
    """Finding 1: Content-Length 10, then a whole second answer 50 ms later."""
    upstream, got = await a_then_b({"/a": lambda: (answer(b"0123456789"), LEAK), "/b": lambda: (answer(b"b"), b"")})
    assert got == [b"b"] * ROUNDS
    assert not upstream.carriers("/a") & upstream.carriers("/b")


@pytest_twisted.ensureDeferred
async def test_body_bytes_after_a_204_never_reach_tenant_b():
    """Finding 1: a 204 whose body bytes arrive 50 ms later."""
    upstream, got = await a_then_b(
        {"/a": lambda: (b"HTTP/1.1 204 No Content\r\n\r\n", b'{"secret": "A"}'), "/b": lambda: (answer(b"b"), b"")}
    )
    assert got == [b"b"] * ROUNDS
    assert not upstream.carriers("/a") & upstream.carriers("/b")


@pytest_twisted.ensureDeferred
async def test_bytes_past_the_end_of_an_answer_retire_the_connection():
    """The extra answer comes in the same write: Twisted hands it over as ``rest``."""
    upstream, port, client = await listen({"/a": lambda: (answer(b"0123456789") + LEAK, b"")})
    try:
        for i in range(3):
            r = await client.fetch(f"/a?{i}", [], tenant="acme")
            assert r.body == b"0123456789"
            await sleep(0.01)
        assert [len(paths) for paths in upstream.connections] == [1, 1, 1]
        assert client.pool.idle_of("acme") == 0
        assert client.pool.retired == 3
    finally:
        await client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytes_on_an_idle_connection_retire_it():
    upstream, port, client = await listen({"/a": lambda: (answer(b"a"), b"x"), "/plain": lambda: (answer(b"p"), b"")})
    try:
        assert (await client.fetch("/a", [], tenant="acme")).body == b"a"
        assert client.pool.idle_of("acme") == 1
        await wait_until_async(lambda: client.pool.retired == 1, 5.0, 0.01, "the idle connection to be retired")
        assert client.pool.idle_of("acme") == 0
        assert client.pool.retired == 1
        assert (await client.fetch("/plain", [], tenant="acme")).body == b"p"
        assert upstream.connections == [["/a"], ["/plain"]]
        # a well-behaved connection is reused
        assert (await client.fetch("/plain", [], tenant="acme")).body == b"p"
        assert upstream.connections == [["/a"], ["/plain", "/plain"]]
    finally:
        await client.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unparsable_answer_gives_a_message_without_upstream_bytes():
    """Finding 8: the message is a fixed text; the log has the detail, truncated."""
    garbage = b"HELLO THERE " + b"Z" * 500 + b"\r\n\r\n"
    upstream, port, client = await listen({"/a": lambda: (garbage, b"")})
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        with pytest.raises(UpstreamUnreachable) as e:
            await client.fetch("/a", [], tenant="acme")
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await client.close()
        await port.stopListening()
    message = str(e.value)
    assert "HELLO" not in message and "ZZ" not in message
    assert message == "the upstream's answer is not valid HTTP"
    details = [ev["detail"] for ev in logged if ev.get("log_namespace") == "apicache.upstream"]
    assert any("HELLO THERE" in d for d in details)
    assert all(len(d) <= DETAIL_CHARS for d in details)


@pytest_twisted.ensureDeferred
async def test_connection_cut_mid_body_gives_a_fixed_message():
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nPARTIAL-SECRET"
    upstream, port, client = await listen({"/a": lambda: (partial, CLOSE)})
    try:
        with pytest.raises(UpstreamUnreachable) as e:
            await client.fetch("/a", [], tenant="acme")
    finally:
        await client.close()
        await port.stopListening()
    assert str(e.value) == "the upstream closed the connection before the whole answer"


class TenantInFlight(SynchronousTestCase):
    """``upstream.tenant_max_in_flight`` over an in-memory upstream."""

    def setUp(self):
        class Hanging(Resource):
            isLeaf = True

            def render_GET(self, request):
                return NOT_DONE_YET

        self.clock = Clock()
        self.agent = RequestTraversalAgent(Hanging())

    def client(self, tenant_max: int) -> UpstreamClient:
        return UpstreamClient(
            self.clock, "http://up", 5.0, 1000, 4, max_in_flight=10, tenant_max_in_flight=tenant_max, agent=self.agent
        )

    def test_a_tenant_at_its_limit_does_not_overload_another(self):
        client = self.client(2)
        a = [client.fetch("/x", [], tenant="a") for _ in range(2)]
        f = self.failureResultOf(client.fetch("/x", [], tenant="a"), Overloaded)
        assert f.value.tenant == "a"
        b = client.fetch("/x", [], tenant="b")
        self.assertNoResult(b)
        assert client.tenant_in_flight == {"a": 2, "b": 1}
        self.clock.advance(6)
        for d in [*a, b]:
            self.failureResultOf(d)
        assert client.tenant_in_flight == {} and client.in_flight == 0
        last = client.fetch("/x", [], tenant="a")
        self.assertNoResult(last)
        self.clock.advance(6)
        self.failureResultOf(last, UpstreamTimeout)

    def test_zero_means_no_tenant_limit(self):
        client = self.client(0)
        a = [client.fetch("/x", [], tenant="a") for _ in range(10)]
        for d in a:
            self.assertNoResult(d)
        f = self.failureResultOf(client.fetch("/x", [], tenant="b"), Overloaded)
        assert f.value.tenant is None
        self.clock.advance(6)
        for d in a:
            self.failureResultOf(d, UpstreamTimeout)


def parse(data):
    return parse_config({"server": {"allow_anonymous": True}, **data}, "apicache.toml", {})


def test_tenant_max_in_flight_is_configured_and_checked():
    assert parse({}).upstream.tenant_max_in_flight == 64  # (v3) default 64
    assert parse({"upstream": {"tenant_max_in_flight": 8}}).upstream.tenant_max_in_flight == 8
    for bad in (-1, "8", 1.5):
        with pytest.raises(ConfigError) as e:
            parse({"upstream": {"tenant_max_in_flight": bad}})
        assert e.value.key == "upstream.tenant_max_in_flight"


def test_the_cache_fetches_on_its_tenants_behalf():
    """Misses and background re-fetches name the tenant, which picks its pool."""
    clock = Clock()
    route = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=10.0, stale_if_error=5.0, params=("id",), fingerprint="f")
    upstream = FakeUpstream()
    registry = CacheRegistry(MemoryStore(1 << 20), upstream, clock, [route], (), 100)
    for tenant in ("acme", "globex"):
        registry.cache(tenant, "object").get(CacheKey(tenant, "object", ("1",), "v"), FetchRequest("/o/1", []))
    assert [p.tenant for p in upstream.fetched] == ["acme", "globex"]
    for p in list(upstream.pending):
        p.respond()
    registry.refresh("globex", "object", ("1",))
    registry.cache("globex", "object").get(CacheKey("globex", "object", ("1",), "v"), FetchRequest("/o/1", []))
    assert [p.tenant for p in upstream.fetched] == ["acme", "globex", "globex"]
    upstream.pending[0].respond()


class ThreadedRawUpstream:
    """
    The misbehaving upstream for a real daemon: a blocking socket server, a
    thread per connection, requests answered in order.  ``script(path)``
    returns (bytes now, bytes LATE seconds later).
    """

    def __init__(self, script: Callable[[str], tuple[bytes, bytes]]) -> None:
        self.script = script
        self.connections: list[list[str]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            paths: list[str] = []
            self.connections.append(paths)
            threading.Thread(target=self._serve, args=(conn, paths), daemon=True).start()

    def _serve(self, conn: socket.socket, paths: list[str]) -> None:
        buffer = b""
        with conn, contextlib.suppress(OSError):  # apicache aborts retired connections
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                paths.append(path)
                now, late = self.script(path)
                conn.sendall(now)
                if late:
                    time.sleep(LATE)
                    conn.sendall(late)

    def stop(self) -> None:
        self.sock.close()


def misbehaving(path: str) -> tuple[bytes, bytes]:
    if "(a" in path:
        return answer(b"0123456789"), LEAK
    if "(z" in path:
        return b"HTTP/1.1 204 No Content\r\n\r\n", b'{"secret": "A"}'
    if "(garbage" in path:
        return b"HELLO THERE\r\n\r\n", b""
    return answer(b'{"mine": true}'), b""


@pytest.mark.integration
def test_the_daemon_never_serves_one_tenants_upstream_bytes_to_another(make_daemon):
    """Finding 1 end to end: B's misses, 20 ms after A's, get B's answers, and cache them."""
    raw = ThreadedRawUpstream(misbehaving)
    try:
        d = make_daemon(upstream_url=raw.url)
        for i in range(ROUNDS):
            first = "a" if i % 2 else "z"  # the unasked answer, then the 204 with a body
            assert d.get(f"/server/object({first}{i})/header", tenant="tenant-a").status in (200, 204)
            time.sleep(B_AFTER)
            r = d.get(f"/server/object(b{i})/header", tenant="tenant-b")
            assert (r.status, r.body, r.headers["x-cache"]) == (200, b'{"mine": true}', "MISS")
            time.sleep(LATE)
            r = d.get(f"/server/object(b{i})/header", tenant="tenant-b")
            assert (r.body, r.headers["x-cache"]) == (b'{"mine": true}', "HIT")
        a_paths = {i for i, ps in enumerate(raw.connections) if any("(a" in p or "(z" in p for p in ps)}
        b_paths = {i for i, ps in enumerate(raw.connections) if any("(b" in p for p in ps)}
        assert a_paths and b_paths and not a_paths & b_paths
    finally:
        raw.stop()


@pytest.mark.integration
def test_the_daemons_502_quotes_no_upstream_bytes(make_daemon):
    """Finding 8 end to end."""
    raw = ThreadedRawUpstream(misbehaving)
    try:
        d = make_daemon(upstream_url=raw.url)
        r = d.get("/server/object(garbage)/header", tenant="acme")
        assert r.status == 502
        body = json.loads(r.body)
        assert body["error"] == "upstream_unreachable"
        assert "HELLO" not in body["message"]
        assert b"HELLO" not in r.body
    finally:
        raw.stop()
