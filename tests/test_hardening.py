"""
Regression tests of issue 10 ("Hardening") that need no daemon: dot
parameters, control characters in the path, key encoding, tenant names,
``max_tenants`` reclaim and admin keys (SPEC.md sections 2, 3 and 4).
"""

from __future__ import annotations

import json

import pytest
from http_support import OBJ, T1, App, error_of, result
from http_support import sync_case as _tc
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from apicache.cache.keys import CacheKey, InvalidParameter, InvalidTenant, decode_parameter, validate_tenant, variant
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import FetchRequest
from apicache.config import RouteConfig, parse_config
from apicache.events.decoding import BadEvent, EventDecoder
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamResponse

# -- finding 3: "." is a dot-segment ------------------------------------------


@pytest.mark.parametrize("raw", [".", "%2e", "%2E", "%252e"])
def test_dot_parameter_is_rejected(raw):
    with pytest.raises(InvalidParameter):
        decode_parameter("id", raw)


@pytest.mark.parametrize("raw", [".x", "x.", "a.b", "v1.2"])
def test_dots_inside_a_parameter_are_kept(raw):
    assert decode_parameter("id", raw) == raw


@pytest.mark.parametrize("path", ["/server/templates/.", "/server/templates/%2e", "/server/templates/%2E"])
def test_dot_parameter_is_answered_invalid_parameter_and_never_fetched(path):
    app = App()
    assert error_of(_tc(), app.request("GET", "http://x" + path, headers=T1)) == (400, "invalid_parameter")
    assert app.upstream.fetched == []


# -- finding 10: control characters in a path parameter ------------------------


