"""
The cache core's RFC 9111 behaviour (SPEC.md section 3, v2): upstream
freshness, revalidation with the stored validators, 304 handling,
stale-while-revalidate, negative caching, Cache-Status members and what is
not stored, on a task.Clock with an upstream whose answers the test hands
out.
"""

from __future__ import annotations

from rfc9111_support import CT, DATE, ETAG, KEY, Harness, request, route
from twisted.internet.defer import Deferred

from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import HIT, MISS, REVALIDATED, STALE
from apicache.store.memory import MemoryStore
from apicache.upstream.client import UpstreamUnreachable


class UpstreamFreshnessTests(Harness):
    route = route(freshness="upstream", max_ttl=100.0, ttl=10.0)

    def test_max_age_decides_and_age_counts_from_the_corrected_initial_age(self):
        """RFC 9111 sections 4.2.1 and 4.2.3."""
        r = self.fetched(self.get(), headers=[CT, (b"cache-control", b"max-age=60"), (b"age", b"20")])
        # on a MISS a non-zero upstream Age is passed on
        assert (r.cache, r.age) == (MISS, 20)
        self.clock.advance(30)
        hit = self.now(self.get())
        assert (hit.cache, hit.age) == (HIT, 50)
        self.clock.advance(10)
        assert isinstance(self.get(), Deferred)

    def test_max_ttl_caps_the_upstream_lifetime(self):
        self.fetched(self.get(), headers=[CT, (b"cache-control", b"max-age=100000")])
        self.clock.advance(99)
        assert self.now(self.get()).cache == HIT
        self.clock.advance(1)
        assert isinstance(self.get(), Deferred)

    def test_expires_zero_is_already_stale(self):
        self.fetched(self.get(), headers=[CT, (b"date", DATE), (b"expires", b"0")])
        assert isinstance(self.get(), Deferred)

    def test_no_cache_is_stored_but_revalidated_before_every_use(self):
        """RFC 9111 section 5.2.2.4."""
        self.fetched(self.get(), headers=[CT, ETAG, (b"cache-control", b"no-cache, max-age=60")])
        d = self.get()
        assert isinstance(d, Deferred)
        assert self.upstream.pending[0].headers[-1] == (b"if-none-match", b'"v1"')
        r = self.fetched(d, 304, b"", [ETAG])
        assert (r.cache, r.response.body, r.member) == (REVALIDATED, b"{}", b"apicache;fwd=stale;fwd-status=304")

    def test_must_revalidate_forbids_stale_if_error(self):
        """RFC 9111 section 5.2.2.2."""
        self.fetched(self.get(), headers=[CT, (b"cache-control", b"max-age=5, must-revalidate, stale-if-error=60")])
        self.clock.advance(6)
        d = self.get()
        self.upstream.pending[0].fail(UpstreamUnreachable("refused"))
        self.failureResultOf(d, UpstreamUnreachable)

    def test_upstream_stale_if_error_overrides_the_route(self):
        """RFC 5861 section 4."""
        self.fetched(self.get(), headers=[CT, (b"cache-control", b"max-age=5, stale-if-error=60")])
        self.clock.advance(30)
        d = self.get()
        self.upstream.pending[0].fail(UpstreamUnreachable("refused"))
        r = self.successResultOf(d)
        assert (r.cache, r.member) == (STALE, b"apicache;fwd=stale;detail=stale-if-error")


