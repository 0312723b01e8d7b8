"""
Conditional requests and HEAD from callers (SPEC.md section 3, v2) on the
bytes of the wire: a real ApiSite over a StringTransport, the fast hit path
and the Klein route alike.
"""

from __future__ import annotations

from apicache.testing import OBJECT_BODY as BODY
from apicache.testing import OBJECT_PATH as PATH
from apicache.testing import InMemoryAPI as Wire
from apicache.testing import parse_response as parse
from apicache.upstream.client import UpstreamResponse

LM = b"Sun, 06 Nov 1994 08:49:37 GMT"
K1 = (b"api-key", b"k1")
T1 = (b"org_id", b"t1")
NOT_MODIFIED_ALLOWED = {
    b"etag",
    b"last-modified",
    b"cache-control",
    b"expires",
    b"vary",
    b"content-location",
    b"date",
    b"age",
    b"x-cache",
    b"cache-status",
}


def answer(path, headers):
    return UpstreamResponse(
        200,
        [
            (b"content-type", b"application/json"),
            (b"etag", b'"e1"'),
            (b"last-modified", LM),
            (b"cache-control", b"max-age=60"),
            (b"x-total-count", b"104"),
            (b"link", b"<http://up/api/object(43)/header>; rel=next"),
        ],
        BODY,
    )


def wire():
    w = Wire()
    w.upstream.auto = answer
    return w


def test_if_none_match_on_a_hit_is_answered_304_with_the_listed_headers_only():
    w = wire()
    assert w.get()[1][b"x-cache"] == b"MISS"
    before = w.klein.calls
    out, _ = w.raw(b"GET %s HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\nif-none-match: W/\"e1\"\r\n\r\n" % PATH)
    status, fields, body = parse(out)
    assert (status, body) == (304, b"")
    assert set(fields) <= NOT_MODIFIED_ALLOWED
    assert fields[b"etag"] == b'"e1"' and fields[b"x-cache"] == b"HIT"
    assert fields[b"cache-status"].startswith(b"apicache;hit;ttl=")
    assert b"age" in fields and b"date" in fields and b"last-modified" in fields
    # answered by the fast path
    assert w.klein.calls == before


def test_star_and_if_modified_since_match_and_a_different_tag_does_not():
    w = wire()
    w.get()
    assert w.get(headers=(K1, T1, (b"if-none-match", b"*")))[0] == 304
    assert w.get(headers=(K1, T1, (b"if-modified-since", LM)))[0] == 304
    assert w.get(headers=(K1, T1, (b"if-modified-since", b"Sun, 06 Nov 1994 08:00:00 GMT")))[0] == 200
    # If-Modified-Since is ignored with If-None-Match (RFC 9110 section 13.2.2)
    status, _, body = w.get(headers=(K1, T1, (b"if-none-match", b'"other"'), (b"if-modified-since", LM)))
    assert (status, body) == (200, BODY)


def test_on_a_miss_the_whole_answer_is_fetched_stored_then_the_condition_answered():
    w = wire()
    status, fields, _ = w.get(headers=(K1, T1, (b"if-none-match", b'"e1"')))
    assert (status, fields[b"x-cache"]) == (304, b"MISS")
    sent = w.upstream.fetched[0].headers
    assert all(not name.startswith(b"if-") for name, _ in sent)
    assert w.get()[1][b"x-cache"] == b"HIT"


def test_head_is_answered_from_the_get_entry_and_a_head_miss_stores():
    w = wire()
    status, fields, body = w.get(method=b"HEAD")
    assert (status, body, fields[b"x-cache"]) == (200, b"", b"MISS")
    assert fields[b"content-length"] == b"%d" % len(BODY)
    status, fields, body = w.get()
    assert (status, fields[b"x-cache"], body) == (200, b"HIT", BODY)
    status, fields, body = w.get(method=b"HEAD")
    assert (status, fields[b"x-cache"], body) == (200, b"HIT", b"")
    assert len(w.upstream.fetched) == 1


def test_every_end_to_end_header_and_the_upstream_date_are_replayed():
    w = wire()
    w.get()
    status, fields, _ = w.get()
    assert fields[b"x-total-count"] == b"104"
    assert fields[b"link"].startswith(b"<")
    assert fields[b"cache-control"] == b"max-age=60"
    assert fields[b"cache-status"] == b"apicache;hit;ttl=10"


def test_conditions_do_not_apply_to_answers_that_are_not_stored():
    w = wire()
    w.upstream.auto = lambda path, headers: UpstreamResponse(
        200, [(b"etag", b'"e1"'), (b"cache-control", b"no-store")], BODY
    )
    status, fields, body = w.get(headers=(K1, T1, (b"if-none-match", b'"e1"')))
    assert (status, body) == (200, BODY)
    assert fields[b"cache-status"] == b"apicache;fwd=uri-miss;fwd-status=200;detail=no-store"
