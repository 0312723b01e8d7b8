"""
Version 3's caching rules through the real daemon (twistd) in front of the
loopback demo upstream (issue 20, SPEC.md section 3): the fields the
upstream's ``Connection`` names never reach callers (Twisted's client keeps
that field apart), ``Set-Cookie`` on answers not stored, a 301 stored for
its ``max-age``, a stored ``no-cache`` answer never served stale when the
upstream drops the connection, byte ranges and ``only-if-cached``.
"""

from __future__ import annotations

PATH = "/server/object(42)/header"
UP = "/api/object(42)/header"
JSON = {"Content-Type": "application/json"}


def route(**kw):
    r = {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 300}
    r.update(kw)
    return {"routes": [r]}


def test_fields_named_by_the_upstreams_connection_never_reach_callers(make_daemon, upstream):
    """RFC 9110 section 7.6.1; SPEC.md section 3 (v3): on misses and hits alike."""
    hop = {"Connection": "X-Hop, Keep-Alive", "X-Hop": "secret", "Keep-Alive": "timeout=5"}
    upstream.set(UP, body=b"{}", headers={**JSON, **hop, "X-End": "1"})
    d = make_daemon()
    for expected in ("MISS", "HIT"):
        r = d.get(PATH)
        assert (r.status, r.cache) == (200, expected)
        assert r.headers["x-end"] == "1"
        assert "x-hop" not in r.headers and "keep-alive" not in r.headers
    assert upstream.calls(UP) == 1


def test_set_cookie_is_passed_on_when_not_stored_and_never_stored(make_daemon, upstream):
    """SPEC.md section 3 (v3): a login would otherwise lose its cookie."""
    upstream.set(UP, body=b"{}", headers={**JSON, "Set-Cookie": "sid=abc; HttpOnly"})
    d = make_daemon()
    for _ in range(2):
        r = d.get(PATH)
        assert (r.status, r.cache) == (200, "MISS")
        assert r.headers["set-cookie"] == "sid=abc; HttpOnly"
        assert r.headers["cache-status"].endswith("detail=set-cookie")
    assert upstream.calls(UP) == 2


def test_a_301_with_max_age_is_stored(make_daemon, upstream):
    """SPEC.md section 3 (v3), storable statuses; issue 20: it was fetched every time."""
    upstream.set(UP, status=301, body=b"", headers={"Location": "/elsewhere", "Cache-Control": "max-age=3600"})
    d = make_daemon(route(freshness="upstream"))
    assert (d.get(PATH).status, d.get(PATH).cache) == (301, "HIT")
    assert upstream.calls(UP) == 1


def test_a_no_cache_answer_is_never_served_stale_on_a_dropped_connection(make_daemon, upstream):
    """RFC 9111 section 5.2.2.4; issue 20 item 10: even with stale_if_error set."""
    upstream.set(UP, body=b'{"v": 1}', headers={**JSON, "ETag": '"v1"', "Cache-Control": "no-cache, max-age=60"})
    d = make_daemon(route(freshness="upstream", stale_if_error=300))
    assert d.get(PATH).cache == "MISS"
    upstream.set(UP, drop=True)
    r = d.get(PATH)
    assert r.status == 502 and r.cache != "STALE"
    # the same answer without no-cache is served stale
    upstream.set(UP, body=b'{"v": 2}', headers={**JSON, "ETag": '"v2"', "Cache-Control": "max-age=0"})
    assert d.get(PATH).cache == "MISS"
    upstream.set(UP, drop=True)
    r = d.get(PATH)
    assert (r.status, r.cache, r.body) == (200, "STALE", b'{"v": 2}')


def test_a_range_is_answered_from_the_stored_answer(make_daemon, upstream):
    """RFC 9110 section 14; SPEC.md section 3 (v3)."""
    upstream.set(UP, body=b"0123456789", headers={"Content-Type": "text/plain", "ETag": '"r"'})
    d = make_daemon()
    r = d.get(PATH, range="bytes=3-5")
    assert (r.status, r.cache, r.body, r.headers["content-range"]) == (206, "MISS", b"345", "bytes 3-5/10")
    assert "range" not in upstream.seen[-1].headers
    r = d.get(PATH, range="bytes=-2")
    assert (r.status, r.cache, r.body) == (206, "HIT", b"89")
    assert d.get(PATH, range="bytes=10-").status == 416
    assert d.get(PATH).body == b"0123456789"
    assert upstream.calls(UP) == 1


def test_only_if_cached_never_calls_the_upstream(make_daemon, upstream):
    """RFC 9111 section 5.2.1.7; SPEC.md sections 3 and 4 (v3)."""
    d = make_daemon()
    r = d.get(PATH, cache_control="only-if-cached")
    assert (r.status, r.cache, r.headers["cache-status"]) == (504, "MISS", "apicache; detail=not-cached")
    assert r.json()["error"] == "not_cached"
    assert upstream.calls(UP) == 0
    assert d.get(PATH).cache == "MISS"
    assert d.get(PATH, cache_control="only-if-cached").cache == "HIT"
    assert upstream.calls(UP) == 1
