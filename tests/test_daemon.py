"""
The real daemon (``twistd -n apicache``, installed as users install it) in
front of a real loopback upstream: SPEC.md sections 1, 3 and 4 end to end.

Daemons are slow to start, so one daemon serves many checks in a test.
"""

from __future__ import annotations

import gzip
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from daemon_support import API_KEY, ROUTES

from apicache.harness.launchers import free_port
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

OBJ = "/server/object({})/header"
UP_OBJ = "/api/object({})/header"
SECRET_TOKEN = "Bearer tok-3f9c2a-secret"
EXTRA = {
    "upstream": {"timeout": 2.0, "max_body_bytes": 65536},
    "routes": [*ROUTES, {"type": "short", "path": "/server/short/<id>", "upstream": "/short/{id}", "ttl": 1}],
}


def in_thread(f, *args, **kwargs):
    box = {}

    def run():
        started = time.monotonic()
        box["result"] = f(*args, **kwargs)
        box["elapsed"] = time.monotonic() - started

    t = threading.Thread(target=run, daemon=True)
    t.start()
    box["thread"] = t
    return box


def test_proxying_caching_and_passing_through(make_daemon, upstream):
    down = make_daemon(upstream_url=f"http://127.0.0.1:{free_port()}", start=False).spawn()
    d = make_daemon(EXTRA)
    down.wait_ready()

    # a slow upstream: 504 within the timeout (runs while the rest goes on)
    upstream.set(UP_OBJ.format("slow"), delay=8.0)
    slow = in_thread(d.get, OBJ.format("slow"))

    # a miss, then a hit; the caller's authorization is forwarded
    first = d.get(OBJ.format(1), authorization=SECRET_TOKEN)
    second = d.get(OBJ.format(1), authorization="Bearer other")
    assert (first.status, first.cache) == (200, "MISS")
    assert (second.status, second.cache, second.body) == (200, "HIT", first.body)
    assert second.headers["age"] in ("0", "1")
    assert second.headers["content-type"] == "application/json"
    assert upstream.calls(UP_OBJ.format(1)) == 1
    assert [s.headers["authorization"] for s in upstream.seen if s.path == UP_OBJ.format(1)] == [SECRET_TOKEN]
    assert "api-key" not in upstream.seen[0].headers and "org_id" not in upstream.seen[0].headers

    # tenants are isolated
    other = d.get(OBJ.format(1), tenant="t2", authorization=SECRET_TOKEN)
    assert (other.status, other.cache) == (200, "MISS")
    assert upstream.calls(UP_OBJ.format(1)) == 2

    # accept-language values are different entries
    de = d.get(OBJ.format(2), accept_language="de")
    en = d.get(OBJ.format(2), accept_language="en")
    de2 = d.get(OBJ.format(2), accept_language="de")
    assert (de.cache, en.cache, de2.cache) == ("MISS", "MISS", "HIT")
    assert (de.json()["accept_language"], en.json()["accept_language"]) == ("de", "en")
    assert de2.body == de.body

    # the query string is canonical: order does not matter
    q1 = d.get(OBJ.format(3) + "?b=2&a=1")
    q2 = d.get(OBJ.format(3) + "?a=1&b=2")
    assert (q1.cache, q2.cache) == ("MISS", "HIT")
    assert q1.json()["query"] == "a=1&b=2"

    # 100 concurrent misses: exactly one upstream call
    upstream.set(UP_OBJ.format("busy"), delay=1.5)
    with ThreadPoolExecutor(100) as pool:
        replies = list(pool.map(lambda _: d.get(OBJ.format("busy")), range(100)))
    # (a caller slower than the upstream's 1.5 s would get a HIT: fine too)
    assert {r.status for r in replies} == {200}
    assert [r.cache for r in replies].count("MISS") > 1
    assert len({r.body for r in replies}) == 1
    assert upstream.calls(UP_OBJ.format("busy")) == 1

    # a 401 for the leader is not given to the waiters
    upstream.set(UP_OBJ.format("auth"), delay=1.0, require_authorization="Bearer good")
    leader = in_thread(d.get, OBJ.format("auth"), authorization="Bearer bad")
    wait_until(lambda: upstream.calls(UP_OBJ.format("auth")) == 1, 10.0, 0.01, "the upstream to be called")
    with ThreadPoolExecutor(5) as pool:
        waiters = list(pool.map(lambda _: d.get(OBJ.format("auth"), authorization="Bearer good"), range(5)))
    leader["thread"].join(10)
    assert leader["result"].status == 401
    assert leader["result"].headers.get("www-authenticate") == "Bearer"
    assert [r.status for r in waiters] == [200] * 5

    # 503 is passed through and not stored
    upstream.set(UP_OBJ.format("down"), status=503, body=b'{"busy": true}')
    for _ in range(2):
        r = d.get(OBJ.format("down"))
        assert (r.status, r.cache, r.body) == (503, "MISS", b'{"busy": true}')
    assert upstream.calls(UP_OBJ.format("down")) == 2

    # Set-Cookie and no-store answers are not stored; (v3) an answer that
    # is not stored passes its Set-Cookie on to the caller that fetched it
    upstream.set(UP_OBJ.format("cookie"), headers={"Content-Type": "application/json", "Set-Cookie": "s=1"})
    upstream.set(UP_OBJ.format("nostore"), headers={"Content-Type": "application/json", "Cache-Control": "no-store"})
    for name, cookie in (("cookie", "s=1"), ("nostore", None)):
        for _ in range(2):
            r = d.get(OBJ.format(name))
            assert (r.status, r.cache) == (200, "MISS")
            assert r.headers.get("set-cookie") == cookie
        assert upstream.calls(UP_OBJ.format(name)) == 2

    # SPEC.md section 3 (v2): every end-to-end header is replayed; a gzip
    # answer is stored for callers that admit gzip
    gzipped = gzip.compress(b"plain")
    upstream.set(
        UP_OBJ.format("headers"),
        headers={
            "Content-Type": "text/plain",
            "Content-Encoding": "gzip",
            "ETag": '"v1"',
            "Content-Language": "de",
            "Last-Modified": "Tue, 01 Sep 2026 10:00:00 GMT",
            "X-Internal": "1",
        },
        body=gzipped,
    )
    for cache in ("MISS", "HIT"):
        r = d.get(OBJ.format("headers"), accept_encoding="gzip")
        assert (r.cache, r.body, r.headers["content-type"], r.headers["etag"]) == (cache, gzipped, "text/plain", '"v1"')
        assert (r.headers["content-language"], r.headers["content-encoding"]) == ("de", "gzip")
        assert r.headers["last-modified"] == "Tue, 01 Sep 2026 10:00:00 GMT"
        assert r.headers["x-internal"] == "1"

    # a redirect is passed through, not followed
    upstream.set(UP_OBJ.format("moved"), status=302, headers={"Location": upstream.url + "/api/elsewhere"}, body=b"")
    r = d.get(OBJ.format("moved"))
    assert (r.status, r.headers["location"]) == (302, upstream.url + "/api/elsewhere")
    assert upstream.calls("/api/elsewhere") == 0

    # an oversized body is a 502
    upstream.set(UP_OBJ.format("big"), body=b"x" * 200_000)
    r = d.get(OBJ.format("big"))
    assert (r.status, r.json()["error"]) == (502, "upstream_unreachable")

    # a connection dropped without an answer is a 502
    upstream.set(UP_OBJ.format("drop"), drop=True)
    r = d.get(OBJ.format("drop"))
    assert (r.status, r.json()["error"]) == (502, "upstream_unreachable")

    # the upstream down: 502
    r = down.get(OBJ.format(1))
    assert (r.status, r.json()["error"]) == (502, "upstream_unreachable")

    # TTL expiry
    assert d.get("/server/short/1").cache == "MISS"
    assert d.get("/server/short/1").cache == "HIT"
    time.sleep(1.1)
    assert d.get("/server/short/1").cache == "MISS"

    slow["thread"].join(15)
    assert (slow["result"].status, slow["result"].json()["error"]) == (504, "upstream_timeout")
    # wall clock: the real daemon's 2 s upstream timeout, seen from outside it
    assert 1.9 < slow["elapsed"] < 6.0

    # GET / reports what is held
    info = d.request("GET", "/").json()
    assert info["service"] == "apicache" and info["entries"] >= 5 and info["tenants"] == 2

    # logs: JSON lines; neither the token nor the api-key appears
    lines = d.log_lines()
    access = [x for x in lines if x.get("method") == "GET" and x.get("route") == "object"]
    assert access and {"tenant", "status", "cache", "duration_ms", "time", "level", "message"} <= set(access[0])
    assert SECRET_TOKEN not in d.logs() and "tok-3f9c2a" not in d.logs()
    assert API_KEY not in d.logs()
    assert d.stop() in (0, -15)
    assert down.stop() in (0, -15)


