"""
Issue 19, request side, in-process: a real L{ApiSite} over a transport that
buffers as a TCP transport does (L{SlowReader}), with a real registry,
memory store, fake upstream and a task.Clock.

- A client that pipelines requests and never reads makes apicache hold at
  most ``server.max_write_buffer`` plus one answer for its connection, on
  the fast hit path and on Klein's path (SPEC.md section 4, v3).
"""

from __future__ import annotations

from typing import Any

from test_server import _Counting
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite, ConnectionLimits
from apicache.http.front import ApiFront
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamResponse

ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 10},
    {"type": "nostore", "path": "/server/nostore/<id>", "upstream": "/nostore/{id}", "ttl": 10},
]
BIG = 200_000
NO_STORE = ((b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store"))


def big_answer(path: str, headers: Any) -> UpstreamResponse:
    fields = [(b"content-type", b"application/octet-stream")]
    if path.startswith("/nostore"):
        # never stored: every request goes through Klein to the upstream
        fields.append((b"cache-control", b"no-store"))
    return UpstreamResponse(200, fields, b"x" * BIG)


class SlowReader(StringTransport):
    """
    A transport whose peer reads only when the test says (L{drain}): like a
    TCP transport it holds what is written, pauses its streaming producer
    while it holds more than C{bufferSize} bytes and resumes it once it
    holds nothing.
    """

    bufferSize = 65536

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.held = 0
        self.most_held = 0
        self.taken = b""
        self.paused_producer = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._held(len(data))

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        super().writeSequence(data)
        self._held(sum(map(len, data)))

    def _held(self, n: int) -> None:
        self.held += n
        self.most_held = max(self.most_held, self.held)
        if self.producer is not None and self.streaming and self.held > self.bufferSize:
            self.paused_producer = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """
        The peer reads everything held; return it.
        """
        data = self.value()
        self.clear()
        self.taken += data
        self.held = 0
        if self.producer is not None and self.paused_producer:
            self.paused_producer = False
            self.producer.resumeProducing()
        return data


class BoundedWire:
    """A site as the daemon builds it, answers of L{BIG} bytes."""

    def __init__(self, **limits: Any) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        data = {"server": {"api_keys": ["k1"]}, "upstream": {"base_url": "http://up/api"}, "routes": ROUTES}
        config = parse_config(data, "test.toml", {})
        self.upstream = FakeUpstream(auto=big_answer)
        self.registry = CacheRegistry(
            MemoryStore(64 << 20), self.upstream, self.clock, config.routes, config.upstream.keyed_headers
        )
        self.api = CacheAPI(config, self.registry, Router(config.routes), self.clock, node="n1")
        self.klein = _Counting(self.api.app.resource())
        front = ApiFront(self.klein, self.api.resolver, self.api.keys, self.registry)
        self.site = ApiSite(
            front, self.clock, None, access_log=False, keys=self.api.keys, limits=ConnectionLimits(**limits),
            tenant_header=b"org_id",
        )

    def connect(self, transport: StringTransport | None = None) -> tuple[Any, Any]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = transport or SlowReader()
        protocol.makeConnection(transport)
        return protocol, transport


def get(path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n\r\n" % path


def answers(data: bytes) -> list[int]:
    """Return the status of each whole answer in ``data``."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        lines = head.split(b"\r\n")
        out.append(int(lines[0].split(b" ")[1]))
        lengths = [int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")]
        if lengths:
            data = rest[lengths[0] :]
        else:  # chunked
            end = rest.index(b"\r\n0\r\n\r\n") if not rest.startswith(b"0\r\n\r\n") else -2
            data = rest[end + 7 :]
    return out


# -- finding 1: pipelined slow reader ----------------------------------------


def _pipelined_slow_reader(path: bytes) -> None:
    w = BoundedWire(max_write_buffer=256 * 1024)
    if path.startswith(b"/server/object"):
        # stored once: what follows is the fast hit path
        protocol, transport = w.connect()
        protocol.dataReceived(get(path))
        assert answers(transport.drain()) == [200]
        klein_before = w.klein.calls
    protocol, transport = w.connect()
    protocol.dataReceived(get(path) * 40)  # 8 MB of answers asked for at once
    # no more than max_write_buffer plus one answer waits; the rest of the
    # requests are not parsed, and the connection is not read
    assert transport.held <= 256 * 1024 + BIG + 1000, transport.held
    assert transport.producerState == "paused"
    # bytes arriving meanwhile (a transport may deliver what it already read) are held, not parsed
    protocol.dataReceived(get(path))
    assert transport.held <= 256 * 1024 + BIG + 1000
    statuses: list[int] = []
    for _ in range(100):
        statuses += answers(transport.drain())
        if len(statuses) == 41:
            break
    assert statuses == [200] * 41
    assert transport.most_held <= 256 * 1024 + BIG + 1000, transport.most_held
    # every answer sent, the connection is read again
    assert transport.producerState == "producing"
    assert not transport.disconnecting
    if path.startswith(b"/server/object"):
        assert w.klein.calls == klein_before  # every one was a hit on the fast path
    else:
        assert w.klein.calls == 41 and len(w.upstream.fetched) == 41


def test_pipelined_slow_reader_on_the_hit_path_holds_one_write_buffer() -> None:
    _pipelined_slow_reader(b"/server/object(1)/header")


def test_pipelined_slow_reader_on_kleins_path_holds_one_write_buffer() -> None:
    _pipelined_slow_reader(b"/server/nostore/1")


def test_a_late_answer_is_written_and_the_next_request_waits_for_the_drain() -> None:
    """Klein's path answering later: the connection stays unread until the client reads."""
    w = BoundedWire(max_write_buffer=256 * 1024)
    w.upstream.auto = None
    protocol, transport = w.connect()
    protocol.dataReceived(get(b"/server/nostore/1") * 3)
    for _ in range(2):
        w.upstream.pending[0].respond(200, b"x" * BIG, NO_STORE)
    # two answers (400 kB) wait: past max_write_buffer, the third request is not parsed
    assert len(w.upstream.fetched) == 2 and transport.producerState == "paused"
    assert answers(transport.drain()) == [200, 200]
    assert len(w.upstream.fetched) == 3
    w.upstream.pending[0].respond(200, b"x" * BIG, NO_STORE)
    assert answers(transport.drain()) == [200]
    assert transport.producerState == "producing"


def test_the_write_buffer_threshold_is_max_write_buffer() -> None:
    """A TCP transport pauses its producer past C{bufferSize}: the channel sets it."""
    w = BoundedWire(max_write_buffer=12345)
    _, transport = w.connect()
    assert transport.bufferSize == 12345


# -- finding 3: connection timing ----------------------------------------------


def test_a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() -> None:
    w = BoundedWire(header_timeout=10.0, idle_timeout=120.0)
    _, transport = w.connect()
    w.clock.advance(9.9)
    assert not transport.disconnecting
    w.clock.advance(0.2)
    assert transport.disconnecting
    assert w.site.counters["head_timeouts"] == 1


def test_the_first_byte_in_time_starts_the_heads_own_deadline() -> None:
    w = BoundedWire(header_timeout=10.0, idle_timeout=120.0)
    protocol, transport = w.connect()
    w.clock.advance(9.0)
    protocol.dataReceived(b"GET /server/obj")
    w.clock.advance(9.9)  # 18.9 s after the connection, 9.9 s after its first byte
    assert not transport.disconnecting
    protocol.dataReceived(b"ect(1)/header HTTP/1.1\r\napi-key: k1\r\norg_id: t1\r\n\r\n")
    assert answers(transport.drain()) == [200]
    # between requests the idle timeout governs, not the header timeout
    w.clock.advance(60)
    assert not transport.disconnecting
    w.clock.advance(60.1)
    assert transport.disconnecting


def post(length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /server/object(1)/header HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (length, extra)
    )


def refusal(data: bytes) -> tuple[int, str, dict[bytes, bytes]]:
    import json

    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}
    return int(lines[0].split(b" ")[1]), json.loads(body)["error"], fields


def test_a_body_slower_than_body_timeout_is_408_and_the_connection_closed() -> None:
    w = BoundedWire(body_timeout=30.0, header_timeout=10.0, idle_timeout=120.0)
    protocol, transport = w.connect()
    protocol.dataReceived(post(100) + b"x" * 10)
    for _ in range(29):  # a byte a second keeps every other timer at bay
        w.clock.advance(1.0)
        protocol.dataReceived(b"x")
    assert not transport.disconnecting and transport.value() == b""
    w.clock.advance(1.0)
    status, code, fields = refusal(transport.value())
    assert (status, code, fields[b"connection"]) == (408, "body_timeout", b"close")
    assert transport.disconnecting
    assert w.site.counters["body_timeouts"] == 1


def test_a_chunked_body_slower_than_body_timeout_is_408() -> None:
    w = BoundedWire(body_timeout=5.0)
    protocol, transport = w.connect()
    head = b"POST /server/object(1)/header HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\nTransfer-Encoding: chunked\r\n\r\n"
    protocol.dataReceived(head + b"3\r\nabc\r\n")
    w.clock.advance(5.1)
    assert refusal(transport.value())[:2] == (408, "body_timeout")
    assert transport.disconnecting


def test_the_body_deadline_counts_from_the_end_of_the_head_with_100_continue() -> None:
    w = BoundedWire(body_timeout=5.0)
    protocol, transport = w.connect()
    protocol.dataReceived(post(3, b"Expect: 100-continue\r\n"))
    assert transport.value().startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    transport.clear()
    w.clock.advance(5.1)
    assert refusal(transport.value())[:2] == (408, "body_timeout")


def test_a_body_in_time_stops_its_deadline() -> None:
    w = BoundedWire(body_timeout=5.0, idle_timeout=120.0)
    protocol, transport = w.connect()
    protocol.dataReceived(post(3))
    w.clock.advance(4.9)
    protocol.dataReceived(b"abc")
    assert answers(transport.drain()) == [405]  # the route takes no POST: the body was read in full
    w.clock.advance(60)
    assert not transport.disconnecting and transport.value() == b""
