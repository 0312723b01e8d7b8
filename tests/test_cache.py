"""
The cache core: hits, misses, coalescing, the waiter rules, the race rule,
TTLs and the tenant registry (SPEC.md section 3), with a fake upstream and
a task.Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.keys import CacheKey
from apicache.cache.policy import is_storable
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import BYPASS, DEFAULT_VARYING, HIT, MISS, STALE, CacheResult, FetchRequest
from apicache.config import RouteConfig
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import Overloaded, UpstreamResponse, UpstreamUnreachable

ROUTE = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=10.0, params=("id",), fingerprint="f")
STALE_ROUTE = RouteConfig("template", "/t/<id>", "/t/{id}", ttl=10.0, stale_if_error=5.0, params=("id",), fingerprint="g")
KEYED = ("accept", "accept-language")


def key(tenant="t1", route="object", id="1", variant="v"):
    return CacheKey(tenant, route, (id,), variant)


def req(token=b"Bearer a"):
    return FetchRequest("/o/1", [(b"authorization", token)])


class Harness:
    def __init__(self, max_tenants=100, max_in_flight=1000, max_bytes=1 << 20):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(max_bytes)
        self.upstream = FakeUpstream(max_in_flight=max_in_flight)
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, [ROUTE, STALE_ROUTE], KEYED, max_tenants)

    def get(self, tenant="t1", k=None, request=None, route="object"):
        k = k or key(tenant, route)
        return self.registry.cache(tenant, route).get(k, request or req())


class CacheTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness()

    def test_miss_fetches_then_hit_is_synchronous(self):
        d = self.h.get()
        assert isinstance(d, Deferred)
        assert len(self.h.upstream.pending) == 1
        self.h.upstream.pending[0].respond(body=b"one")
        first = self.successResultOf(d)
        assert (first.cache, first.response.body) == (MISS, b"one")
        self.h.clock.advance(3)
        second = self.h.get()
        assert isinstance(second, CacheResult)
        assert (second.cache, second.response.body, second.age) == (HIT, b"one", 3)
        assert len(self.h.upstream.fetched) == 1

    def test_fetch_carries_the_callers_headers(self):
        self.h.get(request=req(b"Bearer mine"))
        assert self.h.upstream.pending[0].headers == [(b"authorization", b"Bearer mine")]
        assert self.h.upstream.pending[0].path == "/o/1"

    def test_entry_expires_after_its_ttl(self):
        d = self.h.get()
        self.h.upstream.pending[0].respond()
        self.successResultOf(d)
        self.h.clock.advance(9.9)
        assert isinstance(self.h.get(), CacheResult)
        self.h.clock.advance(0.2)
        d2 = self.h.get()
        assert isinstance(d2, Deferred)
        assert len(self.h.upstream.pending) == 1

    def test_concurrent_misses_share_one_fetch(self):
        ds = [self.h.get() for _ in range(50)]
        assert len(self.h.upstream.fetched) == 1
        self.h.upstream.pending[0].respond(body=b"shared")
        results = [self.successResultOf(d) for d in ds]
        assert {(r.cache, r.response.body) for r in results} == {(MISS, b"shared")}
        assert self.h.registry.counters["coalesced"] == 49

    def test_waiters_fetch_with_their_own_headers_when_the_leader_gets_401(self):
        leader = self.h.get(request=req(b"Bearer bad"))
        waiter = self.h.get(request=req(b"Bearer good"))
        self.h.upstream.pending[0].respond(status=401, body=b"no")
        assert self.successResultOf(leader).response.status == 401
        assert not waiter.called
        assert self.h.upstream.pending[0].headers == [(b"authorization", b"Bearer good")]
        self.h.upstream.pending[0].respond(body=b"yes")
        r = self.successResultOf(waiter)
        assert (r.response.status, r.response.body) == (200, b"yes")

    def test_waiters_do_not_share_an_answer_that_is_not_storable(self):
        leader = self.h.get()
        waiter = self.h.get()
        self.h.upstream.pending[0].respond(headers=[(b"set-cookie", b"s=1")])
        self.successResultOf(leader)
        assert len(self.h.upstream.pending) == 1
        self.assertNoResult(waiter)
        self.h.upstream.pending[0].respond(body=b"own")
        assert self.successResultOf(waiter).response.body == b"own"

    def test_upstream_failure_reaches_every_waiter(self):
        ds = [self.h.get() for _ in range(3)]
        self.h.upstream.pending[0].fail(UpstreamUnreachable("refused"))
        for d in ds:
            self.failureResultOf(d, UpstreamUnreachable)
        # nothing was stored and the next request fetches again
        assert isinstance(self.h.get(), Deferred)
        assert len(self.h.upstream.pending) == 1

    def test_overload_is_an_error_not_a_hang(self):
        h = Harness(max_in_flight=1)
        first = h.get(k=key(id="1"))
        second = h.get(k=key(id="2"))
        self.failureResultOf(second, Overloaded)
        assert not first.called

    def test_non_200_is_passed_through_and_not_stored(self):
        """SPEC.md section 3 (v2): passed-through answers go through the same filter."""
        for status in (503, 404, 302):
            d = self.h.get(k=key(id=str(status)))
            self.h.upstream.pending[0].respond(
                status=status, headers=[(b"location", b"/x"), (b"x-other", b"1"), (b"keep-alive", b"timeout=5")]
            )
            r = self.successResultOf(d)
            assert (r.cache, r.response.status) == (MISS, status)
            assert (b"location", b"/x") in r.response.headers
            assert (b"x-other", b"1") in r.response.headers
            assert all(k != b"keep-alive" for k, _ in r.response.headers)
            assert self.h.store.lookup(key(id=str(status))) is None
            assert b"detail=status" in r.member

    def test_only_the_stored_headers_are_kept(self):
        d = self.h.get(request=FetchRequest("/o/1", [], b"gzip"))
        self.h.upstream.pending[0].respond(
            headers=[
                (b"content-type", b"application/json"),
                (b"content-encoding", b"gzip"),
                (b"etag", b'"1"'),
                (b"connection", b"close"),
                (b"x-internal", b"secret"),
            ]
        )
        self.successResultOf(d)
        # a gzip answer is a variant of its key (SPEC.md section 3, v3)
        stored = self.h.get(request=FetchRequest("/o/1", [], b"gzip")).response
        assert stored.headers[:4] == (
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"etag", b'"1"'),
            (b"x-internal", b"secret"),
        )
        assert [k for k, _ in stored.headers[4:]] == [b"date"]

    def test_cancelling_a_caller_does_not_cancel_the_shared_fetch(self):
        leader = self.h.get()
        waiter = self.h.get()
        leader.cancel()
        self.failureResultOf(leader)
        assert not self.h.upstream.pending[0].deferred.called
        self.h.upstream.pending[0].respond(body=b"late")
        assert self.successResultOf(waiter).response.body == b"late"
        assert self.h.store.lookup(key()).body == b"late"

    def test_invalidation_during_a_fetch_wins(self):
        early = self.h.get()
        self.successResultOf(self.h.registry.invalidate("t1", "object", ("1",)))
        late = self.h.get()
        assert len(self.h.upstream.pending) == 2
        self.h.upstream.pending[0].respond(body=b"old")
        assert self.successResultOf(early).response.body == b"old"
        assert self.h.store.lookup(key()) is None
        assert not late.called
        self.h.upstream.pending[0].respond(body=b"new")
        assert self.successResultOf(late).response.body == b"new"
        assert self.h.store.lookup(key()).body == b"new"

    def test_invalidation_for_every_tenant_and_clear_win_too(self):
        for invalidate in (
            lambda: self.h.registry.invalidate(None, "object", ("1",)),
            lambda: self.h.registry.clear("t1"),
            lambda: self.h.registry.clear(None),
        ):
            d = self.h.get()
            self.successResultOf(invalidate())
            self.h.upstream.pending[0].respond()
            self.successResultOf(d)
            assert self.h.store.lookup(key()) is None

    def test_invalidation_of_another_tenant_does_not_disturb_a_fetch(self):
        d = self.h.get()
        self.successResultOf(self.h.registry.invalidate("t2", "object", ("1",)))
        self.h.upstream.pending[0].respond()
        self.successResultOf(d)
        assert self.h.store.lookup(key()) is not None

    def test_invalidate_counts_dropped_variants(self):
        for v in ("a", "b"):
            d = self.h.get(k=key(variant=v))
            self.h.upstream.pending[0].respond()
            self.successResultOf(d)
        assert self.successResultOf(self.h.registry.invalidate("t1", "object", ("1",))) == 2
        assert isinstance(self.h.get(k=key(variant="a")), Deferred)

    def test_tenants_are_isolated(self):
        d = self.h.get("t1")
        self.h.upstream.pending[0].respond(body=b"t1")
        self.successResultOf(d)
        other = self.h.get("t2")
        assert isinstance(other, Deferred)

    def test_stale_if_error_serves_an_expired_entry_when_the_upstream_fails(self):
        d = self.h.get(route="template")
        self.h.upstream.pending[0].respond(body=b"kept")
        self.successResultOf(d)
        self.h.clock.advance(12)
        d = self.h.get(route="template")
        self.h.upstream.pending[0].fail(UpstreamUnreachable("down"))
        r = self.successResultOf(d)
        assert (r.cache, r.response.body, r.age) == (STALE, b"kept", 12)
        d = self.h.get(route="template")
        self.h.upstream.pending[0].respond(status=503)
        assert self.successResultOf(d).cache == STALE
        self.h.clock.advance(4)
        d = self.h.get(route="template")
        self.h.upstream.pending[0].fail(UpstreamUnreachable("down"))
        self.failureResultOf(d, UpstreamUnreachable)

    def test_registry_reclaims_idle_caches_first(self):
        h = Harness(max_tenants=2)
        busy = h.get("a")
        idle = h.get("b", k=key("b"))
        h.upstream.pending[1].respond()
        self.successResultOf(idle)
        h.get("c", k=key("c"))
        assert len(h.registry) == 2
        assert ("a", "object") in h.registry._caches
        assert ("b", "object") not in h.registry._caches
        # SPEC v2 (section 2, max_tenants): reclaiming never drops entries
        assert h.store.lookup(key("b")) is not None
        assert not busy.called

    def test_clear_releases_idle_tenant_caches(self):
        for t in ("a", "b"):
            d = self.h.get(t, k=key(t))
            self.h.upstream.pending[-1].respond()
            self.successResultOf(d)
        busy = self.h.get("c", k=key("c"))
        self.successResultOf(self.h.registry.clear("a"))
        assert self.h.registry.tenants() == 2
        self.successResultOf(self.h.registry.clear(None))
        assert self.h.registry.tenants() == 0
        self.h.upstream.pending[-1].respond()
        assert self.successResultOf(busy).cache == MISS
        assert self.h.store.lookup(key("c")) is None

    def test_info_counts_tenants(self):
        self.h.get("a")
        self.h.get("b", k=key("b"))
        self.h.get("a", route="template", k=key("a", "template"))
        assert self.h.registry.tenants() == 2


def response(status=200, headers=()):
    return UpstreamResponse(status, list(headers), b"")


@pytest.mark.parametrize(
    "resp, storable",
    [
        (response(), True),
        (response(headers=[(b"cache-control", b"max-age=60, public")]), True),
        (response(headers=[(b"vary", b"Accept-Language, accept")]), True),
        (response(201), False),
        (response(headers=[(b"cache-control", b"no-store")]), False),
        (response(headers=[(b"cache-control", b"max-age=1, Private")]), False),
        (response(headers=[(b"set-cookie", b"a=1")]), False),
        (response(headers=[(b"vary", b"*")]), False),
        (response(headers=[(b"vary", b"authorization")]), False),
        # SPEC.md section 3 (v2): cookie is not forwarded: the same for every caller
        (response(headers=[(b"vary", b"cookie")]), True),
        (response(headers=[(b"vary", b"accept-encoding")]), True),
    ],
)
def test_only_plain_200_answers_are_storable(resp, storable):
    assert is_storable(resp.status, resp.headers, DEFAULT_VARYING) is storable


def test_bypass_constant_is_spelled_as_the_spec_says():
    assert (HIT, MISS, STALE, BYPASS) == ("HIT", "MISS", "STALE", "BYPASS")


def test_the_registry_provides_the_invalidation_seam():
    """The HTTP API and the event handler reach the registry through IInvalidator."""
    from zope.interface.verify import verifyObject

    from apicache.cache.invalidator import IInvalidator

    registry = CacheRegistry(MemoryStore(1 << 20), FakeUpstream(), Clock(), [], ())
    assert verifyObject(IInvalidator, registry)
