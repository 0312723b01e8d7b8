"""
Version 3's caching rules applied by the cache core (issue 20, SPEC.md
section 3): what is stored and for how long, weak revalidation, the
answer the fetching caller gets beside the stored copy, ``only-if-cached``
and stale rules, on a task.Clock with an upstream whose answers the test
hands out (the harness of C{test_rfc9111}).
"""

from __future__ import annotations

from rfc9111_support import CT, DATE, ETAG, KEY, Harness, route
from twisted.internet.defer import Deferred

from apicache.cache.tenant import HIT, MISS, REVALIDATED, STALE, CacheResult
from apicache.config import UpstreamConfig
from apicache.upstream.client import UpstreamUnreachable

LM = (b"last-modified", b"Sun, 06 Nov 1994 06:49:37 GMT")  # two hours before DATE


class _Rules(Harness):
    def cache(self):
        return self.registry.cache("t1", "object")

    def hit(self) -> CacheResult:
        r = self.get()
        assert isinstance(r, CacheResult), r
        return r


class StorableStatusTests(_Rules):
    """2. SPEC.md section 3 (v3), RFC 9111 section 3."""

    route = route(freshness="upstream", max_ttl=86400.0, negative_ttl=0.0)

    def test_a_301_with_max_age_is_fetched_once(self):
        """Issue 20: a 301 with max-age=3600 was fetched again every time."""
        moved = [CT, (b"location", b"/elsewhere"), (b"cache-control", b"max-age=3600")]
        r = self.fetched(self.get(), 301, b"", moved)
        assert (r.cache, r.member) == (MISS, b"apicache;fwd=uri-miss;fwd-status=301;stored")
        self.clock.advance(3599)
        hit = self.hit()
        assert (hit.cache, hit.response.status) == (HIT, 301)
        assert len(self.upstream.fetched) == 1

    def test_204_302_307_308_and_5xx_with_explicit_freshness_are_stored(self):
        for status in (203, 204, 302, 307, 308, 500, 503):
            r = self.fetched(self.get(), status, b"", [(b"cache-control", b"max-age=60")])
            assert r.stored, status
            assert self.hit().response.status == status
            self.store.discard(KEY)

    def test_a_302_without_freshness_is_passed_through(self):
        r = self.fetched(self.get(), 302, b"", [(b"location", b"/x")])
        assert (r.stored, r.member) == (False, b"apicache;fwd=uri-miss;fwd-status=302;detail=status")

    def test_a_5xx_while_a_stale_entry_may_be_served_replaces_nothing(self):
        """RFC 5861 section 4: the stale entry is served and kept."""
        self.fetched(self.get(), headers=[CT, (b"cache-control", b"max-age=5, stale-if-error=60")])
        self.clock.advance(6)
        r = self.fetched(self.get(), 503, b"down", [(b"cache-control", b"max-age=60")])
        assert (r.cache, r.response.status) == (STALE, 200)
        assert self.store.lookup(KEY).status == 200

    def test_must_understand_stores_despite_no_store(self):
        """RFC 9111 section 5.2.2.3."""
        r = self.fetched(self.get(), headers=[CT, (b"cache-control", b"must-understand, no-store, max-age=60")])
        assert r.stored and self.hit().cache == HIT


class RouteModeStatusTests(_Rules):
    route = route(ttl=10.0)

    def test_a_308_is_stored_for_ttl_a_201_is_not(self):
        """SPEC.md section 3 (v3): 200 203 204 300 301 308 with freshness = "route"."""
        assert self.fetched(self.get(), 308, b"", [(b"location", b"/x")]).stored
        assert self.hit().response.status == 308
        self.clock.advance(10)
        r = self.fetched(self.get(), 201, b"{}", [CT])
        assert r.member.endswith(b"fwd-status=201;detail=status")


