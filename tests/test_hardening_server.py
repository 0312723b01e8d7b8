"""
Regression tests of issue 10 on the wire, in-process (a real ApiSite over a
StringTransport, a task.Clock): nothing read before the api-key and the
declared length are checked (finding 2), connection limits and deadlines
(finding 4), JSON answers to what twisted.web refuses itself (finding 10),
and admin keys (SPEC.md sections 2 and 4).
"""

from __future__ import annotations

import json

import pytest
from http_support import KEY, OBJ, App, error_of, result
from http_support import sync_case as _tc
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from apicache.http.api import CacheAPI
from apicache.http.channel import ConnectionLimits, connection_limit
from apicache.testing import OBJECT_ROUTE
from apicache.testing import InMemoryAPI as Wire
from apicache.testing import parse_response as parse

K1 = (b"api-key", b"k1")
T1 = (b"org_id", b"t1")


def LimitedWire(server=None, routes=(OBJECT_ROUTE,), **limits):
    """L{Wire} whose site checks keys and limits as the daemon's does."""
    return Wire(server=server, routes=routes, check_keys=True, limits=ConnectionLimits(**limits))


def head(method=b"POST", path=b"/server/object(42)/header", headers=()):
    return b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, path, b"".join(b"%s: %s\r\n" % h for h in headers))


def answer_error(out: bytes):
    status, fields, body = parse(out)
    assert fields[b"content-type"] == b"application/json"
    return status, json.loads(body)["error"]


# -- finding 2: nothing is read before the key and the declared length --------


def test_keyless_100_continue_with_a_1_gb_body_gets_401_and_no_100_continue():
    w = LimitedWire()
    out, transport = w.raw(head(headers=((b"Content-Length", b"1073741824"), (b"Expect", b"100-continue"), T1)))
    assert b"100 Continue" not in out
    assert answer_error(out) == (401, "unauthorized")
    assert parse(out)[1][b"connection"] == b"close"
    assert transport.disconnecting
    assert w.klein.calls == 0


def test_keyless_body_is_never_buffered():
    w = LimitedWire()
    protocol, transport = w.connect()
    protocol.dataReceived(head(headers=((b"Content-Length", b"209715200"), T1)))
    request = protocol.requests[0]
    for _ in range(100):  # 100 x 64 KiB arriving after the answer
        protocol.dataReceived(b"x" * 65536)
    assert answer_error(transport.value()) == (401, "unauthorized")
    assert transport.disconnecting
    # no body file (twisted.web's temp file over 100 KB) was ever opened
    assert getattr(request, "content", None) is None
    assert w.klein.calls == 0


def test_wrong_key_is_refused_before_the_body_too():
    w = LimitedWire()
    out, transport = w.raw(head(headers=((b"Content-Length", b"5"), (b"api-key", b"nope"), T1)) + b"hello")
    assert answer_error(out) == (401, "unauthorized")
    assert transport.disconnecting


def test_declared_body_over_the_limit_is_413_before_100_continue():
    w = LimitedWire(max_body_bytes=1000)
    out, transport = w.raw(head(headers=((b"Content-Length", b"1001"), (b"Expect", b"100-continue"), K1, T1)))
    assert b"100 Continue" not in out
    assert answer_error(out) == (413, "body_too_large")
    assert transport.disconnecting
    assert w.klein.calls == 0


def test_100_continue_is_sent_once_the_checks_pass():
    w = LimitedWire(max_body_bytes=1000)
    out, transport = w.raw(head(headers=((b"Content-Length", b"1000"), (b"Expect", b"100-continue"), K1, T1)))
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not transport.disconnecting


def chunked(*sizes: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (n, b"y" * n) for n in sizes) + b"0\r\n\r\n"


def test_chunked_body_over_the_limit_is_413_while_read():
    w = LimitedWire(max_body_bytes=1000)
    protocol, transport = w.connect()
    protocol.dataReceived(head(headers=((b"Transfer-Encoding", b"chunked"), K1, T1)))
    request = protocol.requests[0]
    protocol.dataReceived(b"%x\r\n%s\r\n" % (600, b"y" * 600))
    assert transport.value() == b""
    protocol.dataReceived(b"%x\r\n%s\r\n" % (600, b"y" * 600))
    assert answer_error(transport.value()) == (413, "body_too_large")
    assert transport.disconnecting
    assert request.content.tell() <= 1000
    protocol.dataReceived(chunked(5000))
    assert request.content.tell() <= 1000
    assert w.klein.calls == 0


