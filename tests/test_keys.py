"""
Tenant names, path parameters, canonical queries and key variants
(SPEC.md section 3).
"""

import pytest

from apicache.cache.keys import (
    CacheKey,
    InvalidParameter,
    InvalidQuery,
    InvalidTenant,
    canonical_query,
    decode_parameter,
    encode_parameter,
    header_value,
    validate_tenant,
    variant,
)


@pytest.mark.parametrize("tenant", ["t1", "org.example:42", "A-Z_a-z.0-9", "x" * 128])
def test_ordinary_tenants_are_accepted(tenant):
    assert validate_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "x" * 129, "a b", "a/b", "ä", "t\n1", "a,b"])
def test_bad_tenants_are_rejected(tenant):
    with pytest.raises(InvalidTenant):
        validate_tenant(tenant)


@pytest.mark.parametrize(
    "raw, value",
    [
        ("42", "42"),
        ("abc-DEF_1.2", "abc-DEF_1.2"),
        ("a%20b", "a b"),
        ("%C3%A4", "ä"),
        ("50%25", "50%"),
        ("%2541", "%41"),
        ("x" * 512, "x" * 512),
    ],
)
def test_parameters_are_decoded_once(raw, value):
    assert decode_parameter("id", raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "x" * 513,
        "a/b",
        "a%2Fb",
        "a%2fb",
        "..",
        "%2E%2E",
        "a\\b",
        "a%5Cb",
        "a%00b",
        "a%0Ab",
        "a%7Fb",
        "a%C2%85b",
        "%252F",
        "%252e%252e",
        "%255C",
        "%2500",
        "%FF",
    ],
)
def test_traversal_and_bad_parameters_are_rejected(raw):
    with pytest.raises(InvalidParameter):
        decode_parameter("id", raw)


def test_encoding_escapes_every_reserved_character():
    assert encode_parameter("a b/?#[]@!$&'()*+,;=%") == "a%20b%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D%25"
    assert encode_parameter("ä") == "%C3%A4"


def test_query_is_sorted_by_name_and_stable_for_repeats():
    assert canonical_query(b"b=2&a=1&b=1") == "a=1&b=2&b=1"


def test_query_is_reencoded_the_same_way():
    assert canonical_query(b"q=a+b&r=%41") == canonical_query(b"r=A&q=a%20b") == "q=a%20b&r=A"


def test_empty_query_is_empty():
    assert canonical_query(b"") == ""


def test_long_query_is_rejected():
    with pytest.raises(InvalidQuery):
        canonical_query(b"a=" + b"x" * 2047)


@pytest.mark.parametrize("raw", [b"a=%FF", b"a=\xc3\xa4", b"a=%00"])
def test_undecodable_query_is_rejected(raw):
    with pytest.raises(InvalidQuery):
        canonical_query(raw)


def test_absent_and_empty_headers_give_different_variants():
    assert variant("f", "", [None]) != variant("f", "", [""])
    assert variant("f", "", ["de"]) != variant("f", "", ["en"])
    assert variant("f", "", ["de"]) != variant("g", "", ["de"])


def test_header_values_are_joined():
    assert header_value(None) is None
    assert header_value([b"a", b"b"]) == "a, b"


def test_key_size_counts_bytes():
    assert CacheKey("t", "r", ("ä",), "v").size() == 1 + 1 + 2 + 1


def test_cache_key_holds_tenant_route_params_and_variant():
    from apicache.cache.keys import cache_key
    from apicache.config import RouteConfig

    route = RouteConfig("object", "/o/<id>", "/o/{id}", params=("id",), fingerprint="f1")
    key = cache_key("t1", route, ("42",), "a=1", [[b"en"], None])
    assert (key.tenant, key.route, key.params) == ("t1", "object", ("42",))
    assert key.variant == variant("f1", "a=1", ["en", None])
    assert cache_key("t1", route, ("42",), "a=1", [[b""], None]) != key


def test_a_new_fingerprint_gives_a_new_key():
    from apicache.cache.keys import cache_key
    from apicache.config import RouteConfig

    old = RouteConfig("object", "/o/<id>", "/o/{id}", params=("id",), fingerprint="f1")
    new = RouteConfig("object", "/o/<id>", "/v2/o/{id}", params=("id",), fingerprint="f2")
    assert cache_key("t1", old, ("1",), "", []) != cache_key("t1", new, ("1",), "", [])
