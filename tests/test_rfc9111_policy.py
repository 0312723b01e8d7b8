"""
Version 3's caching rules in L{apicache.cache.policy} (issue 20, SPEC.md
section 3): storable statuses in both freshness modes and
``must-understand``, heuristic freshness, strict HTTP dates and ``Age``,
targeted Cache-Control, weak revalidation, header fidelity, stale rules of
``no-cache``, ``only-if-cached``.  Pure functions: no reactor, no clock.
"""

from __future__ import annotations

import pytest

from apicache.cache.policy import (
    HEURISTIC,
    NEVER_REPLAYED,
    UNDERSTOOD,
    freshness,
    governing_directives,
    http_date,
    not_modified_since,
    not_stored_reason,
    only_if_cached,
    replayed_headers,
    revalidation_matches,
    upstream_age,
    validators,
    withheld_fields,
)
from apicache.config import RouteConfig

CT = (b"content-type", b"application/json")
DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
T_DATE = 784111777.0
VARYING = (b"authorization", b"x-correlationid")


def route(**kw):
    base = dict(ttl=30.0, params=("id",), fingerprint="f")
    base.update(kw)
    return RouteConfig("object", "/o/<id>", "/o/{id}", **base)


ROUTE = route()
UPSTREAM = route(freshness="upstream", max_ttl=1000.0)


def reason(status, headers, r=ROUTE, targets=("cdn-cache-control",)):
    return not_stored_reason(status, list(headers), VARYING, route=r, targets=targets)


# -- 2. storable statuses (SPEC.md section 3, RFC 9111 section 3) ------------


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308])
def test_route_mode_stores_the_statuses_of_the_table_for_ttl(status):
    """SPEC.md section 3 (v3), freshness = "route"; RFC 9111 section 3."""
    assert reason(status, [CT]) is None


@pytest.mark.parametrize("status", [201, 202, 205, 206, 302, 303, 304, 307, 400, 405, 500, 503])
def test_route_mode_passes_other_statuses_through(status):
    assert reason(status, [CT, (b"cache-control", b"max-age=60")]) == "status"


def test_route_mode_stores_404_and_410_only_while_negative_ttl_is_set():
    for status in (404, 410):
        assert reason(status, [CT]) == "status"
        assert reason(status, [CT], route(negative_ttl=5.0)) is None


@pytest.mark.parametrize(
    "status", [200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 429, 500, 502, 503, 599]
)
@pytest.mark.parametrize(
    "explicit",
    [
        (b"cache-control", b"max-age=60"),
        (b"cache-control", b"s-maxage=60"),
        (b"expires", DATE),
        (b"expires", b"0"),  # invalid, still explicit: stored already stale (RFC 9111 section 5.3)
        (b"cdn-cache-control", b"max-age=60"),
    ],
)
def test_upstream_mode_stores_any_final_status_with_explicit_freshness(status, explicit):
    """RFC 9111 section 3: a final status with explicit freshness is storable."""
    assert reason(status, [CT, explicit], UPSTREAM) is None


@pytest.mark.parametrize("status", [206, 304, 100, 101, 199])
def test_upstream_mode_never_stores_206_304_nor_interim_answers(status):
    assert reason(status, [CT, (b"cache-control", b"max-age=60")], UPSTREAM) == "status"


@pytest.mark.parametrize("status", sorted(HEURISTIC - {404, 410}))
def test_upstream_mode_stores_heuristically_cacheable_statuses_without_freshness(status):
    """RFC 9110 section 15.1: 200 203 204 300 301 308 404 405 410 414 501."""
    assert reason(status, [CT], UPSTREAM) is None


@pytest.mark.parametrize("status", [201, 202, 302, 303, 307, 400, 403, 500, 502, 503])
def test_upstream_mode_passes_other_statuses_without_freshness_through(status):
    assert reason(status, [CT, (b"last-modified", DATE)], UPSTREAM) == "status"


def test_upstream_mode_404_without_freshness_needs_heuristic_or_negative_ttl():
    """SPEC.md section 2 (v3): negative_ttl is the lifetime of a 404/410 with no freshness of its own."""
    for status in (404, 410):
        assert reason(status, [CT], UPSTREAM) == "status"
        assert reason(status, [CT], route(freshness="upstream", negative_ttl=5.0)) is None
        assert reason(status, [CT, (b"last-modified", DATE)], UPSTREAM) is None
        # heuristic = 0 turns heuristic freshness off
        assert reason(status, [CT, (b"last-modified", DATE)], route(freshness="upstream", heuristic=0.0)) == "status"
        # an invalid Last-Modified gives no heuristic
        assert reason(status, [CT, (b"last-modified", b"yesterday")], UPSTREAM) == "status"


