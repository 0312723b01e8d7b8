"""
The HTTP caching decisions (apicache.cache.policy): pure functions, tested
without a reactor.
"""

from __future__ import annotations

import pytest

from apicache.cache.policy import (
    HOP_BY_HOP,
    current_age,
    freshness_lifetime,
    is_fresh,
    is_storable,
    none_match,
    not_modified_since,
    not_stored_reason,
    replayed_headers,
    weak_etag_match,
)
from apicache.config import RouteConfig

VARYING = (b"authorization", b"x-correlationid", b"traceparent", b"tracestate")
ROUTE = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=30.0, params=("id",), fingerprint="f")
CT = (b"content-type", b"application/json")


# -- storable (SPEC.md section 3) ---------------------------------------------


@pytest.mark.parametrize(
    "status, headers, storable",
    [
        (200, [CT], True),
        (201, [CT], False),
        (404, [CT], False),
        (200, [(b"cache-control", b"max-age=60, no-store")], False),
        (200, [(b"cache-control", b"Private")], False),
        (200, [(b"cache-control", b"public, max-age=60")], True),
        (200, [(b"set-cookie", b"a=b")], False),
        (200, [(b"vary", b"Accept, accept-language")], True),
        (200, [(b"vary", b"accept, authorization")], False),
        (200, [(b"vary", b"*")], False),
        (200, [(b"vary", b"")], True),
    ],
)
def test_storable_follows_status_cache_control_cookies_and_vary(status, headers, storable):
    assert is_storable(status, headers, VARYING) is storable


def test_stored_answers_replay_every_end_to_end_header():
    """SPEC.md section 3 (v2): every header but the listed ones is replayed."""
    headers = [CT, (b"etag", b'"1"'), (b"location", b"/x"), (b"set-cookie", b"a"), (b"server", b"up")]
    assert replayed_headers(headers) == (CT, (b"etag", b'"1"'), (b"location", b"/x"), (b"server", b"up"))


def test_passed_answers_drop_hop_by_hop_headers_in_order():
    headers = [(b"www-authenticate", b"Bearer"), CT, (b"connection", b"close"), (b"location", b"/x")]
    assert replayed_headers(headers) == ((b"www-authenticate", b"Bearer"), CT, (b"location", b"/x"))
    assert b"connection" in HOP_BY_HOP


# -- freshness and age (RFC 9111 section 4.2) ---------------------------------


def test_lifetime_is_the_route_ttl_whatever_the_upstream_says():
    assert freshness_lifetime(ROUTE, 200, [(b"cache-control", b"max-age=5")]) == 30.0
    assert not_stored_reason(200, [CT], VARYING) is None


def test_an_entry_is_fresh_until_it_expires():
    assert is_fresh(110.0, False, 109.999)
    assert not is_fresh(110.0, False, 110.0)


def test_an_entry_marked_stale_is_never_fresh():
    assert not is_fresh(110.0, True, 100.0)


def test_age_is_seconds_since_the_fetch_and_never_negative():
    assert current_age(100.0, 107.5) == 7.5
    assert current_age(100.0, 99.0) == 0.0


# -- conditional requests (RFC 9110 section 13.1, entity-tags 8.8.3) ----------


@pytest.mark.parametrize(
    "a, b, match",
    [
        # RFC 9110 section 8.8.3.2, the comparison table
        (b'W/"1"', b'W/"1"', True),
        (b'W/"1"', b'W/"2"', False),
        (b'W/"1"', b'"1"', True),
        (b'"1"', b'"1"', True),
        (b'"1"', b'"2"', False),
        (b"1", b"1", False),  # not an entity-tag: no quotes
    ],
)
def test_weak_comparison_follows_rfc_9110_8_8_3_2(a, b, match):
    assert weak_etag_match(a, b) is match
    assert weak_etag_match(b, a) is match


@pytest.mark.parametrize(
    "header, etag, holds",
    [
        (b'"1"', b'"1"', False),  # section 13.1.2: a match fails the condition: 304
        (b'"2", W/"1"', b'"1"', False),
        (b'"2", "3"', b'"1"', True),
        (b"*", b'"1"', False),  # "*" matches any current representation
        (b'"1"', None, True),  # no entity-tag: nothing matches
    ],
)
def test_if_none_match_follows_rfc_9110_13_1_2(header, etag, holds):
    assert none_match(header, etag) is holds


