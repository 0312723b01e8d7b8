"""
The HTTP caching decisions (apicache.httpcache): pure functions, tested
without a reactor.
"""

from __future__ import annotations

import pytest

from apicache.config import RouteConfig
from apicache.httpcache import (
    PASSED_HEADERS,
    STORED_HEADERS,
    current_age,
    freshness_lifetime,
    is_fresh,
    is_storable,
    kept_headers,
    none_match,
    not_modified_since,
    weak_etag_match,
)

KEYED = ("accept", "accept-language")
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
    assert is_storable(status, headers, KEYED) is storable


def test_stored_answers_keep_only_the_stored_headers():
    headers = [CT, (b"etag", b'"1"'), (b"location", b"/x"), (b"set-cookie", b"a"), (b"server", b"up")]
    assert kept_headers(headers, True) == (CT, (b"etag", b'"1"'))


def test_passed_answers_keep_the_passed_headers_in_order():
    headers = [(b"www-authenticate", b"Bearer"), CT, (b"connection", b"close"), (b"location", b"/x")]
    assert kept_headers(headers, False) == ((b"www-authenticate", b"Bearer"), CT, (b"location", b"/x"))
    assert set(STORED_HEADERS) < set(PASSED_HEADERS)


# -- freshness and age (RFC 9111 section 4.2) ---------------------------------


def test_lifetime_is_the_route_ttl_whatever_the_upstream_says():
    assert freshness_lifetime(ROUTE, 200, [(b"cache-control", b"max-age=5")]) == 30.0


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