def test_chunked_body_within_the_limit_is_read():
    w = LimitedWire(max_body_bytes=1000)
    out, transport = w.raw(head(headers=((b"Transfer-Encoding", b"chunked"), K1, T1)) + chunked(500, 500))
    assert parse(out)[0] == 405  # read in full, then routed: POST is not allowed here
    assert w.klein.calls == 1


def test_health_needs_no_key_but_its_body_is_still_bounded():
    w = LimitedWire(max_body_bytes=10)
    out, _ = w.raw(head(method=b"GET", path=b"/healthz"))
    assert parse(out)[0] == 200
    out, _ = w.raw(head(method=b"GET", path=b"/healthz", headers=((b"Content-Length", b"11"),)))
    assert answer_error(out) == (413, "body_too_large")


def test_duplicate_key_is_refused_before_the_body():
    w = LimitedWire()
    out, transport = w.raw(head(headers=((b"Content-Length", b"100000000"), K1, K1, T1)))
    assert answer_error(out) == (400, "duplicate_header")
    assert transport.disconnecting


def test_head_request_refused_gets_no_body():
    w = LimitedWire()
    out, _ = w.raw(head(method=b"HEAD", headers=(T1,)))
    status, fields, body = parse(out)
    assert (status, body) == (401, b"")
    assert int(fields[b"content-length"]) > 0


# -- finding 4: header deadline, idle timeout, connection limit ------------------


def test_slowloris_is_cut_at_the_header_timeout():
    """One byte every 2 s keeps resetting the idle timeout, not the header deadline."""
    w = LimitedWire(header_timeout=10.0, idle_timeout=120.0)
    protocol, transport = w.connect()
    data = head(method=b"GET", headers=(K1, T1))
    for byte in data[:5]:  # at 0, 2, 4, 6 and 8 s
        assert not transport.disconnecting
        protocol.dataReceived(bytes([byte]))
        w.clock.advance(2.0 if byte != data[4] else 1.9)
    assert not transport.disconnecting
    w.clock.advance(0.2)
    assert transport.disconnecting
    assert w.site.counters["head_timeouts"] == 1


def test_header_deadline_counts_from_the_first_byte_of_each_request():
    w = LimitedWire(header_timeout=10.0, idle_timeout=120.0)
    protocol, transport = w.connect()
    w.clock.advance(9)  # (v3) the first byte too must come within header_timeout
    assert not transport.disconnecting
    protocol.dataReceived(head(method=b"GET", headers=(K1, T1)))
    assert parse(transport.value())[0] == 200
    transport.clear()
    w.clock.advance(60)
    protocol.dataReceived(b"GET /server/obj")
    w.clock.advance(9.9)
    assert not transport.disconnecting
    protocol.dataReceived(b"ect(42)/header HTTP/1.1\r\napi-key: k1\r\norg_id: t1\r\n\r\n")
    assert parse(transport.value())[0] == 200
    w.clock.advance(5)
    assert not transport.disconnecting


def test_idle_keep_alive_connection_is_closed_after_idle_timeout():
    w = LimitedWire(header_timeout=10.0, idle_timeout=30.0)
    protocol, transport = w.connect()
    protocol.dataReceived(head(method=b"GET", headers=(K1, T1)))
    assert parse(transport.value())[0] == 200
    w.clock.advance(29.9)
    assert not transport.disconnecting
    w.clock.advance(0.2)
    assert transport.disconnecting


def test_connections_past_max_connections_are_closed_at_once():
    w = LimitedWire(max_connections=2)
    addr = IPv4Address("TCP", "127.0.0.1", 40000)
    first, second = w.connect(), w.connect()
    assert w.site.buildProtocol(addr) is None
    assert w.site.counters["connections_refused"] == 1
    first[0].connectionLost(None)
    assert w.site.buildProtocol(addr) is not None
    assert second[1].disconnecting is False


def test_max_connections_default_is_80_percent_of_the_open_file_limit():
    assert connection_limit(0, 1024) == 819
    assert connection_limit(0, 256) == 204
    assert connection_limit(50, 1024) == 50