def test_must_understand_overrides_no_store_for_an_understood_status():
    """RFC 9111 section 5.2.2.3."""
    cc = (b"cache-control", b"must-understand, no-store, max-age=60")
    assert reason(200, [CT, cc], UPSTREAM) is None
    assert reason(200, [CT, cc]) is None
    assert reason(200, [CT, (b"cache-control", b"no-store, max-age=60")], UPSTREAM) == "no-store"


@pytest.mark.parametrize("status", [299, 306, 418, 420, 499, 555, 599])
def test_must_understand_with_a_status_apicache_does_not_implement_is_never_stored(status):
    """RFC 9111 section 5.2.2.3; SPEC.md section 3: only the statuses RFC 9110 section 15 defines."""
    assert status not in UNDERSTOOD
    assert reason(status, [CT, (b"cache-control", b"max-age=60")], UPSTREAM) is None
    assert reason(status, [CT, (b"cache-control", b"must-understand, max-age=60")], UPSTREAM) == "status"
    assert reason(status, [CT, (b"cache-control", b"must-understand, no-store, max-age=60")], UPSTREAM) == "status"


def test_understood_statuses_are_those_rfc_9110_section_15_defines():
    assert {200, 204, 206, 301, 305, 307, 308, 404, 417, 421, 422, 426, 505} <= UNDERSTOOD
    assert not {102, 207, 226, 306, 418, 429, 451, 506, 511} & UNDERSTOOD


def test_the_other_v2_reasons_hold_for_the_new_statuses():
    assert reason(301, [CT, (b"cache-control", b"private")]) == "private"
    assert reason(204, [(b"set-cookie", b"a=b")]) == "set-cookie"
    assert reason(500, [CT, (b"cache-control", b"max-age=5, no-store")], UPSTREAM) == "no-store"


# -- 3. heuristic freshness (RFC 9111 section 4.2.2) --------------------------


def lifetime(headers, r=UPSTREAM, status=200, now=T_DATE):
    return freshness(r, status, list(headers), now, now).lifetime


def test_heuristic_is_a_tenth_of_the_time_since_last_modified():
    """RFC 9111 section 4.2.2: heuristic × (Date − Last-Modified)."""
    lm = (b"last-modified", b"Sun, 06 Nov 1994 06:49:37 GMT")  # two hours before DATE
    assert lifetime([CT, (b"date", DATE), lm]) == pytest.approx(720.0)
    assert lifetime([CT, (b"date", DATE), lm], route(freshness="upstream", heuristic=0.5)) == pytest.approx(3600.0)


def test_heuristic_counts_from_the_arrival_without_a_date():
    lm = (b"last-modified", b"Sun, 06 Nov 1994 07:49:37 GMT")
    assert lifetime([CT, lm], now=T_DATE + 600) == pytest.approx(420.0)


def test_heuristic_is_capped_by_max_ttl():
    lm = (b"last-modified", b"Thu, 01 Jan 1970 00:00:00 GMT")
    assert lifetime([CT, (b"date", DATE), lm]) == 1000.0


def test_explicit_freshness_wins_over_the_heuristic():
    lm = (b"last-modified", b"Sun, 06 Nov 1994 06:49:37 GMT")
    assert lifetime([CT, (b"date", DATE), lm, (b"cache-control", b"max-age=7")]) == 7.0


def test_heuristic_only_for_heuristically_cacheable_statuses_and_not_when_off():
    lm = (b"last-modified", b"Sun, 06 Nov 1994 06:49:37 GMT")
    headers = [CT, (b"date", DATE), lm]
    assert lifetime(headers, status=404) == pytest.approx(720.0)
    # 0 = use ttl instead
    assert lifetime(headers, route(freshness="upstream", heuristic=0.0)) == 30.0
    # route mode: ttl, whatever the upstream says
    assert lifetime(headers, ROUTE) == 30.0
    # a Last-Modified after the Date is fresh for nothing, never negative
    assert lifetime([CT, (b"date", DATE), (b"last-modified", b"Sun, 06 Nov 1994 09:49:37 GMT")]) == 0.0


def test_without_freshness_nor_last_modified_ttl_and_negative_ttl_decide():
    """SPEC.md section 2 (v3): ttl = 0 stores already stale; negative_ttl for a 404/410."""
    assert lifetime([CT], route(freshness="upstream", ttl=0.0)) == 0.0
    assert lifetime([CT], route(freshness="upstream", negative_ttl=5.0), status=404) == 5.0


# -- 4. strict dates and Age (RFC 9110 section 5.6.7, RFC 9111 section 5.1) ---