def test_delete_drops_one_tenant_every_tenant_or_everything(make_daemon, upstream):
    d = make_daemon()

    def fill():
        for tenant in ("t1", "t2"):
            for lang in ("de", "en"):
                assert d.get(OBJ.format(7), tenant=tenant, accept_language=lang).status == 200
            d.get("/server/templates/9", tenant=tenant)

    def cached(path, tenant, lang="de"):
        return d.get(path, tenant=tenant, accept_language=lang).cache == "HIT"

    fill()
    r = d.delete(OBJ.format(7), tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    assert not cached(OBJ.format(7), "t1")
    assert cached(OBJ.format(7), "t2") and cached(OBJ.format(7), "t2", "en")

    r = d.delete(OBJ.format(7))
    assert (r.status, r.json()) == (200, {"invalidated": 3})
    assert not cached(OBJ.format(7), "t2")

    d.request("DELETE", "/clear")
    fill()
    r = d.delete("/clear", tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 3})
    assert cached(OBJ.format(7), "t2")
    r = d.delete("/clear")
    assert (r.status, r.json()) == (200, {"invalidated": 3})
    assert not cached("/server/templates/9", "t2")
    assert d.stop() in (0, -15)


def test_bad_requests_and_overload_get_json_errors(make_daemon, upstream):
    d = make_daemon({"upstream": {"max_in_flight": 1}})

    def error(method, path, headers):
        r = d.request(method, path, headers)
        return r.status, r.json()["error"]

    T = [("api-key", API_KEY), ("org_id", "t1")]
    assert error("GET", OBJ.format(1), [("org_id", "t1"), ("api-key", "nope")]) == (401, "unauthorized")
    assert d.request("GET", "/nowhere", [("api-key", "nope")]).status == 401
    assert error("GET", "/nowhere", [("api-key", API_KEY)]) == (404, "no_route")
    assert error("GET", OBJ.format(1), [("api-key", API_KEY)]) == (400, "missing_tenant")
    assert error("GET", OBJ.format(1), [("api-key", API_KEY), ("org_id", "bad tenant!")]) == (400, "invalid_tenant")
    assert error("GET", OBJ.format(1), [*T, ("org_id", "t2")]) == (400, "duplicate_header")
    assert error("GET", OBJ.format(1), [*T, ("api-key", API_KEY)]) == (400, "duplicate_header")
    assert error("GET", "/server/templates/..%2F..%2Fadmin", T) == (400, "invalid_parameter")
    assert error("GET", "/server/templates/%252e%252e", T) == (400, "invalid_parameter")
    assert error("GET", OBJ.format(1) + "?q=" + "x" * 2100, T) == (400, "invalid_query")
    assert error("POST", OBJ.format(1), T) == (405, "method_not_allowed")
    assert d.request("GET", "/healthz", [("api-key", "nope")]).status == 200
    assert d.request("GET", "/readyz").json() == {"ready": True}
    assert b"apicache_" in d.request("GET", "/metrics").body
    assert upstream.calls() == 0
    for line in d.log_lines():
        assert isinstance(line, dict) and {"time", "level", "message"} <= set(line)

    # max_in_flight fetches running: the next miss is 503 overloaded
    upstream.set(UP_OBJ.format("slow"), delay=1.0)
    slow = in_thread(d.get, OBJ.format("slow"))
    wait_until(lambda: upstream.calls(UP_OBJ.format("slow")) == 1, 10.0, 0.01, "the upstream to be called")
    assert error("GET", OBJ.format(2), T) == (503, "overloaded")
    slow["thread"].join(10)
    assert slow["result"].status == 200
    assert d.get(OBJ.format(2)).status == 200

    # a caller that disconnects does not cancel the fetch: it is stored
    upstream.set(UP_OBJ.format("gone"), delay=1.0)
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        s.sendall(f"GET {OBJ.format('gone')} HTTP/1.1\r\nHost: x\r\napi-key: {API_KEY}\r\norg_id: t1\r\n\r\n".encode())
        wait_until(lambda: upstream.calls(UP_OBJ.format("gone")) == 1, 10.0, 0.01, "the upstream to be called")
    time.sleep(0.2)
    r = d.get(OBJ.format("gone"))
    assert (r.status, upstream.calls(UP_OBJ.format("gone"))) == (200, 1)
    assert d.get(OBJ.format("gone")).cache == "HIT"