LM = b"Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    "since, last_modified, unmodified",
    [
        (LM, LM, True),  # section 13.1.3: not modified after the given date
        (b"Sun, 06 Nov 1994 09:00:00 GMT", LM, True),
        (b"Sun, 06 Nov 1994 08:00:00 GMT", LM, False),
        (b"not a date", LM, False),  # an invalid date is ignored
        (LM, None, False),  # no Last-Modified: the condition can't be evaluated
    ],
)
def test_if_modified_since_follows_rfc_9110_13_1_3(since, last_modified, unmodified):
    assert not_modified_since(since, last_modified) is unmodified


# -- v2: replayed headers (SPEC.md section 3; RFC 9110 section 7.6.1) --------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from apicache.cache.policy import (  # noqa: E402
    NEVER_REPLAYED,
    cache_control,
    condition_fails,
    freshness,
    hidden_headers,
    normalise_accept_encoding,
    not_modified_headers,
    revalidation_matches,
    strong_etag_match,
    updated_headers,
    upstream_age,
    validators,
    varying_headers,
)
from apicache.cache.wire import header_block, status_member  # noqa: E402
from apicache.config import UpstreamConfig  # noqa: E402

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
T_DATE = 784111777.0  # DATE as a POSIX time


def test_headers_named_by_connection_are_dropped():
    """RFC 9110 section 7.6.1: Connection names further hop-by-hop fields."""
    headers = [(b"connection", b"X-Hop, close"), (b"x-hop", b"1"), (b"x-end", b"2")]
    assert replayed_headers(headers) == ((b"x-end", b"2"),)


def test_never_replayed_headers_are_dropped():
    headers = [(name, b"v") for name in sorted(NEVER_REPLAYED)] + [CT]
    assert replayed_headers(headers) == (CT,)


def test_hidden_headers_and_the_tags_header_are_dropped():
    up = UpstreamConfig(hide_headers=("X-Powered-By",), tags_header="Surrogate-Key")
    hidden = hidden_headers(up)
    headers = [(b"x-powered-by", b"php"), (b"surrogate-key", b"a b"), CT]
    assert replayed_headers(headers, hidden) == (CT,)


def test_fields_named_by_qualified_no_cache_and_private_are_dropped():
    """RFC 9111 sections 5.2.2.4 and 5.2.2.7: the named fields are not stored."""
    headers = [
        (b"cache-control", b'no-cache="X-A", private="x-b, X-C", max-age=5'),
        (b"x-a", b"1"),
        (b"x-b", b"2"),
        (b"x-c", b"3"),
        (b"x-d", b"4"),
    ]
    assert [k for k, _ in replayed_headers(headers)] == [b"cache-control", b"x-d"]
    assert not_stored_reason(200, headers, VARYING) is None


def test_values_with_cr_lf_or_nul_are_dropped():
    headers = [(b"x-a", b"1\r\nx-evil: 1"), (b"x-b", b"a\nb"), (b"x-c", b"a\x00b"), (b"x-d", b"ok")]
    assert replayed_headers(headers) == ((b"x-d", b"ok"),)


def test_apicache_supplies_date_only_when_the_upstream_sent_none():
    """RFC 9110 section 6.6.1: the upstream's Date is kept."""
    assert replayed_headers([CT], date=b"D") == (CT, (b"date", b"D"))
    assert replayed_headers([(b"date", DATE)], date=b"D") == ((b"date", DATE),)


def test_header_block_leaves_cache_status_open_after_the_upstreams_member():
    """RFC 9211 section 2: a cache appends its member after those it received."""
    block = header_block([CT, (b"cache-status", b"upcache; hit"), (b"etag", b'"1"')])
    assert block == b'Content-Type: application/json\r\nETag: "1"\r\nCache-Status: upcache; hit, '
    assert header_block([CT]).endswith(b"\r\nCache-Status: ")


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"connection", b"te", b"x-a", b"set-cookie", b"etag", b"upgrade", b"x-b", b"age"])
            | st.binary(min_size=1, max_size=8).map(bytes.lower),
            st.binary(max_size=12),
        ),
        max_size=12,
    )
)
def test_replayed_headers_never_hold_hop_by_hop_names_cr_lf_or_nul(headers):
    replayed = replayed_headers(headers)
    for name, value in replayed:
        assert name not in NEVER_REPLAYED
        assert not any(c in value for c in (b"\r", b"\n", b"\x00"))
        assert b"\r" not in name and b"\n" not in name and b":" not in name
    assert b"\r\n\r\n" not in header_block(replayed)


# -- v2: accept-encoding and Vary (SPEC.md section 3) -------------------------