@pytest.mark.parametrize(
    "value, when",
    [
        (DATE, T_DATE),
        (b"sun, 06 nov 1994 08:49:37 gmt", T_DATE),  # matched case-insensitively
        (b"Sunday, 06-Nov-94 08:49:37 GMT", T_DATE),  # RFC 850
        (b"Sun Nov  6 08:49:37 1994", T_DATE),  # asctime: refused by email.utils
        (b"Sun, 06 Nov 1994 08:49:37 UTC", None),
        (b"Sun 06 Nov 1994 08:49:37 GMT", None),
        (b"Sun, 06 Nov 1994  08:49:37 GMT", None),
        (b"Sun, 06-Nov-1994 08:49:37 GMT", None),
        (b"Sun, 06 Nov 1994 8:49:37 GMT", None),
        (b"Thu, 18 Aug 50 02:01:18 GMT", None),  # a two-digit year outside RFC 850's form
        (b"Sun, 06 Nov 1994 08:49:37 +0000", None),
    ],
)
def test_http_dates_are_the_three_forms_of_rfc_9110_only(value, when):
    """RFC 9110 section 5.6.7."""
    assert http_date(value) == when


def test_a_date_email_utils_read_as_2050_is_invalid_freshness():
    """Issue 20: 'Expires: Thu, 18 Aug 50 02:01:18 GMT' was a hit for ten years."""
    headers = [CT, (b"date", DATE), (b"expires", b"Thu, 18 Aug 50 02:01:18 GMT")]
    assert lifetime(headers) == 0.0


def test_an_invalid_last_modified_is_no_validator_and_no_condition():
    assert validators([(b"last-modified", b"Sun, 06 Nov 1994 08:49:37 UTC")]) == []
    assert not not_modified_since(b"Sun, 06 Nov 1994 08:49:37 UTC", DATE)


@pytest.mark.parametrize(
    "lines, age",
    [
        ([b"7200, 0"], 7200),
        ([b"7200", b"0"], 7200),
        ([b" 60 "], 60),
        ([b"x, 60"], None),  # the first is not delta-seconds: ignored
        ([b"-1"], None),
        ([b"9" * 40], 2147483648),
        ([], None),
    ],
)
def test_an_age_with_several_values_counts_by_its_first(lines, age):
    """SPEC.md section 3 (v3); RFC 9111 sections 1.2.2 and 5.1."""
    assert upstream_age([(b"age", v) for v in lines]) == age


def test_a_listed_age_makes_a_stale_answer_stale():
    """Issue 20: 'Age: 7200, 0' was ignored and a stale answer served as fresh."""
    f = freshness(UPSTREAM, 200, [CT, (b"cache-control", b"max-age=3600"), (b"age", b"7200, 0")], T_DATE, T_DATE)
    assert f.initial_age == 7200.0 and f.lifetime == 1000.0


# -- 5. targeted Cache-Control (RFC 9213) ------------------------------------


def test_a_valid_targeted_field_replaces_cache_control_and_expires():
    """RFC 9213 section 2.2, for storing and freshness alike."""
    headers = [CT, (b"cache-control", b"no-store"), (b"expires", b"0"), (b"cdn-cache-control", b"max-age=120")]
    assert reason(200, headers, UPSTREAM) is None
    assert lifetime(headers) == 120.0
    # it wins in the other direction too
    headers = [CT, (b"cache-control", b"max-age=600"), (b"cdn-cache-control", b"no-store")]
    assert reason(200, headers, UPSTREAM) == "no-store"
    # Expires does not apply beside it: no explicit freshness then, the ttl decides
    headers = [CT, (b"date", DATE), (b"expires", b"Sun, 06 Nov 1994 09:49:37 GMT"), (b"cdn-cache-control", b"public")]
    assert lifetime(headers) == 30.0


def test_an_invalid_targeted_field_is_ignored():
    """RFC 9213 section 2.2: a field that fails to parse is ignored."""
    headers = [CT, (b"cache-control", b"max-age=60"), (b"cdn-cache-control", b"max-age=60, ,")]
    assert lifetime(headers) == 60.0
    assert governing_directives(headers, UPSTREAM)[1] is False


def test_the_first_listed_target_with_a_valid_value_wins():
    headers = [CT, (b"cdn-cache-control", b"max-age=5"), (b"apicache-cache-control", b"max-age=50")]
    f = freshness(UPSTREAM, 200, headers, T_DATE, T_DATE, targets=("apicache-cache-control", "cdn-cache-control"))
    assert f.lifetime == 50.0
    assert freshness(UPSTREAM, 200, headers, T_DATE, T_DATE, targets=()).lifetime == 30.0


def test_targeted_fields_are_obeyed_only_with_freshness_upstream():
    """SPEC.md section 2: targeted_cache_control applies with freshness = "upstream"."""
    headers = [CT, (b"cdn-cache-control", b"no-store")]
    assert reason(200, headers, ROUTE) is None
    assert lifetime(headers, ROUTE) == 30.0