def refused(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sigterm_stops_accepting_and_lets_a_request_in_flight_finish(make_daemon, upstream):
    d = make_daemon()
    # a body too big to leave in one write: it must all reach the caller
    body = b"x" * 8_000_000
    upstream.set(UP_OBJ.format("slow"), delay=1.5, body=body)
    pending = in_thread(d.get, OBJ.format("slow"))
    wait_until(lambda: upstream.calls(UP_OBJ.format("slow")) == 1, 10.0, 0.01, "the upstream to be called")
    d.proc.send_signal(signal.SIGTERM)
    # draining: no longer accepting, still running (wall clock: the real
    # daemon closes its port soon after SIGTERM, well before it exits)
    wait_until(lambda: refused(d.port), 1.5, 0.01, "the port to refuse connections")
    assert d.proc.poll() is None
    pending["thread"].join(10)
    assert (pending["result"].status, pending["result"].cache) == (200, "MISS")
    assert pending["result"].body == body
    assert d.stop() in (0, -15)


def test_built_in_defaults_start_without_routes(tmp_path, upstream):
    from apicache.harness.launchers import Daemon

    d = Daemon(None, cwd=str(tmp_path), env={"PORT": ""}).start()
    try:
        assert d.request("GET", "/healthz").status == 200
        assert d.request("GET", "/").status == 200
        assert d.request("GET", OBJ.format(1), [("org_id", "t1")]).json()["error"] == "no_route"
        assert any("no routes are configured" in line["message"] for line in d.log_lines())
    finally:
        assert d.stop() in (0, -15)


def test_shipped_example_is_found_in_the_working_directory(tmp_path, upstream):
    import shutil
    from pathlib import Path

    from apicache.harness.launchers import Daemon

    shutil.copy(Path(__file__).resolve().parent.parent / "apicache.toml", tmp_path / "apicache.toml")
    env = {"APICACHE_API_KEY": "example-key", "APICACHE_UPSTREAM_URL": upstream.url, "PORT": "", "VCAP_SERVICES": ""}
    d = Daemon(None, cwd=str(tmp_path), env=env, api_key="example-key").start()
    try:
        assert d.get("/server/object(1)/header").cache == "MISS"
        assert d.get("/server/object(1)/header").cache == "HIT"
        assert d.get("/server/templates/abc").status == 200
        assert [s.path for s in upstream.seen] == ["/object(1)/header", "/templates/abc"]
    finally:
        assert d.stop() in (0, -15)
