"""
What the tests of issue 19's request side (tests/test_bounds_*.py) share:
an in-memory site as the daemon builds it over a transport that buffers as
TCP does (L{SlowReader}, L{BoundedWire}), raw HTTP helpers, scripted raw
upstreams (in-reactor L{Scripted} and L{fetch_from}, threaded
L{FloodingUpstream}), a daemon's RSS, and a fake Kafka consumer that
answers end-offset queries.

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

from listener_support import CONFIG, kafka_config
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from apicache.events.decoding import EventDecoder
from apicache.events.handling import EventHandler
from apicache.events.kafka import EventListenerService
from apicache.events.watermark import Watermark
from apicache.http.channel import ConnectionLimits
from apicache.ops.logs import AccessLog
from apicache.testing import FlakyInvalidator, ImmediateClock, InMemoryAPI
from apicache.upstream.client import UpstreamClient, UpstreamResponse, UpstreamUnreachable

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


class BoundedWire(InMemoryAPI):
    """
    A site as the daemon builds it (keys checked on the channel, the given
    L{ConnectionLimits}), answers of L{BIG} bytes, connections over a
    L{SlowReader}; with C{logged}, access lines read back by L{lines}.
    """

    def __init__(self, logged: bool = False, **limits: Any) -> None:
        log: AccessLog | bool = False
        if logged:
            self._r, self._w = os.pipe()
            log = AccessLog(Clock(), fd=self._w)
        super().__init__(
            routes=ROUTES, auto=big_answer, max_bytes=64 << 20, check_keys=True, limits=ConnectionLimits(**limits),
            access_log=log,
        )
        if isinstance(log, AccessLog):
            log.clock = self.clock
        self.log = log

    def connect(self, transport: StringTransport | None = None) -> tuple[Any, Any]:  # type: ignore[override]
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = transport or SlowReader()
        protocol.makeConnection(transport)
        return protocol, transport

    def lines(self) -> list[dict[str, Any]]:
        """
        Return the access lines written so far (once: the log is closed).
        """
        assert isinstance(self.log, AccessLog)
        self.log.flush()
        os.close(self._w)
        with os.fdopen(self._r, "rb") as f:
            return [json.loads(line) for line in f.read().splitlines()]


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


def post(length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /server/object(1)/header HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (length, extra)
    )


def refusal(data: bytes) -> tuple[int, str, dict[bytes, bytes]]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}
    return int(lines[0].split(b" ")[1]), json.loads(body)["error"], fields




class _Scripted(Protocol):
    """Answers each request head with the bytes of C{factory.answer}, records what happened."""

    factory: Scripted

    def connectionMade(self) -> None:
        self.buffer = b""
        self.factory.opened += 1

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.buffer = b""
            self.transport.write(self.factory.answer)  # type: ignore[union-attr]
            if self.factory.close:
                self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.factory.closed += 1
        if self.factory.lost is not None and not self.factory.lost.called:
            self.factory.lost.callback(None)


class Scripted(Factory):
    protocol = _Scripted

    def __init__(self, answer: bytes, close: bool = False) -> None:
        self.answer = answer
        self.close = close
        self.opened = 0
        self.closed = 0
        self.lost: Deferred[None] | None = Deferred()


async def fetch_from(answer: bytes, max_header_bytes: int = 65536, close: bool = False, **kw: object) -> tuple[object, Scripted]:
    """
    Fetch once from an upstream answering C{answer} (then closing the
    connection, with C{close}); return the answer (or the error) and the
    upstream, once the connection closed or the pool kept it.
    """
    upstream = Scripted(answer, close)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(upstream)
    client = UpstreamClient(
        reactor,
        f"http://127.0.0.1:{port.getHost().port}",
        timeout=5.0,
        max_body_bytes=1 << 20,
        max_connections=8,
        max_in_flight=16,
        max_header_bytes=max_header_bytes,
        **kw,  # type: ignore[arg-type]
    )
    try:
        try:
            got: object = await client.fetch("/a", [], tenant="acme")
        except UpstreamUnreachable as e:
            got = e
            assert upstream.lost is not None
            await upstream.lost  # the connection is closed, not kept
        idle = client.pool.idle
    finally:
        await client.close()
        await port.stopListening()
    return (got, idle), upstream


def head_of(size: int, body: bytes = b"ok") -> bytes:
    """
    Return an answer whose header block (status line and field lines, each
    with its CR LF, not the blank line) is exactly C{size} bytes.
    """
    status = b"HTTP/1.1 200 OK\r\n"
    length = b"Content-Length: %d\r\n" % len(body)
    pad = size - len(status) - len(length) - len(b"X-Pad: \r\n")
    assert pad >= 0
    return status + length + b"X-Pad: " + b"p" * pad + b"\r\n\r\n" + body


class FloodingUpstream:
    """
    A raw upstream on loopback: to every request it sends a status line and
    then C{total} bytes of 1 kB field lines, and counts what it could send
    before apicache closed the connection.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent: list[int] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            line = b"X-Flood: " + b"f" * 1000 + b"\r\n"
            block = b"HTTP/1.1 200 OK\r\n" + line * 64
            sent = 0
            try:
                while sent < self.total:
                    conn.sendall(block)
                    sent += len(block)
                    block = line * 64
                conn.sendall(b"Content-Length: 2\r\n\r\nok")
            except OSError:
                pass
            self.sent.append(sent)

    def stop(self) -> None:
        self.sock.close()




def listener() -> tuple[EventListenerService, ImmediateClock]:
    """
    Return a broadcast-mode listener (its watermark its own) and its clock at 1000.
    """
    clock = ImmediateClock()
    clock.advance(1000)
    handler = EventHandler(EventDecoder(CONFIG.events, CONFIG.routes), FlakyInvalidator(), clock)
    svc = EventListenerService(kafka_config(), handler, clock, "host", watermark=Watermark(clock))
    return svc, clock
