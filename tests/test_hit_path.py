"""
The fast hit path (issue 5) answers fresh hits before Klein's dispatch, and
every check stays exactly as strict as on Klein's route.
"""

from __future__ import annotations

import base64
import json

import pytest

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

PATH = "/server/object(42)/header"


def token(**claims: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"Bearer e30.{payload}.sig"


def test_hit_carries_the_stored_headers_age_and_length(make_daemon):
    d = make_daemon()
    assert d.get(PATH).cache == "MISS"
    hit = d.get(PATH)
    assert (hit.status, hit.cache) == (200, "HIT")
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["content-length"] == str(len(hit.body))
    assert "age" in hit.headers and "date" in hit.headers
    assert "transfer-encoding" not in hit.headers


def test_checks_stay_strict_on_a_cached_path(make_daemon, upstream):
    d = make_daemon()
    assert d.get(PATH).cache == "MISS"
    assert d.get(PATH).cache == "HIT"
    no_key = d.request("GET", PATH, [("org_id", "t1"), ("api-key", "wrong")])
    assert (no_key.status, no_key.json()["error"]) == (401, "unauthorized")
    twice = d.request("GET", PATH, [("org_id", "t1"), ("org_id", "t1")])
    assert (twice.status, twice.json()["error"]) == (400, "duplicate_header")
    bad = d.get(PATH, tenant="t 1")
    assert (bad.status, bad.json()["error"]) == (400, "invalid_tenant")
    missing = d.get(PATH, tenant=None)
    assert (missing.status, missing.json()["error"]) == (400, "missing_tenant")
    assert d.get(PATH, tenant="t2").cache == "MISS"
    assert d.get(PATH + "?a=1").cache == "MISS"
    assert d.get(PATH, accept_language="de").cache == "MISS"
    post = d.request("POST", PATH, [("org_id", "t1")])
    assert post.status == 405
    head = d.request("HEAD", PATH, [("org_id", "t1")])
    assert (head.status, head.body) == (200, b"")
    assert d.get(PATH).cache == "HIT"
    assert upstream.calls("/api/object(42)/header") == 4


def test_tenant_claim_is_checked_on_hits(make_daemon):
    d = make_daemon({"server": {"tenant_claim": "zid"}})
    assert d.get(PATH, authorization=token(zid="t1")).cache == "MISS"
    assert d.get(PATH, authorization=token(zid="t1")).cache == "HIT"
    other = d.get(PATH, authorization=token(zid="t2"))
    assert (other.status, other.json()["error"]) == (403, "tenant_mismatch")
    none = d.get(PATH)
    assert none.status == 403


def test_invalid_parameter_is_refused_even_after_hits(make_daemon):
    d = make_daemon()
    d.get(PATH)
    r = d.get("/server/object(..%2Fx)/header")
    assert (r.status, r.json()["error"]) == (400, "invalid_parameter")
    r = d.get("/server/object(..%2Fx)/header")
    assert (r.status, r.json()["error"]) == (400, "invalid_parameter")


def test_reserved_paths_win_over_the_hit_path(make_daemon):
    d = make_daemon()
    assert d.get("/healthz").status == 200
    assert d.get("/").json()["service"] == "apicache"


def test_the_path_memo_is_bounded_in_entries_and_length():
    from apicache.cache.routes import MEMO_PATH_BYTES, MEMO_SIZE, Router
    from apicache.config import RouteConfig

    router = Router([RouteConfig("object", "/o/<id>", "/o/{id}", params=("id",), fingerprint="f")])
    for i in range(MEMO_SIZE + 10):
        assert router.resolve(b"/o/%d" % i)[1] == (str(i),)
    assert len(router._memo) <= MEMO_SIZE
    long = b"/o/" + b"a" * (MEMO_PATH_BYTES - 2)
    assert router.resolve(long)[1] == ("a" * (MEMO_PATH_BYTES - 2),)
    assert long not in router._memo


def _raw(port: int, data: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_hits_answer_http_1_0_and_pipelined_requests(make_daemon):
    """A hit written in one go keeps HTTP/1.0 and pipelining right."""
    d = make_daemon()
    assert d.get(PATH).cache == "MISS"
    get = f"GET {PATH} HTTP/1.1\r\nHost: x\r\napi-key: test-key\r\norg_id: t1\r\n\r\n".encode()
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = _raw(d.port, get + get + last)
    answers = out.split(b"HTTP/1.1 200 OK\r\n")
    assert len(answers) == 4 and answers[0] == b""
    for a in answers[1:3]:
        head, _, body = a.partition(b"\r\n\r\n")
        assert b"X-Cache: HIT" in head
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert b'"status": "ok"' in answers[3]

    old = _raw(d.port, f"GET {PATH} HTTP/1.0\r\napi-key: test-key\r\norg_id: t1\r\n\r\n".encode())
    head, _, body = old.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"X-Cache: HIT" in head  # and the server closed the connection: _raw returned
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