@pytest.mark.parametrize(
    "values, normalised",
    [
        (None, b"identity"),
        ([b"gzip"], b"gzip"),
        ([b"gzip, deflate, br"], b"gzip"),
        ([b"br;q=1.0, GZIP;q=0.5"], b"gzip"),
        ([b"gzip;q=0"], b"identity"),
        ([b"br"], b"identity"),
        ([b"*"], b"gzip"),
        ([b"*;q=0"], b"identity"),
        ([b"gzip;q=0, *"], b"identity"),
        ([b"identity"], b"identity"),
        ([b"deflate", b"x-gzip"], b"gzip"),
        ([b"gzip;q=nan"], b"identity"),
    ],
)
def test_accept_encoding_is_normalised_to_gzip_or_identity(values, normalised):
    """RFC 9110 section 12.5.3, with SPEC.md's two values."""
    assert normalise_accept_encoding(values) == normalised


def test_vary_may_name_headers_that_are_the_same_for_every_caller():
    up = UpstreamConfig(
        forward_headers=("authorization", "accept", "x-tenant-key"),
        unkeyed_headers=("authorization", "x-tenant-key"),
        set_headers={"x-tenant-key": "k"},
    )
    varying = varying_headers(up)
    assert varying == frozenset({b"authorization"})
    for vary in (b"Accept", b"Origin, Accept-Encoding", b"x-tenant-key", b"user-agent"):
        assert not_stored_reason(200, [(b"vary", vary)], varying) is None
    assert not_stored_reason(200, [(b"vary", b"Origin, Authorization")], varying) == "vary"
    assert not_stored_reason(200, [(b"vary", b"*")], varying) == "vary"


@pytest.mark.parametrize(
    "status, headers, encoding, reason",
    [
        (200, [(b"content-encoding", b"gzip")], b"identity", "encoding"),
        (200, [(b"content-encoding", b"gzip")], b"gzip", None),
        (200, [(b"content-encoding", b"br")], b"gzip", "encoding"),
        (200, [(b"content-encoding", b"identity")], b"gzip", None),
        (200, [(b"cache-control", b"no-store")], b"identity", "no-store"),
        (200, [(b"cache-control", b"private")], b"identity", "private"),
        (200, [(b"set-cookie", b"a=1")], b"identity", "set-cookie"),
        (206, [], b"identity", "status"),
        (404, [], b"identity", "status"),
    ],
)
def test_not_stored_reason_names_the_cache_status_detail(status, headers, encoding, reason):
    assert not_stored_reason(status, headers, VARYING, 0.0, encoding) == reason


def test_404_and_410_are_storable_while_negative_ttl_is_set():
    assert not_stored_reason(404, [], VARYING, negative_ttl=5) is None
    assert not_stored_reason(410, [], VARYING, negative_ttl=5) is None
    assert not_stored_reason(403, [], VARYING, negative_ttl=5) == "status"


# -- v2: freshness (RFC 9111 section 4.2) -------------------------------------

UP = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=30.0, freshness="upstream", max_ttl=600.0, fingerprint="f")


def fresh(headers, route=UP, status=200, sent=T_DATE, received=T_DATE):
    return freshness(route, status, headers, sent, received)


def test_cache_control_parses_quoted_lists_and_keeps_first_values():
    """RFC 9111 section 5.2: directives are case-insensitive, arguments may be quoted."""
    d = cache_control([(b"cache-control", b'Max-Age=5, no-cache="a, b"'), (b"cache-control", b"max-age=9, public")])
    assert d == {b"max-age": b"5", b"no-cache": b"a, b", b"public": None}


def test_s_maxage_wins_over_max_age_which_wins_over_expires():
    """RFC 9111 section 4.2.1: the order of precedence for a shared cache."""
    expires = (b"expires", b"Sun, 06 Nov 1994 08:59:37 GMT")
    date = (b"date", DATE)
    assert fresh([(b"cache-control", b"max-age=60, s-maxage=120"), date, expires]).lifetime == 120
    assert fresh([(b"cache-control", b"max-age=60"), date, expires]).lifetime == 60
    assert fresh([date, expires]).lifetime == 600


def test_no_freshness_information_gives_the_route_ttl_and_route_mode_ignores_the_upstream():
    assert fresh([CT]).lifetime == 30
    assert fresh([(b"cache-control", b"max-age=5")], route=ROUTE).lifetime == 30


def test_lifetime_is_capped_by_max_ttl():
    assert fresh([(b"cache-control", b"max-age=99999")]).lifetime == 600


