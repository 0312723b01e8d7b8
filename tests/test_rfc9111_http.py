"""
Version 3's caller-side rules on the bytes of the wire (issue 20 items 8
and 9, SPEC.md section 3): byte ranges answered from a stored 200, and
``Cache-Control: only-if-cached``; a real ApiSite over a StringTransport,
the fast hit path and the Klein route alike.
"""

from __future__ import annotations

import json

from apicache.testing import InMemoryAPI as Wire
from apicache.upstream.client import UpstreamResponse

K1 = (b"api-key", b"k1")
T1 = (b"org_id", b"t1")
BODY = b"0123456789abcdefghij"
ETAG = b'"r1"'
LM = b"Sun, 06 Nov 1994 08:49:37 GMT"


def answer(path, headers):
    return UpstreamResponse(
        200,
        [(b"content-type", b"text/plain"), (b"etag", ETAG), (b"last-modified", LM), (b"x-total-count", b"20")],
        BODY,
    )


def wire():
    w = Wire()
    w.upstream.auto = answer
    return w


def get(w, *extra, method=b"GET"):
    return w.get(headers=(K1, T1, *extra), method=method)


# -- 8. ranges (RFC 9110 section 14, SPEC.md section 3) ----------------------


def test_one_range_of_a_stored_200_is_answered_206_from_the_entry():
    """RFC 9110 sections 14.2 and 15.3.7."""
    w = wire()
    get(w)
    before = w.klein.calls
    status, fields, body = get(w, (b"range", b"bytes=2-5"))
    assert (status, body) == (206, b"2345")
    assert fields[b"content-range"] == b"bytes 2-5/20"
    assert fields[b"content-length"] == b"4"
    assert (fields[b"x-cache"], fields[b"etag"], fields[b"x-total-count"]) == (b"HIT", ETAG, b"20")
    assert fields[b"cache-status"].startswith(b"apicache;hit;ttl=")
    # answered by the fast path, and never by the upstream
    assert w.klein.calls == before
    assert len(w.upstream.fetched) == 1
    assert get(w, (b"range", b"bytes=-3"))[2] == b"hij"
    assert get(w, (b"range", b"bytes=15-"))[2] == b"fghij"
    assert get(w, (b"range", b"bytes=18-99"))[1][b"content-range"] == b"bytes 18-19/20"


def test_a_range_past_the_end_is_416_without_a_body():
    """RFC 9110 section 15.5.17."""
    w = wire()
    get(w)
    status, fields, body = get(w, (b"range", b"bytes=20-"))
    assert (status, body) == (416, b"")
    assert fields[b"content-range"] == b"bytes */20"
    assert fields[b"content-length"] == b"0"
    assert b"content-type" not in fields


def test_several_ranges_or_an_if_range_that_does_not_hold_get_the_whole_200():
    """SPEC.md section 3 (v3); RFC 9110 section 13.1.5 (If-Range, strong comparison)."""
    w = wire()
    get(w)
    for extra in (
        [(b"range", b"bytes=0-1, 4-5")],
        [(b"range", b"items=0-1")],
        [(b"range", b"bytes=0-1"), (b"if-range", b'"other"')],
        [(b"range", b"bytes=0-1"), (b"if-range", b'W/"r1"')],
        [(b"range", b"bytes=0-1"), (b"if-range", b"Sun, 06 Nov 1994 08:49:38 GMT")],
    ):
        status, fields, body = get(w, *extra)
        assert (status, body) == (200, BODY), extra
        assert b"content-range" not in fields
    assert get(w, (b"range", b"bytes=0-1"), (b"if-range", ETAG))[0] == 206
    assert get(w, (b"range", b"bytes=0-1"), (b"if-range", LM))[0] == 206


def test_a_miss_fetches_the_whole_answer_without_range_stores_it_and_answers_the_range():
    """SPEC.md section 3 (v3)."""
    w = wire()
    status, fields, body = get(w, (b"range", b"bytes=0-3"))
    assert (status, body, fields[b"x-cache"]) == (206, b"0123", b"MISS")
    assert fields[b"cache-status"] == b"apicache;fwd=uri-miss;fwd-status=200;stored"
    assert all(name not in (b"range", b"if-range") for name, _ in w.upstream.fetched[0].headers)
    status, fields, body = get(w)
    assert (status, fields[b"x-cache"], body) == (200, b"HIT", BODY)
    assert len(w.upstream.fetched) == 1


def test_head_and_conditions_come_before_the_range():
    """RFC 9110 sections 13.2.2 and 14.2 (HEAD ignores Range)."""
    w = wire()
    get(w)
    assert get(w, (b"range", b"bytes=0-3"), (b"if-none-match", ETAG))[0] == 304
    status, fields, body = get(w, (b"range", b"bytes=0-3"), method=b"HEAD")
    assert (status, fields[b"content-length"], body) == (200, b"20", b"")


def test_an_answer_not_stored_is_sent_whole():
    w = wire()
    w.upstream.auto = lambda path, headers: UpstreamResponse(
        200, [(b"content-type", b"text/plain"), (b"cache-control", b"no-store")], BODY
    )
    status, fields, body = get(w, (b"range", b"bytes=0-3"))
    assert (status, body) == (200, BODY)


# -- 9. only-if-cached (RFC 9111 section 5.2.1.7) ----------------------------


def test_only_if_cached_with_nothing_stored_is_504_not_cached_without_an_upstream_call():
    """SPEC.md sections 3 and 4 (v3)."""
    w = wire()
    status, fields, body = get(w, (b"cache-control", b"only-if-cached"))
    assert status == 504
    assert json.loads(body)["error"] == "not_cached"
    assert fields[b"x-cache"] == b"MISS"
    assert fields[b"cache-status"] == b"apicache; detail=not-cached"
    assert fields[b"content-type"] == b"application/json"
    assert not w.upstream.fetched


def test_only_if_cached_with_a_stored_answer_is_served_from_it():
    w = wire()
    get(w)
    status, fields, body = get(w, (b"cache-control", b"max-age=0, only-if-cached"))
    assert (status, fields[b"x-cache"], body) == (200, b"HIT", BODY)
    assert get(w, (b"cache-control", b"only-if-cached"), method=b"HEAD")[0] == 200
    assert len(w.upstream.fetched) == 1


def test_only_if_cached_past_freshness_is_504_and_asks_nothing():
    w = wire()
    get(w)
    w.clock.advance(301)
    status, fields, _ = get(w, (b"cache-control", b"only-if-cached"))
    assert (status, fields[b"x-cache"]) == (504, b"MISS")
    assert len(w.upstream.fetched) == 1
    # any other request directive is ignored: the entry is fetched again
    assert get(w, (b"cache-control", b"no-cache"))[1][b"x-cache"] == b"MISS"
    assert len(w.upstream.fetched) == 2


def test_a_stored_204_is_replayed_without_content_length():
    """RFC 9110 section 8.6; SPEC.md section 3 (v3): a 204 is stored."""
    w = wire()
    w.upstream.auto = lambda path, headers: UpstreamResponse(204, [(b"x-done", b"1")], b"")
    for expected in (b"MISS", b"HIT"):
        out, _ = w.raw(b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n\r\n")
        head, _, rest = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204 ")
        assert b"\r\nX-Cache: " + expected in head and b"\r\nX-Done: 1" in head
        assert b"content-length" not in head.lower()
        assert rest == b""
    assert len(w.upstream.fetched) == 1
