"""
Resolving a request on a route (apicache.http.resolve): the one function the
fast path and the Klein route share.
"""

from __future__ import annotations

import pytest
from twisted.web.test.requesthelper import DummyRequest

from apicache.cache.keys import InvalidParameter, InvalidQuery, InvalidTenant
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.http.errors import ApiError
from apicache.http.resolve import MEMO_REQUEST_BYTES, MEMO_SIZE, Resolver

CONFIG = parse_config(
    {
        "server": {"api_keys": ["k"]},
        "upstream": {"base_url": "http://up/api"},
        "routes": [{"type": "object", "path": "/o/<id>", "upstream": "/o/{id}"}],
    },
    "t.toml",
    {},
)


def request(uri: bytes, **headers: bytes) -> DummyRequest:
    r = DummyRequest([])
    r.uri = uri
    r.path = uri.partition(b"?")[0]
    for name, value in headers.items():
        r.requestHeaders.addRawHeader(name.replace("_", "-") if name != "org_id" else name, value)
    return r


@pytest.fixture
def resolver():
    return Resolver(CONFIG, Router(CONFIG.routes))


def test_a_request_resolves_to_route_params_tenant_query_and_key(resolver):
    r = request(b"/o/a%20b?z=1&a=2", org_id=b"t1")
    found = resolver.resolve(r)
    assert (found.route.type, found.params, found.tenant, found.query) == ("object", ("a b",), "t1", "a=2&z=1")
    assert (found.key.tenant, found.key.route, found.key.params) == ("t1", "object", ("a b",))
    assert (r.route_type, r.tenant) == ("object", "t1")


def test_a_request_seen_before_resolves_to_the_same_answer(resolver):
    first = resolver.resolve(request(b"/o/1", org_id=b"t1"))
    again = request(b"/o/1", org_id=b"t1")
    assert resolver.resolve(again) is first
    assert (again.route_type, again.tenant) == ("object", "t1")


def test_keyed_headers_are_part_of_the_key(resolver):
    plain = resolver.resolve(request(b"/o/1", org_id=b"t1"))
    french = resolver.resolve(request(b"/o/1", org_id=b"t1", accept_language=b"fr"))
    assert plain.key != french.key


@pytest.mark.parametrize(
    "uri, headers, error",
    [
        (b"/nowhere", {"org_id": b"t1"}, "no_route"),
        (b"/o/1", {}, "missing_tenant"),
    ],
)
def test_api_errors(resolver, uri, headers, error):
    with pytest.raises(ApiError) as e:
        resolver.resolve(request(uri, **headers))
    assert e.value.code == error


@pytest.mark.parametrize(
    "uri, headers, exception",
    [
        (b"/o/..%2Fx", {"org_id": b"t1"}, InvalidParameter),
        (b"/o/1", {"org_id": b"t 1"}, InvalidTenant),
        (b"/o/1", {"org_id": b"t\xe9"}, InvalidTenant),
        (b"/o/1?" + b"a" * 2049, {"org_id": b"t1"}, InvalidQuery),
    ],
)
def test_domain_errors_reach_the_caller(resolver, uri, headers, exception):
    with pytest.raises(exception):
        resolver.resolve(request(uri, **headers))


def test_the_claim_is_checked_even_for_a_remembered_request():
    config = parse_config(
        {
            "server": {"api_keys": ["k"], "tenant_claim": "zid"},
            "upstream": {"base_url": "http://up/api"},
            "routes": [{"type": "object", "path": "/o/<id>", "upstream": "/o/{id}"}],
        },
        "t.toml",
        {},
    )
    resolver = Resolver(config, Router(config.routes))
    good = b"Bearer h.eyJ6aWQiOiAidDEifQ.s"  # {"zid": "t1"}
    assert resolver.resolve(request(b"/o/1", org_id=b"t1", authorization=good)).tenant == "t1"
    with pytest.raises(ApiError) as e:
        resolver.resolve(request(b"/o/1", org_id=b"t1"))
    assert e.value.code == "tenant_mismatch"


def test_the_memos_are_bounded_in_entries_and_length(resolver):
    for i in range(MEMO_SIZE + 10):
        resolver.resolve(request(b"/o/%d" % i, org_id=b"t%d" % i))
    assert len(resolver._resolved) <= MEMO_SIZE
    assert len(resolver._tenants) <= MEMO_SIZE
    long = b"/o/" + b"a" * MEMO_REQUEST_BYTES
    resolver.resolve(request(long, org_id=b"t1"))
    assert all(seen[0] != long for seen in resolver._resolved)