class RevalidationTests(Harness):
    route = route(keep=100.0, stale_if_error=5.0)

    def cached(self, headers=(CT, ETAG, (b"x-a", b"1"))):
        r = self.fetched(self.get(), headers=headers)
        assert r.member == b"apicache;fwd=uri-miss;fwd-status=200;stored"
        self.clock.advance(11)

    def test_expired_entry_is_revalidated_with_the_callers_headers(self):
        self.cached()
        d = self.get(request(b"Bearer b"))
        sent = self.upstream.pending[0].headers
        assert (b"authorization", b"Bearer b") in sent
        assert (b"if-none-match", b'"v1"') in sent
        r = self.fetched(d, 304, b"", [ETAG, (b"x-a", b"2"), (b"content-length", b"0"), (b"cache-control", b"max-age=3")])
        assert (r.cache, r.response.body, r.age) == (REVALIDATED, b"{}", 0)
        assert (b"x-a", b"2") in r.response.headers and (b"x-a", b"1") not in r.response.headers
        assert all(k != b"content-length" for k, _ in r.response.headers)
        assert self.now(self.get()).cache == HIT
        assert len(self.upstream.fetched) == 2

    def test_concurrent_callers_coalesce_on_one_revalidation(self):
        self.cached()
        ds = [self.get() for _ in range(5)]
        assert len(self.upstream.pending) == 1
        self.answer(304, b"", [ETAG])
        results = [self.successResultOf(d) for d in ds]
        assert {r.cache for r in results} == {REVALIDATED}
        assert results[1].member == b"apicache;fwd=stale;fwd-status=304;collapsed"

    def test_last_modified_alone_revalidates(self):
        lm = (b"last-modified", DATE)
        self.cached(headers=(CT, lm))
        d = self.get()
        assert (b"if-modified-since", DATE) in self.upstream.pending[0].headers
        assert self.fetched(d, 304, b"", [lm]).cache == REVALIDATED

    def test_a_304_that_matches_nothing_leads_to_an_unconditional_fetch(self):
        """RFC 9111 section 4.3.3."""
        self.cached()
        d = self.get()
        self.answer(304, b"", [(b"etag", b'"other"')])
        assert all(not k.startswith(b"if-") for k, _ in self.upstream.pending[0].headers)
        r = self.fetched(d, 200, b"new", [CT, (b"etag", b'"v2"')])
        assert (r.cache, r.response.body) == (MISS, b"new")
        assert r.member == b"apicache;fwd=stale;fwd-status=200;stored"

    def test_a_304_with_no_store_drops_the_entry(self):
        self.cached()
        d = self.get()
        r = self.fetched(d, 304, b"", [ETAG, (b"cache-control", b"no-store")])
        assert r.cache == REVALIDATED and r.response.body == b"{}"
        assert self.store.lookup(KEY) is None

    def test_a_200_replaces_the_entry(self):
        self.cached()
        r = self.fetched(self.get(), 200, b"new")
        assert (r.cache, r.response.body) == (MISS, b"new")
        assert self.now(self.get()).response.body == b"new"

    def test_a_5xx_serves_stale_if_error_and_keeps_the_entry(self):
        self.cached()
        r = self.fetched(self.get(), 503, b"down", [CT])
        assert (r.cache, r.response.body) == (STALE, b"{}")

    def test_a_304_to_an_unconditional_request_is_a_bad_upstream(self):
        """SPEC.md section 4: 502 upstream_unreachable."""
        d = self.get()
        self.answer(304, b"", [ETAG])
        self.failureResultOf(d, UpstreamUnreachable)

    def test_an_entry_without_validator_is_fetched_unconditionally(self):
        self.cached(headers=(CT,))
        d = self.get()
        assert all(not k.startswith(b"if-") for k, _ in self.upstream.pending[0].headers)
        self.fetched(d)

    def test_past_keep_the_validators_are_not_used(self):
        self.cached()
        self.clock.advance(100)
        d = self.get()
        assert all(not k.startswith(b"if-") for k, _ in self.upstream.pending[0].headers)
        self.fetched(d)