class HeuristicTests(_Rules):
    """3. RFC 9111 section 4.2.2, SPEC.md section 2 (heuristic, ttl = 0, negative_ttl)."""

    route = route(freshness="upstream", ttl=0.0, keep=100.0)

    def test_fresh_for_a_tenth_of_its_age_then_revalidated(self):
        self.fetched(self.get(), headers=[CT, (b"date", DATE), LM])
        self.clock.advance(719)
        assert self.hit().cache == HIT
        self.clock.advance(1)
        d = self.get()
        assert isinstance(d, Deferred)
        assert (b"if-modified-since", LM[1]) in self.upstream.pending[0].headers
        assert self.fetched(d, 304, b"", [LM]).cache == REVALIDATED

    def test_ttl_0_stores_already_stale(self):
        """SPEC.md section 2 (v3): with freshness = "upstream", ttl = 0 is stored, revalidated before use."""
        r = self.fetched(self.get())
        assert r.stored
        d = self.get()
        assert isinstance(d, Deferred)
        assert (b"if-none-match", b'"v1"') in self.upstream.pending[0].headers
        assert self.fetched(d, 304, b"", [ETAG]).cache == REVALIDATED


class NegativeUpstreamTests(_Rules):
    route = route(freshness="upstream", negative_ttl=5.0)

    def test_negative_ttl_is_the_lifetime_of_a_404_without_freshness(self):
        """SPEC.md section 2 (v3)."""
        assert self.fetched(self.get(), 404, b"no", [CT]).stored
        self.clock.advance(4)
        assert self.hit().response.status == 404
        self.clock.advance(1)
        assert isinstance(self.get(), Deferred)


class TargetedTests(_Rules):
    """5. RFC 9213 section 2.2, for storing and freshness alike."""

    route = route(freshness="upstream", ttl=1.0)

    def test_cdn_cache_control_replaces_cache_control(self):
        headers = [CT, (b"cache-control", b"no-store"), (b"cdn-cache-control", b"max-age=120")]
        assert self.fetched(self.get(), headers=headers).stored
        self.clock.advance(119)
        assert self.hit().cache == HIT
        self.clock.advance(1)
        assert isinstance(self.get(), Deferred)

    def test_the_target_list_comes_from_upstream_targeted_cache_control(self):
        from apicache.cache.registry import CacheRegistry

        self.registry = CacheRegistry(
            self.store,
            self.upstream,
            self.clock,
            [self.route],
            (),
            upstream_config=UpstreamConfig(targeted_cache_control=()),
        )
        headers = [CT, (b"cache-control", b"no-store"), (b"cdn-cache-control", b"max-age=120")]
        r = self.fetched(self.get(), headers=headers)
        assert r.member.endswith(b"detail=no-store")


class WeakRevalidationTests(_Rules):
    """6. RFC 9111 section 4.3.4: the 304 selects the entry by weak comparison."""

    route = route(ttl=1.0, keep=60.0)

    def test_a_weak_etag_304_revalidates_with_one_upstream_request(self):
        weak = (b"etag", b'W/"1b-x"')
        self.fetched(self.get(), headers=[CT, weak])
        self.clock.advance(2)
        d = self.get()
        assert (b"if-none-match", b'W/"1b-x"') in self.upstream.pending[0].headers
        r = self.fetched(d, 304, b"", [weak])
        assert (r.cache, r.member) == (REVALIDATED, b"apicache;fwd=stale;fwd-status=304")
        assert len(self.upstream.fetched) == 2
        assert not self.upstream.pending