@pytest.mark.parametrize(
    "headers",
    [
        [(b"date", DATE), (b"expires", b"0")],
        [(b"date", DATE), (b"expires", b"soon")],
        [(b"cache-control", b"max-age=ten")],
        [(b"cache-control", b"max-age=-1")],
        [(b"cache-control", b"s-maxage=")],
    ],
)
def test_invalid_freshness_information_means_already_stale(headers):
    """RFC 9111 sections 4.2.1 and 5.3: an invalid Expires means expired."""
    assert fresh(headers).lifetime == 0


def test_corrected_initial_age_follows_rfc_9111_4_2_3():
    # apparent age: received 10 s after Date
    assert fresh([(b"date", DATE)], sent=T_DATE + 8, received=T_DATE + 10).initial_age == 10
    # corrected age value: Age plus the response delay
    assert fresh([(b"date", DATE), (b"age", b"30")], sent=T_DATE + 8, received=T_DATE + 10).initial_age == 32
    # a Date in the future counts as no apparent age
    assert fresh([(b"date", DATE)], sent=T_DATE - 20, received=T_DATE - 20).initial_age == 0


def test_an_invalid_age_is_ignored():
    """RFC 9111 section 5.1."""
    assert upstream_age([(b"age", b"-3")]) is None
    assert upstream_age([(b"age", b"x")]) is None
    assert upstream_age([(b"age", b"7")]) == 7
    assert fresh([(b"age", b"abc")], sent=T_DATE, received=T_DATE + 1).initial_age == 1


def test_revalidation_directives():
    """RFC 9111 sections 5.2.2.2, 5.2.2.4, 5.2.2.8, 5.2.2.10; RFC 5861."""
    assert fresh([(b"cache-control", b"no-cache")]).no_cache
    assert not fresh([(b"cache-control", b'no-cache="x-a"')]).no_cache
    for directive in (b"must-revalidate", b"proxy-revalidate", b"s-maxage=5"):
        f = fresh([(b"cache-control", directive + b", stale-while-revalidate=30")])
        assert f.no_stale and f.stale_while_revalidate == 0 and f.stale_if_error == 0
    f = fresh([(b"cache-control", b"max-age=5, stale-while-revalidate=30, stale-if-error=60")])
    assert (f.stale_while_revalidate, f.stale_if_error, f.no_stale) == (30, 60, False)


def test_negative_answers_take_negative_ttl():
    route = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=30.0, negative_ttl=4.0, fingerprint="f")
    assert freshness(route, 404, [], 0.0, 0.0).lifetime == 4


@given(
    st.sampled_from(
        [
            b"max-age=60",
            b"s-maxage=5",
            b"max-age=x",
            b"no-cache",
            b"max-age=0",
            b"max-age=99999999999999999999",
        ]
    ),
    st.sampled_from([None, b"0", b"12", b"-4", b"z"]),
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(min_value=0, max_value=1e4),
    st.floats(min_value=0, max_value=1e4),
    st.floats(min_value=0, max_value=1e4),
)
def test_freshness_and_age_are_never_negative_and_monotonic_in_time(cc, age, skew, delay, t1, t2):
    """RFC 9111 section 4.2.3: current_age = corrected_initial_age + resident_time."""
    headers = [(b"cache-control", cc), (b"date", DATE)]
    if age is not None:
        headers.append((b"age", age))
    received = T_DATE + skew + delay
    f = freshness(UP, 200, headers, T_DATE + skew, received)
    assert f.lifetime >= 0 and f.initial_age >= 0
    born = received - f.initial_age
    early, late = sorted((received + t1, received + t2))
    assert 0 <= current_age(born, early) <= current_age(born, late)
    expires = born + f.lifetime
    # once stale, it stays stale
    assert not (not is_fresh(expires, False, early) and is_fresh(expires, False, late))


# -- v2: revalidation (RFC 9111 section 4.3) ----------------------------------


def test_validators_are_the_stored_etag_and_last_modified():
    """RFC 9111 section 4.3.1."""
    assert validators([(b"etag", b'"a"'), (b"last-modified", DATE)]) == [
        (b"if-none-match", b'"a"'),
        (b"if-modified-since", DATE),
    ]
    assert validators([(b"last-modified", b"garbage"), CT]) == []