class StaleWhileRevalidateTests(Harness):
    route = route(stale_while_revalidate=30.0)

    def cached(self):
        self.fetched(self.get())
        self.clock.advance(12)

    def test_stale_is_served_at_once_and_one_revalidation_runs(self):
        self.cached()
        r = self.now(self.get(request(b"Bearer first")))
        assert (r.cache, r.member) == (STALE, None)
        assert len(self.upstream.pending) == 1
        assert (b"authorization", b"Bearer first") in self.upstream.pending[0].headers
        assert (b"if-none-match", b'"v1"') in self.upstream.pending[0].headers
        assert self.now(self.get()).cache == STALE
        assert len(self.upstream.pending) == 1
        self.answer(304, b"", [ETAG])
        assert self.now(self.get()).cache == HIT

    def test_a_2xx_replaces_a_404_drops_a_403_leaves_it_stale(self):
        self.cached()
        self.now(self.get())
        self.answer(403, b"no", [CT])
        assert self.store.lookup(KEY).body == b"{}"
        # retried no sooner than a second later
        self.now(self.get())
        assert not self.upstream.pending
        self.clock.advance(1)
        self.now(self.get())
        self.answer(200, b"new", [CT])
        assert self.now(self.get()).response.body == b"new"
        self.clock.advance(12)
        self.now(self.get())
        self.answer(404, b"gone", [CT])
        assert self.store.lookup(KEY) is None

    def test_a_failure_is_retried_a_second_later(self):
        self.cached()
        self.now(self.get())
        self.upstream.pending[0].fail(UpstreamUnreachable("refused"))
        self.clock.advance(0.5)
        self.now(self.get())
        assert not self.upstream.pending
        self.clock.advance(0.6)
        self.now(self.get())
        assert len(self.upstream.pending) == 1

    def test_past_the_window_it_is_a_revalidation(self):
        self.cached()
        self.clock.advance(30)
        assert isinstance(self.get(), Deferred)


class NegativeAndNotStoredTests(Harness):
    route = route(negative_ttl=5.0)

    def test_404_is_stored_for_negative_ttl(self):
        r = self.fetched(self.get(), 404, b"nope", [CT])
        assert r.member == b"apicache;fwd=uri-miss;fwd-status=404;stored"
        assert self.now(self.get()).response.status == 404
        self.clock.advance(5)
        assert isinstance(self.get(), Deferred)

    def test_an_encoding_not_asked_for_is_passed_through_not_stored(self):
        r = self.fetched(self.get(), headers=[CT, (b"content-encoding", b"gzip")])
        assert (r.cache, r.stored) == (MISS, False)
        assert r.member == b"apicache;fwd=uri-miss;fwd-status=200;detail=encoding"
        assert self.store.lookup(KEY) is None

    def test_gzip_is_stored_when_asked_for(self):
        d = self.get(request(encoding=b"gzip"))
        assert (b"accept-encoding", b"gzip") in self.upstream.pending[0].headers
        r = self.fetched(d, headers=[CT, (b"content-encoding", b"gzip")])
        assert r.stored

    def test_vary_star_is_not_stored(self):
        """
        RFC 9111 section 4.1: C{Vary: *} matches no request.  (v3: a Vary
        on a forwarded unkeyed header is stored, one variant per value:
        tests/test_cache_variants.py.)
        """
        r = self.fetched(self.get(), headers=[CT, (b"vary", b"Authorization, *")])
        assert r.member.endswith(b"detail=vary")

    def test_too_large_says_so(self):
        self.store.max_entry_bytes = 10
        r = self.fetched(self.get(), body=b"x" * 100)
        assert r.member.endswith(b"detail=too-large")


class _DownStore(MemoryStore):
    """A store whose writes can't be reached, as Redis down would be."""

    def begin(self, key):
        from twisted.internet.defer import fail

        from apicache.store.interface import StoreUnavailable

        return fail(StoreUnavailable("down"))


class BypassTests(Harness):
    def test_a_store_that_is_down_is_bypassed_and_says_so(self):
        self.store = _DownStore(1 << 20)
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, [self.route], ())
        r = self.fetched(self.get())
        assert (r.cache, r.member, r.stored) == ("BYPASS", b"apicache;fwd=miss;detail=store-unavailable", False)
