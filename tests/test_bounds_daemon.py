"""
Issue 19, request side, against the real daemon (C{twistd}) over real
sockets: what a client, an upstream or a tenant can make apicache hold.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from bounds_support import FloodingUpstream

from apicache.harness.launchers import Daemon

OBJ = "/server/object(42)/header"
MB = 1_000_000


def _pipeline(port: int, path: str, n: int) -> socket.socket:
    """
    Open a connection, send C{n} GETs of C{path} in one go, read nothing.
    """
    s = socket.create_connection(("127.0.0.1", port))
    # a small receive window: what the kernel takes off the daemon's hands
    # stays small next to what the daemon itself would hold
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\napi-key: test-key\r\norg_id: t1\r\n\r\n".encode()
    s.sendall(request * n)
    return s


def test_fifty_pipelining_clients_that_never_read_hold_bounded_memory(make_daemon: Callable[..., Daemon], upstream) -> None:
    """
    50 connections each pipeline 200 GETs of a cached 1 MB answer and never
    read: the daemon holds at most C{max_write_buffer} plus one answer for
    each (v3).  Before, one connection took +570 MB.
    """
    upstream.set("/api/object(42)/header", body=b"x" * MB, headers={"Content-Type": "application/octet-stream"})
    d = make_daemon()
    assert d.get(OBJ).status == 200
    assert d.get(OBJ).cache == "HIT"
    before = d.rss_kib()
    # 50 x (1 MiB + 1 MB) is 100 MB; leave room for the kernel's socket
    # buffers being copied out and the allocator's slack
    limit_kib = 300 * 1024
    socks = []
    grown = 0
    try:
        for _ in range(50):
            socks.append(_pipeline(d.port, OBJ, 200))
            grown = max(grown, d.rss_kib() - before)
            assert grown < limit_kib, f"RSS grew by {grown // 1024} MiB with {len(socks)} connections"
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # let the daemon do whatever it would
            grown = max(grown, d.rss_kib() - before)
            assert grown < limit_kib, f"RSS grew by {grown // 1024} MiB"
            time.sleep(0.05)
        print(f"RSS before {before // 1024} MiB, grown by at most {grown // 1024} MiB with 50 connections")
        # the daemon still serves others at once
        started = time.monotonic()
        assert d.get(OBJ).status == 200
        assert time.monotonic() - started < 2.0
        # and a client that pipelines as much and reads gets every answer
        # as it drains
        with socket.create_connection(("127.0.0.1", d.port)) as one:
            one.sendall(f"GET {OBJ} HTTP/1.1\r\nHost: x\r\napi-key: test-key\r\norg_id: t1\r\n\r\n".encode() * 50)
            one.settimeout(10)
            got = 0
            while got < 50 * MB:
                chunk = one.recv(1 << 20)
                assert chunk, got
                got += len(chunk)
    finally:
        for s in socks:
            s.close()



def test_a_50_mb_header_flood_is_a_502_and_leaves_no_memory_held(make_daemon: Callable[..., Daemon]) -> None:
    """
    50 MB of upstream field lines: 502 upstream_unreachable once
    upstream.max_header_bytes (64 KiB) are read, the connection closed, and
    the daemon's RSS back where it was (before: about +230 MB, held).
    """
    flood = FloodingUpstream(50 << 20)
    try:
        d = make_daemon(upstream_url=flood.url)
        assert d.get("/healthz").status == 200
        before = d.rss_kib()
        for i in range(3):
            r = d.get(f"/server/object(flood{i})/header")
            assert r.status == 502, r.status
            assert r.json()["error"] == "upstream_unreachable"
            assert r.headers["cache-status"] == "apicache; fwd=uri-miss; detail=too-large"
        deadline = time.monotonic() + 5
        while len(flood.sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the connection was closed long before the 50 MB were sent
        assert len(flood.sent) == 3 and max(flood.sent) < 20 << 20, flood.sent
        time.sleep(0.5)
        grown = d.rss_kib() - before
        print(f"RSS before {before // 1024} MiB, after 3 floods +{grown // 1024} MiB; upstream sent {flood.sent}")
        assert grown < 16 * 1024, f"+{grown} KiB held"
    finally:
        flood.stop()


def _closed_after(s: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until the daemon closes ``s``; return how long that took and what came."""
    started = time.monotonic()
    s.settimeout(limit)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - started, got


def test_silent_connections_and_slow_bodies_are_cut(make_daemon: Callable[..., Daemon]) -> None:
    """
    (v3) A connection that sends nothing is closed at header_timeout (before:
    held for idle_timeout, 120 s); a body still arriving at body_timeout gets
    408 body_timeout and the connection closed (before: held forever).
    """
    d = make_daemon({"server": {"header_timeout": 0.5, "body_timeout": 1.0, "idle_timeout": 30.0}})
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        took, got = _closed_after(s, 10.0)
    assert got == b"" and 0.4 < took < 3.0, took
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(
            f"POST {OBJ} HTTP/1.1\r\nHost: x\r\napi-key: test-key\r\norg_id: t1\r\nContent-Length: 100\r\n\r\n".encode()
        )
        for _ in range(4):  # a byte every 0.3 s: neither timeout of v2 would ever fire
            time.sleep(0.3)
            try:
                s.sendall(b"x")
            except OSError:
                break
        took, got = _closed_after(s, 10.0)
    assert got.startswith(b"HTTP/1.1 408 "), got[:100]
    assert b'"error": "body_timeout"' in got
    assert b"Connection: close" in got


def test_one_slow_tenant_cannot_take_every_upstream_slot(make_daemon: Callable[..., Daemon], upstream) -> None:
    """
    (v3) tenant_max_in_flight defaults to 64: a tenant whose 80 misses hang
    gets 64 fetches and 503 for the rest, and another tenant is still served
    (before, with 0 by default, the slow tenant took all 80 of max_in_flight).
    """
    from concurrent.futures import ThreadPoolExecutor

    for i in range(80):
        upstream.set(f"/api/object(slow{i})/header", body=b"{}", delay=4.0)
    d = make_daemon({"upstream": {"max_in_flight": 80, "timeout": 8.0}})
    with ThreadPoolExecutor(80) as pool:
        slow = [pool.submit(d.get, f"/server/object(slow{i})/header", "slowcorp") for i in range(80)]
        deadline = time.monotonic() + 10
        while upstream.calls() < 64 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the 16 refused ones are answered at once
        other = d.get("/server/object(1)/header", tenant="othercorp")
        statuses = sorted(f.result().status for f in slow)
    assert other.status == 200, (other.status, other.body)
    assert statuses.count(200) == 64 and statuses.count(503) == 16, statuses
    refused = [f.result() for f in slow if f.result().status == 503]
    assert all(r.json()["error"] == "overloaded" for r in refused)