def test_targeted_directives_govern_must_revalidate_no_cache_and_named_fields():
    headers = [CT, (b"cdn-cache-control", b'max-age=60, must-revalidate, no-cache="x-a"'), (b"x-a", b"1")]
    f = freshness(route(freshness="upstream", stale_if_error=60.0), 200, headers, T_DATE, T_DATE)
    assert (f.lifetime, f.no_stale, f.stale_if_error) == (60.0, True, 0.0)
    directives, targeted = governing_directives(headers, UPSTREAM)
    assert targeted
    assert (b"x-a", b"1") not in replayed_headers(headers, directives=directives)


# -- 6. revalidation with weak validators (RFC 9111 section 4.3.4) -----------


def test_a_304_with_the_weak_etag_express_sends_selects_the_entry():
    """RFC 9111 section 4.3.4: the weak comparison selects the stored response."""
    stored = [CT, (b"etag", b'W/"1b-abc"')]
    assert revalidation_matches(stored, [(b"etag", b'W/"1b-abc"')])
    assert not revalidation_matches(stored, [(b"etag", b'W/"1b-abd"')])
    assert validators(stored) == [(b"if-none-match", b'W/"1b-abc"')]


# -- 7. header fidelity (SPEC.md section 3, v3) ------------------------------


def test_fields_the_connection_header_names_are_never_replayed():
    """RFC 9110 section 7.6.1, on stored and passed answers alike."""
    headers = [CT, (b"x-hop", b"1"), (b"keep-alive", b"timeout=5"), (b"connection", b"X-Hop, keep-alive")]
    for passed in (False, True):
        assert replayed_headers(headers, passed=passed) == (CT,)


def test_no_cache_named_fields_are_passed_with_the_answer_that_fetched_them_only():
    """RFC 9111 section 5.2.2.4: the named fields are not reused without revalidation."""
    headers = [CT, (b"cache-control", b'max-age=60, no-cache="X-User, x-other"'), (b"x-user", b"u1")]
    assert (b"x-user", b"u1") not in replayed_headers(headers)
    assert (b"x-user", b"u1") in replayed_headers(headers, passed=True)
    assert withheld_fields(headers)
    # private="…" names fields a shared cache must not keep: never passed either
    private = [CT, (b"cache-control", b'private="x-user"'), (b"x-user", b"u1")]
    assert replayed_headers(private, passed=True) == (CT, (b"cache-control", b'private="x-user"'))


def test_withheld_fields_is_false_for_answers_whose_copies_agree():
    assert not withheld_fields([CT, (b"cache-control", b"no-cache, max-age=5")])
    assert not withheld_fields([CT, (b"cache-control", b'no-cache="x-absent"')])
    assert not withheld_fields([CT])


def test_set_cookie_is_passed_on_only_in_answers_not_stored():
    """SPEC.md section 3 (v3): never stored, passed on when not stored."""
    headers = [CT, (b"set-cookie", b"sid=1"), (b"set-cookie", b"lang=en")]
    assert b"set-cookie" in NEVER_REPLAYED
    assert replayed_headers(headers) == (CT,)
    assert replayed_headers(headers, passed=True) == tuple(headers)
    assert reason(200, headers) == "set-cookie"


# -- 9. only-if-cached (RFC 9111 section 5.2.1.7) ----------------------------


@pytest.mark.parametrize(
    "lines, wanted",
    [
        ([b"only-if-cached"], True),
        ([b"max-age=0, Only-If-Cached"], True),
        ([b"no-cache", b"only-if-cached"], True),
        ([b'no-cache="only-if-cached"'], False),
        ([b"only-if-cached-not"], False),
        ([b"no-cache"], False),
        (None, False),
    ],
)
def test_only_if_cached_is_read_from_the_request_cache_control(lines, wanted):
    assert only_if_cached(lines) is wanted


# -- 10. no-cache is never served stale (RFC 9111 section 5.2.2.4) ----------


def test_an_answer_to_revalidate_before_every_use_gets_no_stale_window():
    r = route(freshness="upstream", stale_if_error=300.0, stale_while_revalidate=300.0)
    f = freshness(r, 200, [CT, (b"cache-control", b"no-cache, max-age=60, stale-if-error=60")], T_DATE, T_DATE)
    assert (f.no_cache, f.stale_if_error, f.stale_while_revalidate) == (True, 0.0, 0.0)
    # a qualified no-cache="…" keeps them
    f = freshness(r, 200, [CT, (b"cache-control", b'no-cache="x-a", max-age=60')], T_DATE, T_DATE)
    assert (f.no_cache, f.stale_if_error) == (False, 300.0)
