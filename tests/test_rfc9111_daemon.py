"""
The real daemon (twistd) in front of the loopback demo upstream: a 304
answered from the cache, revalidation answered ``REVALIDATED``, Vary and
Accept-Encoding, stale-while-revalidate (SPEC.md section 3, v2).
"""

from __future__ import annotations

import gzip
import time

import pytest

from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

PATH = "/server/object(42)/header"
UP = "/api/object(42)/header"


def route(**kw):
    r = {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 300}
    r.update(kw)
    return {"routes": [r]}


def test_etag_304_from_the_cache_and_revalidated(make_daemon, upstream):
    upstream.set(UP, body=b'{"v": 1}', headers={"Content-Type": "application/json", "ETag": '"v1"', "X-Total-Count": "7"})
    d = make_daemon(route(ttl=0.5, keep=60))
    first = d.get(PATH)
    assert (first.status, first.cache) == (200, "MISS")
    assert first.headers["x-total-count"] == "7"
    assert first.headers["cache-status"] == "apicache;fwd=uri-miss;fwd-status=200;stored"
    cond = d.get(PATH, if_none_match='"v1"')
    assert (cond.status, cond.body, cond.cache) == (304, b"", "HIT")
    assert "x-total-count" not in cond.headers
    assert all(not k.startswith("if-") for k in upstream.seen[-1].headers)
    time.sleep(0.6)
    again = d.get(PATH)
    assert (again.status, again.cache, again.body) == (200, "REVALIDATED", b'{"v": 1}')
    assert again.headers["cache-status"] == "apicache;fwd=stale;fwd-status=304"
    assert upstream.seen[-1].headers["if-none-match"] == '"v1"'
    assert d.get(PATH).cache == "HIT"
    assert upstream.calls(UP) == 2


def test_vary_and_accept_encoding(make_daemon, upstream):
    packed = gzip.compress(b'{"v": 1}')
    upstream.set(
        UP,
        body=packed,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip", "Vary": "Origin, Accept-Encoding"},
    )
    d = make_daemon()
    r = d.get(PATH, accept_encoding="br, gzip;q=0.8")
    assert (r.cache, r.body) == ("MISS", packed)
    assert upstream.seen[-1].headers["accept-encoding"] == "gzip"
    r = d.get(PATH, accept_encoding="gzip")
    assert (r.cache, r.body, r.headers["content-encoding"]) == ("HIT", packed, "gzip")
    assert r.headers["vary"] == "Origin, Accept-Encoding"
    # asked for identity, got gzip: passed through, not stored
    plain = d.get(PATH)
    assert plain.cache == "MISS" and plain.headers["cache-status"].endswith("detail=encoding")
    assert upstream.seen[-1].headers["accept-encoding"] == "identity"
    assert d.get(PATH).cache == "MISS"


def test_stale_while_revalidate(make_daemon, upstream):
    d = make_daemon(route(ttl=0.5, stale_while_revalidate=30))
    assert d.get(PATH).cache == "MISS"
    time.sleep(0.6)
    stale = d.get(PATH)
    assert stale.cache == "STALE" and stale.headers["cache-status"].startswith("apicache;hit;ttl=-")
    wait_until(lambda: upstream.calls(UP) == 2, 5.0, 0.05, "the background revalidation to reach the upstream")
    wait_until(lambda: d.get(PATH).cache == "HIT", 5.0, 0.05, "the revalidated entry to be a hit")
    assert upstream.calls(UP) == 2