# -- finding 10: what twisted.web refuses gets the JSON error --------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET /server/object(\xff)/header HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n",
        b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(600)) + b"\r\n",
        b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
        b"GET /server/object(42)/header HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /x HTTP/1.1\r\napi-key: k1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["non-ascii path", "nul in header", "header line too long", "head too large", "too many headers",
         "no colon", "bad version", "bad length", "bad chunk"],
)
def test_requests_twisted_web_refuses_get_the_json_error(data):
    w = LimitedWire()
    out, transport = w.raw(data)
    assert answer_error(out) == (400, "bad_request")
    assert transport.disconnecting


# -- admin keys --------------------------------------------------------------------

ADMIN = {"api-key": "adm"}


@pytest.fixture
def admin_app():
    return App(server={"admin_api_keys": ["adm"]})


@pytest.mark.parametrize("method, url", [("DELETE", OBJ), ("DELETE", "http://x/clear")])
def test_purge_of_every_tenant_needs_an_admin_key(admin_app, method, url):
    tc = _tc()
    assert error_of(tc, admin_app.request(method, url, headers=KEY)) == (403, "admin_required")
    code, _, body = result(tc, admin_app.request(method, url, headers=ADMIN))
    assert (code, set(json.loads(body))) == (200, {"invalidated"})


@pytest.mark.parametrize("method, url", [("DELETE", OBJ), ("DELETE", "http://x/clear")])
def test_purge_of_one_tenant_needs_no_admin_key(admin_app, method, url):
    code, _, _ = result(_tc(), admin_app.request(method, url, headers={**KEY, "org_id": "t1"}))
    assert code == 200


def test_admin_key_is_accepted_wherever_keys_are(admin_app):
    code, headers, _ = result(_tc(), admin_app.request("GET", OBJ, headers={**ADMIN, "org_id": "t1"}))
    assert code == 200


def test_without_admin_keys_any_key_purges_every_tenant(app):
    code, _, _ = result(_tc(), app.request("DELETE", OBJ, headers=KEY))
    assert code == 200


def test_admin_keys_alone_guard_only_purges_when_anonymous_is_allowed():
    a = App(server={"api_keys": [], "allow_anonymous": True, "admin_api_keys": ["adm"]})
    tc = _tc()
    assert result(tc, a.request("GET", OBJ, headers={"org_id": "t1"}))[0] == 200
    assert error_of(tc, a.request("DELETE", OBJ)) == (403, "admin_required")
    assert result(tc, a.request("DELETE", OBJ, headers=ADMIN))[0] == 200


@pytest.fixture
def app():
    return App()


def test_api_keys_are_built_with_the_admin_keys():
    a = App(server={"admin_api_keys": ["adm"]})
    assert isinstance(a.api, CacheAPI)
    assert a.api.keys.accepts(b"adm") and a.api.keys.accepts(b"k1")
    assert a.api.keys.may_purge_every_tenant([b"adm"])
    assert not a.api.keys.may_purge_every_tenant([b"k1"])
    assert not a.api.keys.may_purge_every_tenant([b"adm", b"adm"])
    assert not a.api.keys.may_purge_every_tenant(None)


def test_a_request_refused_before_its_body_is_logged_with_its_trace_id():
    import json
    import os

    from apicache.ops.logs import AccessLog

    clock = Clock()
    clock.advance(100)
    r, fd = os.pipe()
    log = AccessLog(clock, fd=fd)
    w = Wire(clock=clock, access_log=log, check_keys=True)
    try:
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        w.raw(head(headers=((b"Content-Length", b"10"), (b"traceparent", trace.encode()), T1)))
        log.flush()
        lines = [json.loads(line) for line in os.read(r, 65536).splitlines()]
    finally:
        os.close(r)
        os.close(fd)
    [line] = [e for e in lines if e.get("status") == 401]
    assert (line["method"], line["path"], line["trace_id"]) == ("POST", "/server/object(42)/header", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert w.site.counters["requests_refused"] == 1


def test_a_refused_channel_keeps_nothing_it_read():
    w = LimitedWire()
    protocol, transport = w.connect()
    protocol.dataReceived(head(headers=((b"Content-Length", b"100000"), T1)) + b"x" * 60000)
    assert answer_error(transport.value()) == (401, "unauthorized")
    channel = protocol
    assert channel._buffer == b"" and channel._dataBuffer == []
