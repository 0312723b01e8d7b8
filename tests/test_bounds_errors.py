"""
Issue 19, error answers (SPEC.md section 4, v3):

- requests refused before routing (401, 400 C{duplicate_header} or
  C{bad_request}, 408, 413) get access lines with the client's address,
  the bytes sent and the duration, like any other;
- the 502 and 504 answers of a route carry C{X-Cache: MISS} and a
  C{Cache-Status} member C{apicache; fwd=uri-miss; detail=...} (with
  C{fwd-status} when an upstream status was seen).

In-process (a real ApiSite over a StringTransport, a task.Clock, StubTreq
over the Klein resource), the real upstream client against loopback
upstreams, and the real daemon.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from bounds_support import BoundedWire, fetch_from, head_of, refusal
from http_support import App, result, sync_case
from twisted.internet import reactor

from apicache.harness.launchers import Daemon, free_port
from apicache.upstream.client import BodyTooLarge, UpstreamClient, UpstreamError, UpstreamTimeout, UpstreamUnreachable

# -- access lines of requests refused before routing -----------------------------


HEAD = b"GET /server/object(1)/header?page=2&token=abc HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    "head, status, code",
    [
        (HEAD + b"org_id: t1\r\n\r\n", 401, "unauthorized"),
        (HEAD + b"api-key: k1\r\norg_id: t1\r\norg_id: t2\r\n\r\n", 400, "duplicate_header"),
        (HEAD.replace(b"GET", b"POST") + b"api-key: k1\r\norg_id: t1\r\nContent-Length: 9999999\r\n\r\n", 413, "body_too_large"),
        (HEAD + b"api-key: k1\r\nBad Header\r\n\r\n", 400, "bad_request"),
    ],
)
def test_a_request_refused_before_routing_is_logged_with_client_bytes_and_duration(head: bytes, status: int, code: str) -> None:
    w = BoundedWire(logged=True)
    protocol, transport = w.connect()
    protocol.dataReceived(head[:10])  # the head takes 2.5 s to arrive
    w.clock.advance(2.5)
    protocol.dataReceived(head[10:])
    sent = transport.value()
    assert refusal(sent)[:2] == (status, code)
    [line] = w.lines()
    body = sent.partition(b"\r\n\r\n")[2]
    assert (line["status"], line["client"], line["bytes"]) == (status, "127.0.0.1", len(body))
    assert line["duration_ms"] == 2500.0
    assert line["path"] == "/server/object(1)/header"
    assert line["query"] == "page=2&token=***"


def test_a_body_timeout_is_logged_with_client_bytes_and_duration() -> None:
    w = BoundedWire(logged=True, body_timeout=30.0)
    protocol, transport = w.connect()
    protocol.dataReceived(HEAD.replace(b"GET", b"POST") + b"api-key: k1\r\norg_id: t1\r\nContent-Length: 10\r\n\r\nabc")
    w.clock.advance(30.0)
    sent = transport.value()
    assert refusal(sent)[:2] == (408, "body_timeout")
    [line] = w.lines()
    assert (line["status"], line["client"], line["bytes"]) == (408, "127.0.0.1", len(sent.partition(b"\r\n\r\n")[2]))
    assert line["duration_ms"] == 30000.0


# -- 502 and 504 of a route: X-Cache and Cache-Status -------------------------------

OBJ = "http://x/server/object(42)/header"
T1 = {"api-key": "k1", "org_id": "t1"}


def failing(error: Exception) -> Callable[..., Any]:
    def auto(path: str, headers: Any) -> Any:
        raise error

    return auto


def _with(error: UpstreamError, detail: str, status: int | None = None) -> UpstreamError:
    error.detail = detail
    error.status = status
    return error


@pytest.mark.parametrize(
    "error, status, member",
    [
        (_with(UpstreamUnreachable("could not connect to the upstream"), "connection-refused"), 502,
         "apicache; fwd=uri-miss; detail=connection-refused"),
        (UpstreamTimeout("no complete answer within 10 s"), 504, "apicache; fwd=uri-miss; detail=timeout"),
        (_with(BodyTooLarge("the answer is over 10 bytes"), "too-large", 200), 502,
         "apicache; fwd=uri-miss; detail=too-large; fwd-status=200"),
        (UpstreamUnreachable("the upstream's answer is not valid HTTP"), 502, "apicache; fwd=uri-miss; detail=bad-response"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_502_and_504_of_a_route_carry_x_cache_miss_and_cache_status(error: UpstreamError, status: int, member: str, method: str) -> None:
    routes = [{"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 10,
               "pass_methods": ["POST"]}]
    app = App(auto=failing(error), routes=routes)
    code, headers, body = result(sync_case(), app.request(method, OBJ, T1))
    assert code == status
    assert headers.getRawHeaders("x-cache") == ["MISS"]
    assert headers.getRawHeaders("cache-status") == [member]
    assert json.loads(body)["error"] in ("upstream_unreachable", "upstream_timeout")


def test_errors_that_are_not_the_upstreams_carry_no_cache_status() -> None:
    app = App()
    code, headers, _ = result(sync_case(), app.request("GET", "http://x/server/object(..)/header", T1))
    assert code == 400
    assert headers.getRawHeaders("cache-status") is None and headers.getRawHeaders("x-cache") is None


# -- the real client names the failure -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_client_names_each_failure() -> None:
    (got, _), _ = await fetch_from(head_of(5000), max_header_bytes=4096)
    assert (got.detail, got.status) == ("too-large", None)  # type: ignore[attr-defined]
    (got, _), _ = await fetch_from(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx")
    assert (got.detail, got.status) == ("bad-response", None)  # type: ignore[attr-defined]
    (got, _), _ = await fetch_from(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 5_000_000)
    assert isinstance(got, BodyTooLarge)
    assert (got.detail, got.status) == ("too-large", 200)
    (got, _), _ = await fetch_from(b"HELLO\r\n\r\n")
    assert (got.detail, got.status) == ("bad-response", None)  # type: ignore[attr-defined]
    (got, _), _ = await fetch_from(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)
    assert (got.detail, got.status) == ("connection-closed", 200)  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_named() -> None:
    client = UpstreamClient(reactor, f"http://127.0.0.1:{free_port()}", 5.0, 1000, 4, 8)
    with pytest.raises(UpstreamUnreachable) as e:
        await client.fetch("/a", [], tenant="acme")
    assert e.value.detail == "connection-refused"
    await client.close()


def test_the_daemon_answers_a_refused_upstream_with_its_cache_status(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(upstream_url=f"http://127.0.0.1:{free_port()}")
    r = d.get("/server/object(1)/header")
    assert r.status == 502
    assert r.headers["x-cache"] == "MISS"
    assert r.headers["cache-status"] == "apicache; fwd=uri-miss; detail=connection-refused"
    assert logged(d, 502)["x_cache"] == "MISS"


def logged(d: Daemon, status: int) -> dict[str, Any]:
    """Return the daemon's last access line of ``status`` (written in batches)."""
    for _ in range(50):
        found = [e for e in d.log_lines() if e.get("status") == status]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no access line with status {status}")


def test_the_daemon_logs_a_401_with_the_client_address(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(b"GET /server/object(1)/header HTTP/1.1\r\nHost: x\r\norg_id: t1\r\n\r\n")
        s.settimeout(5)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 401 ")
    body = got.partition(b"\r\n\r\n")[2]
    line = logged(d, 401)
    assert (line["client"], line["bytes"]) == ("127.0.0.1", len(body))
    assert line["duration_ms"] >= 0