@pytest.mark.parametrize(
    "stored, not_modified, matches",
    [
        ([(b"etag", b'"a"')], [(b"etag", b'"a"')], True),
        ([(b"etag", b'"a"')], [(b"etag", b'"b"')], False),
        # v3: the weak comparison, so W/ validators (Express, Rails, nginx with gzip) confirm
        ([(b"etag", b'W/"a"')], [(b"etag", b'W/"a"')], True),
        ([(b"etag", b'W/"a"')], [(b"etag", b'"a"')], True),
        ([(b"etag", b'"a"')], [(b"etag", b'W/"a"')], True),
        ([(b"etag", b'W/"a"')], [(b"etag", b'W/"b"')], False),
        ([(b"last-modified", DATE)], [(b"last-modified", DATE)], True),
        ([(b"last-modified", DATE)], [(b"last-modified", b"Mon, 07 Nov 1994 08:49:37 GMT")], False),
        ([(b"etag", b'"a"')], [], True),  # a 304 without validators confirms the one stored
        ([CT], [], False),
    ],
)
def test_a_304_updates_only_the_entry_whose_validator_matches(stored, not_modified, matches):
    """RFC 9111 section 4.3.4, selecting the stored response to update (weak comparison)."""
    assert revalidation_matches(stored, not_modified) is matches


def test_a_304_replaces_stored_headers_but_content_length_encoding_and_range():
    """RFC 9111 section 4.3.4."""
    stored = [CT, (b"content-encoding", b"gzip"), (b"etag", b'"a"'), (b"x-a", b"old"), (b"date", DATE)]
    new = [(b"content-encoding", b"br"), (b"x-a", b"new"), (b"content-range", b"bytes 0-1/2"), (b"date", b"D2")]
    assert updated_headers(stored, new, new) == (
        CT,
        (b"content-encoding", b"gzip"),
        (b"etag", b'"a"'),
        (b"x-a", b"new"),
        (b"date", b"D2"),
    )


def test_a_304_from_the_cache_carries_only_the_listed_headers():
    """SPEC.md section 3: ETag, Last-Modified, Cache-Control, Expires, Vary, Content-Location, Date."""
    stored = [CT, (b"etag", b'"a"'), (b"x-a", b"1"), (b"vary", b"accept"), (b"date", DATE), (b"link", b"<x>")]
    assert not_modified_headers(stored) == ((b"etag", b'"a"'), (b"vary", b"accept"), (b"date", DATE))


# -- v2: conditional requests from callers (RFC 9110 section 13.2.2) ----------


@given(st.booleans(), st.booleans(), st.text("ab", min_size=1, max_size=3), st.text("ab", min_size=1, max_size=3))
def test_weak_and_strong_comparison_follow_rfc_9110_8_8_3_2(weak_a, weak_b, a, b):
    ta = (b"W/" if weak_a else b"") + b'"' + a.encode() + b'"'
    tb = (b"W/" if weak_b else b"") + b'"' + b.encode() + b'"'
    assert weak_etag_match(ta, tb) is (a == b)
    assert strong_etag_match(ta, tb) is (a == b and not weak_a and not weak_b)
    assert strong_etag_match(ta, tb) <= weak_etag_match(ta, tb)


def test_if_none_match_wins_over_if_modified_since():
    """RFC 9110 section 13.2.2: If-Modified-Since only without If-None-Match."""
    stored = [(b"etag", b'"a"'), (b"last-modified", DATE)]
    assert condition_fails([b'"a"'], None, stored)
    assert condition_fails([b'W/"a"'], None, stored)
    assert condition_fails([b"*"], None, stored)
    assert not condition_fails([b'"b"'], [DATE], stored)
    assert condition_fails(None, [DATE], stored)
    assert not condition_fails(None, [b"Sun, 06 Nov 1994 08:00:00 GMT"], stored)
    assert not condition_fails(None, None, stored)


def test_status_member_follows_spec_order():
    """RFC 9211 section 2; SPEC.md section 4's members."""
    assert status_member(hit=True, ttl=-2.5) == b"apicache;hit;ttl=-3"
    assert status_member(fwd="uri-miss", fwd_status=200, stored=True) == b"apicache;fwd=uri-miss;fwd-status=200;stored"
    assert status_member(fwd="stale", fwd_status=304) == b"apicache;fwd=stale;fwd-status=304"
    assert status_member(fwd="miss", detail="store-unavailable") == b"apicache;fwd=miss;detail=store-unavailable"
    assert (
        status_member(fwd="uri-miss", fwd_status=200, collapsed=True, detail="vary")
        == b"apicache;fwd=uri-miss;fwd-status=200;collapsed;detail=vary"
    )
