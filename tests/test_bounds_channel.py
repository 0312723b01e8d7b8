"""
Issue 19, request side, in-process: a real L{ApiSite} over a transport that
buffers as a TCP transport does (L{SlowReader}), with a real registry,
memory store, fake upstream and a task.Clock.

- A client that pipelines requests and never reads makes apicache hold at
  most ``server.max_write_buffer`` plus one answer for its connection, on
  the fast hit path and on Klein's path (SPEC.md section 4, v3).
"""

from __future__ import annotations

from bounds_support import BIG, NO_STORE, BoundedWire, answers, get, post, refusal

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