@pytest.mark.parametrize("escape", ["%0a", "%0A", "%0d%0a", "%0d", "%09", "%7f"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_encoded_control_in_a_parameter_is_invalid_parameter_not_no_route(method, escape):
    app = App()
    url = f"http://x/server/templates/a{escape}b"
    assert error_of(_tc(), app.request(method, url, headers=T1)) == (400, "invalid_parameter")
    assert error_of(_tc(), app.request(method, f"http://x/server/object(a{escape})/header", headers=T1)) == (
        400,
        "invalid_parameter",
    )
    assert app.upstream.fetched == []


# -- finding 6: key encoding ---------------------------------------------------

header_values = st.one_of(
    st.none(),
    # the markers and separators an encoding could confuse a value with
    st.sampled_from(["", "\x00", "\x01", "\\", "\\0", "-", "=", "=\x00-"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=6),
)


@given(st.lists(header_values, min_size=1, max_size=3), st.lists(header_values, min_size=1, max_size=3))
def test_distinct_header_values_give_distinct_variants(a, b):
    """Absent and any value (``\\x01``, empty, NUL, a separator) never share a key."""
    if a != b:
        assert variant("f", "q=1", a) != variant("f", "q=1", b)
    else:
        assert variant("f", "q=1", a) == variant("f", "q=1", b)


@given(st.lists(header_values, min_size=1, max_size=3), st.data())
def test_a_header_absent_and_the_same_header_with_any_value_differ(values, data):
    """Whatever the other headers, absent and any value at one position never share a key."""
    i = data.draw(st.integers(0, len(values) - 1))
    present = data.draw(header_values.filter(lambda v: v is not None))
    absent = [*values[:i], None, *values[i + 1 :]]
    given_ = [*values[:i], present, *values[i + 1 :]]
    assert variant("f", "", absent) != variant("f", "", given_)


@pytest.mark.parametrize("value", ["\x01", "", "\x00", "-", "="])
def test_absent_header_and_any_value_differ(value):
    assert variant("f", "", [None]) != variant("f", "", [value])
    assert variant("f", "", [None, value]) != variant("f", "", [value, None])


def test_header_holding_x01_does_not_hit_the_entry_of_requests_without_it():
    app = App()
    tc = _tc()
    code, headers, _ = result(tc, app.request("GET", OBJ, headers=T1))
    assert code == 200
    code, headers, _ = result(tc, app.request("GET", OBJ, headers={**T1, "accept-language": "\x01"}))
    assert headers.getRawHeaders("x-cache") == ["MISS"]
    assert len(app.upstream.fetched) == 2


# -- finding 9: tenant names are matched whole ---------------------------------


@pytest.mark.parametrize("value", ["acme\n", "acme\r\n", "\nacme", "ac\nme", "acme\x00"])
def test_tenant_with_a_newline_is_refused(value):
    with pytest.raises(InvalidTenant):
        validate_tenant(value)


def test_event_tenant_with_a_trailing_newline_is_refused():
    data = {
        "server": {"api_keys": ["k"]},
        "upstream": {"base_url": "http://up/api"},
        "routes": [{"type": "object", "path": "/o/<id>", "upstream": "/o/{id}"}],
        "events": [{"types": ["object.update"], "route": "object", "id_field": "objectid", "tenant_field": "org_id"}],
    }
    config = parse_config(data, "test.toml", {})
    decoder = EventDecoder(config.events, config.routes)
    ok = decoder.decode(json.dumps({"type": "object.update", "objectid": "1", "org_id": "acme"}).encode())
    assert [a.tenant for a in ok] == ["acme"]
    with pytest.raises(BadEvent):
        decoder.decode(json.dumps({"type": "object.update", "objectid": "1", "org_id": "acme\n"}).encode())


# -- finding 11: reclaiming a tenant cache never drops its entries -------------


def test_reclaimed_tenant_keeps_its_entries():
    """1,001 tenant names against max_tenants = 1000 leave an idle tenant's 200 entries."""
    clock = Clock()
    clock.advance(1000)
    route = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=300.0, params=("id",), fingerprint="f")
    store = MemoryStore(1 << 24)
    upstream = FakeUpstream(auto=lambda path, headers: UpstreamResponse(200, [], b"x"))
    registry = CacheRegistry(store, upstream, clock, [route], (), max_tenants=1000)

    keys = [CacheKey("victim", "object", (str(i),), "v") for i in range(200)]
    for k in keys:
        registry.cache("victim", "object").get(k, FetchRequest("/o/x", []))
    assert all(store.lookup(k) is not None for k in keys)
    for i in range(1001):
        registry.cache(f"t{i}", "object")
    assert ("victim", "object") not in registry._caches
    assert all(store.lookup(k) is not None for k in keys)
    assert all(registry.cache("victim", "object").hit(k) is not None for k in keys)


# -- finding 4: accept errors are logged at most once a second -------------------


def test_accept_errors_are_let_through_once_a_second():
    from twisted.logger import PredicateResult

    from apicache.ops.logs import AcceptErrorsOncePerSecond

    p = AcceptErrorsOncePerSecond()

    def event(t, fmt="EMFILE encountered; releasing reserved file descriptor.", ns="twisted.internet.tcp.Port"):
        return {"log_time": t, "log_format": fmt, "log_namespace": ns}

    results = [p(event(100 + i / 10)) for i in range(25)]  # 2.5 s of events, 10 a second
    assert results.count(PredicateResult.maybe) == 3
    passed = event(103.0)
    assert p(passed) == PredicateResult.maybe and passed["suppressed"] == 4
    assert p(event(103.1, fmt="something else")) == PredicateResult.maybe
    assert p(event(103.1, ns="apicache.http.channel")) == PredicateResult.maybe


@pytest.mark.parametrize(
    "extra",
    [
        {"server": {"tenant_header": "org_id\n"}},
        {"store": {"key_prefix": "apicache\n"}},
        {"routes": [{"type": "object\n", "path": "/o/<id>", "upstream": "/o/{id}"}]},
    ],
)
def test_configuration_names_with_a_trailing_newline_are_refused(extra):
    from apicache.config import ConfigError

    data = {"server": {"api_keys": ["k"]}, "upstream": {"base_url": "http://up/api"}}
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    with pytest.raises(ConfigError):
        parse_config(data, "test.toml", {})