class HeaderFidelityTests(_Rules):
    """7. SPEC.md section 3 (v3), "Replayed headers"."""

    route = route(freshness="upstream", keep=60.0)

    def test_no_cache_named_fields_go_to_the_fetching_caller_only(self):
        """RFC 9111 section 5.2.2.4."""
        headers = [CT, ETAG, (b"cache-control", b'max-age=60, no-cache="x-user"'), (b"x-user", b"alice")]
        first = self.get()
        waiter = self.get()
        self.answer(headers=headers)
        leader, collapsed = self.successResultOf(first), self.successResultOf(waiter)
        assert (b"x-user", b"alice") in leader.response.headers
        assert b"X-User: alice" in leader.response.head
        assert collapsed.member.endswith(b"collapsed")
        assert (b"x-user", b"alice") not in collapsed.response.headers
        hit = self.hit()
        assert (b"x-user", b"alice") not in hit.response.headers and b"alice" not in hit.response.head

    def test_set_cookie_is_passed_on_a_miss_not_stored(self):
        headers = [CT, (b"cache-control", b"max-age=60"), (b"set-cookie", b"sid=1")]
        r = self.fetched(self.get(), headers=headers)
        assert (r.stored, r.member) == (False, b"apicache;fwd=uri-miss;fwd-status=200;detail=set-cookie")
        assert (b"set-cookie", b"sid=1") in r.response.headers
        # each caller fetches its own: no waiter is given another's cookie
        d1, d2 = self.get(), self.get()
        self.answer(headers=headers)
        assert (b"set-cookie", b"sid=1") in self.successResultOf(d1).response.headers
        assert len(self.upstream.pending) == 1
        self.answer(headers=[CT, (b"cache-control", b"max-age=60"), (b"set-cookie", b"sid=2")])
        assert (b"set-cookie", b"sid=2") in self.successResultOf(d2).response.headers

    def test_a_304_never_brings_set_cookie(self):
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"max-age=1")])
        self.clock.advance(2)
        r = self.fetched(self.get(), 304, b"", [ETAG, (b"set-cookie", b"sid=1"), (b"cache-control", b"max-age=60")])
        assert r.cache == REVALIDATED
        assert all(k != b"set-cookie" for k, _ in r.response.headers)
        assert all(k != b"set-cookie" for k, _ in self.hit().response.headers)

    def test_fields_named_by_connection_are_dropped_from_the_entry(self):
        """RFC 9110 section 7.6.1 (the client puts Twisted's connHeaders back)."""
        headers = [CT, (b"x-hop", b"1"), (b"connection", b"x-hop"), (b"cache-control", b"max-age=60")]
        r = self.fetched(self.get(), headers=headers)
        assert r.response.headers == (CT, (b"cache-control", b"max-age=60"), (b"date", r.response.headers[-1][1]))
        assert self.hit().response.head == r.response.head

    def test_a_listed_age_counts_by_its_first_value(self):
        """SPEC.md section 3 (v3): 'Age: 7200, 0' is 7200 seconds old."""
        r = self.fetched(self.get(), headers=[CT, (b"cache-control", b"max-age=3600"), (b"age", b"7200, 0")])
        assert r.age == 7200
        assert isinstance(self.get(), Deferred)


class OnlyIfCachedTests(_Rules):
    """9. RFC 9111 section 5.2.1.7: a stored answer or nothing, never the upstream."""

    route = route(freshness="upstream", stale_while_revalidate=30.0, keep=60.0)

    def test_nothing_stored_is_none_without_an_upstream_call(self):
        assert self.cache().cached(KEY) is None
        assert not self.upstream.fetched

    def test_a_fresh_entry_is_a_hit_and_a_stale_one_within_its_window_stale(self):
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"max-age=10")])
        assert self.cache().cached(KEY).cache == HIT
        self.clock.advance(11)
        r = self.cache().cached(KEY)
        assert r.cache == STALE
        # no background revalidation either
        assert not self.upstream.pending
        self.clock.advance(30)
        assert self.cache().cached(KEY) is None
        assert len(self.upstream.fetched) == 1

    def test_an_entry_to_revalidate_before_every_use_is_not_usable(self):
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"no-cache, max-age=60")])
        assert self.cache().cached(KEY) is None


class NoCacheNeverStaleTests(_Rules):
    """10. RFC 9111 section 5.2.2.4: without successful validation, never served."""

    route = route(freshness="upstream", stale_if_error=300.0, keep=600.0)

    def test_a_dropped_connection_does_not_serve_a_no_cache_entry_stale(self):
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"no-cache, max-age=60")])
        d = self.get()
        assert isinstance(d, Deferred)
        self.upstream.pending[0].fail(UpstreamUnreachable("the upstream closed the connection"))
        self.failureResultOf(d, UpstreamUnreachable)

    def test_a_5xx_does_not_serve_it_stale_either(self):
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"no-cache, max-age=60")])
        r = self.fetched(self.get(), 503, b"down", [CT])
        assert (r.cache, r.response.status) == (MISS, 503)

    def test_the_same_answer_without_no_cache_is_served_stale(self):
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"max-age=60")])
        self.clock.advance(61)
        d = self.get()
        self.upstream.pending[0].fail(UpstreamUnreachable("the upstream closed the connection"))
        assert self.successResultOf(d).cache == STALE
