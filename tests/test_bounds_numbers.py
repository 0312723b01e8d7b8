"""
Issue 19, numbers of any length: an upstream's C{Age}, C{max-age},
C{s-maxage}, C{stale-while-revalidate} or C{stale-if-error} with hundreds
(or thousands) of digits is a delta-seconds value too large to hold, which
RFC 9111 section 1.2.2 reads as 2147483648: never a 500, and on a
pass-through write never a 500 after the write was applied.

Over StubTreq: the Klein resource with a real registry and memory store, a
fake upstream and a task.Clock.
"""

from __future__ import annotations

import pytest
from http_support import result, sync_case

from apicache.cache.policy import freshness, upstream_age
from apicache.config import RouteConfig
from apicache.testing import InMemoryAPI
from apicache.upstream.client import UpstreamResponse

HUGE = [b"9" * 400, b"1" + b"0" * 5000, b"0" * 300 + b"7"]
OBJ = "http://x/server/object(42)/header"
T1 = {"api-key": "k1", "org_id": "t1"}
UPSTREAM_ROUTES = [
    {
        "type": "object",
        "path": "/server/object(<id>)/header",
        "upstream": "/object({id})/header",
        "ttl": 10,
        "freshness": "upstream",
        "max_ttl": 600,
        "pass_methods": ["POST"],
    }
]


@pytest.mark.parametrize("digits", HUGE)
@pytest.mark.parametrize(
    "field",
    [
        (b"age", b"%s"),
        (b"cache-control", b"max-age=%s"),
        (b"cache-control", b"s-maxage=%s"),
        (b"cache-control", b"max-age=60, stale-while-revalidate=%s"),
        (b"cache-control", b"max-age=60, stale-if-error=%s"),
        (b"cdn-cache-control", b"max-age=%s"),
    ],
)
def test_an_answer_with_a_number_of_any_length_is_served_and_stored(field: tuple[bytes, bytes], digits: bytes) -> None:
    name, template = field
    fields = [(b"content-type", b"application/json"), (name, template % digits)]
    if name == b"age":
        fields.append((b"cache-control", b"max-age=60"))
    app = InMemoryAPI(routes=UPSTREAM_ROUTES)
    app.upstream.auto = lambda path, headers: UpstreamResponse(200, fields, b"{}")
    tc = sync_case()
    status, headers, _ = result(tc, app.request("GET", OBJ, T1))
    assert status == 200
    assert headers.getRawHeaders("x-cache") == ["MISS"]
    status, headers, _ = result(tc, app.request("GET", OBJ, T1))
    assert status == 200
    if name == b"age" and digits.lstrip(b"0") != b"7":
        # older than any lifetime: stored already stale, fetched again
        assert headers.getRawHeaders("x-cache") == ["MISS"]
    else:
        assert headers.getRawHeaders("x-cache") == ["HIT"]


@pytest.mark.parametrize("digits", HUGE)
def test_a_pass_through_write_with_a_huge_age_is_passed_on(digits: bytes) -> None:
    app = InMemoryAPI(routes=UPSTREAM_ROUTES)
    app.upstream.auto = lambda path, headers: UpstreamResponse(
        201, [(b"content-type", b"application/json"), (b"age", digits)], b"{}"
    )
    tc = sync_case()
    status, headers, _ = result(tc, app.request("POST", OBJ, T1))
    assert status == 201
    want = "7" if digits.lstrip(b"0") == b"7" else "2147483648"
    assert headers.getRawHeaders("age") == [want]


def test_delta_seconds_too_large_to_hold_are_2147483648() -> None:
    assert upstream_age([(b"age", b"9" * 400)]) == 2147483648
    assert upstream_age([(b"age", b"1" + b"0" * 5000)]) == 2147483648
    assert upstream_age([(b"age", b"7200, 0")]) == 7200
    assert upstream_age([(b"age", b"-1")]) is None
    assert upstream_age([(b"age", b"\xd9\xa3")]) is None  # not ASCII digits
    route = RouteConfig(
        "object", "/o/<id>", "/o/{id}", ttl=10.0, freshness="upstream", max_ttl=600.0, params=("id",), fingerprint="f"
    )
    headers = [(b"cache-control", b"max-age=%s, stale-while-revalidate=%s" % (b"9" * 400, b"9" * 400))]
    f = freshness(route, 200, headers, 100.0, 100.0)
    assert f.lifetime == 600.0
    assert f.stale_while_revalidate == 2147483648.0
