"""
The serving rule of bounded staleness (SPEC.md section 5) in the cache
core, with a fake upstream, the event watermark and a task.Clock: an entry
of a route with ``max_staleness`` is served from the cache only while
now − max(F, W) ≤ max_staleness, before every other serving rule.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.keys import CacheKey
from apicache.cache.policy import within_staleness
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import HIT, MISS, REVALIDATED, STALE, STALENESS_SPREAD, CacheResult, FetchRequest
from apicache.config import RouteConfig
from apicache.events.watermark import Watermark
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamUnreachable

BOUNDED = RouteConfig(
    "object", "/o/<id>", "/o/{id}", ttl=300.0, stale_if_error=600.0, max_staleness=5.0, params=("id",), fingerprint="f"
)
PLAIN = RouteConfig("template", "/t/<id>", "/t/{id}", ttl=300.0, params=("id",), fingerprint="g")
P = ("events", 0)


def key(id: str = "1", route: str = "object") -> CacheKey:
    return CacheKey("t1", route, (id,), "v")


def req() -> FetchRequest:
    return FetchRequest("/o/1", [(b"authorization", b"Bearer a")])


class Harness:
    def __init__(self, watermark: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(1 << 20)
        self.upstream = FakeUpstream()
        self.watermark = Watermark(self.clock) if watermark else None
        if self.watermark is not None:
            self.watermark.set_partitions([P])
            self.watermark.assign([P])
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, [BOUNDED, PLAIN], ("accept",), watermark=self.watermark)

    def cache(self, route: str = "object"):
        return self.registry.cache("t1", route)

    def get(self, k: CacheKey | None = None, route: str = "object") -> CacheResult | Deferred[CacheResult]:
        return self.cache(route).get(k or key(route=route), req())

    def vouch(self) -> None:
        """An end-offset query sent now, answered at the applied offset."""
        assert self.watermark is not None
        self.watermark.vouch([P], self.clock.seconds())


def bound(k: CacheKey) -> float:
    """The bound of ``k`` once shortened by its spread."""
    return BOUNDED.max_staleness * (1 - (hash(k) & 0xFFFF) / 0x10000 * STALENESS_SPREAD)


class StalenessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def prime(self, k: CacheKey | None = None, latency: float = 0.0) -> CacheResult:
        d = self.h.get(k)
        assert isinstance(d, Deferred)
        self.h.clock.advance(latency)
        self.h.upstream.pending[-1].respond(body=b"one")
        return self.successResultOf(d)

    def test_the_fetch_time_is_when_the_request_was_sent(self) -> None:
        sent = self.h.clock.seconds()
        r = self.prime(latency=2.0)
        assert r.cache == MISS
        assert r.response.sent_at == sent
        assert r.response.stored_at == sent + 2.0

    def test_while_the_events_vouch_an_entry_is_a_hit_for_its_whole_ttl(self) -> None:
        self.prime()
        for _ in range(100):
            self.h.clock.advance(2.5)
            self.h.vouch()
            hit = self.h.cache().hit(key())
            assert hit is not None and hit.cache == HIT
        assert len(self.h.upstream.fetched) == 1

    def test_without_the_events_an_entry_is_served_until_its_bound_then_fetched_again(self) -> None:
        k = key()
        self.prime(k, latency=1.0)  # F is when the request was sent, 1 s before the answer
        b = bound(k)
        assert BOUNDED.max_staleness * (1 - STALENESS_SPREAD) <= b <= BOUNDED.max_staleness
        self.h.clock.advance(b - 1.0 - 0.001)
        assert self.h.cache().hit(k) is not None, "the fast path serves it within the bound"
        assert isinstance(self.h.get(k), CacheResult)
        self.h.clock.advance(0.002)
        assert self.h.cache().hit(k) is None, "the fast path refuses it past the bound"
        d = self.h.get(k)
        assert isinstance(d, Deferred)
        self.h.upstream.pending[-1].respond(body=b"two")
        r = self.successResultOf(d)
        assert (r.cache, r.response.body) == (MISS, b"two")
        assert r.member == b"apicache;fwd=stale;fwd-status=200;stored;detail=events-behind"
        assert self.h.registry.counters["events_behind"] == 1
        again = self.h.get(k)
        assert isinstance(again, CacheResult) and again.cache == HIT

    def test_w_carries_an_entry_past_its_fetch_time(self) -> None:
        k = key()
        self.prime(k)
        self.h.clock.advance(4.0)
        self.h.vouch()  # W = F + 4
        self.h.clock.advance(bound(k) - 0.01)
        assert self.h.cache().hit(k) is not None
        self.h.clock.advance(0.02)
        assert self.h.cache().hit(k) is None

    def test_past_the_bound_concurrent_callers_share_one_fetch(self) -> None:
        self.prime()
        self.h.clock.advance(10)
        ds = [self.h.get() for _ in range(5)]
        assert len(self.h.upstream.pending) == 1
        self.h.upstream.pending[0].respond(body=b"two")
        members = {(r.cache, r.member) for r in (self.successResultOf(d) for d in ds)}
        assert members == {
            (MISS, b"apicache;fwd=stale;fwd-status=200;stored;detail=events-behind"),
            (MISS, b"apicache;fwd=stale;fwd-status=200;stored;collapsed;detail=events-behind"),
        }

    def test_past_the_bound_nothing_stale_is_served_on_an_upstream_failure(self) -> None:
        self.prime()
        # within the bound stale-if-error applies
        self.h.clock.advance(301)
        self.h.vouch()
        d = self.h.get()
        self.h.upstream.pending[-1].fail(UpstreamUnreachable("refused"))
        assert self.successResultOf(d).cache == STALE
        # past it, it does not
        self.h.clock.advance(10)
        d = self.h.get()
        self.h.upstream.pending[-1].fail(UpstreamUnreachable("refused"))
        self.failureResultOf(d, UpstreamUnreachable)

    def test_the_bound_passing_while_the_fetch_runs_forbids_stale_if_error(self) -> None:
        self.prime()
        self.h.clock.advance(301)
        self.h.vouch()
        d = self.h.get()
        self.h.clock.advance(10)
        self.h.upstream.pending[-1].fail(UpstreamUnreachable("refused"))
        self.failureResultOf(d, UpstreamUnreachable)

    def test_a_refreshed_entry_is_not_served_stale_past_the_bound(self) -> None:
        k = key()
        self.prime(k)
        self.successResultOf(self.h.registry.refresh("t1", "object", ("1",)))
        r = self.h.get(k)
        assert isinstance(r, CacheResult) and r.cache == STALE
        self.h.upstream.pending[-1].fail(UpstreamUnreachable("refused"))
        self.h.clock.advance(10)
        d = self.h.get(k)
        assert isinstance(d, Deferred), "past the bound a refreshed entry is fetched, not served stale"

    def test_entries_fetched_before_a_skip_are_judged_by_their_fetch_time(self) -> None:
        k = key()
        self.prime(k)
        self.h.clock.advance(1.0)
        assert self.h.watermark is not None
        self.h.watermark.skip(self.h.clock.seconds())
        for _ in range(20):
            self.h.clock.advance(0.5)
            self.h.vouch()
        assert self.h.cache().hit(k) is None
        # fetched after the skip: W vouches for it
        d = self.h.get(k)
        self.h.upstream.pending[-1].respond(body=b"two")
        self.successResultOf(d)
        for _ in range(20):
            self.h.clock.advance(0.5)
            self.h.vouch()
        assert self.h.cache().hit(k) is not None

    def test_past_the_bound_an_entry_with_a_validator_is_revalidated_and_a_304_vouches_again(self) -> None:
        k = key()
        d = self.h.get(k)
        self.h.upstream.pending[-1].respond(body=b"one", headers=[(b"etag", b'"v1"')])
        self.successResultOf(d)
        self.h.clock.advance(10)
        d = self.h.get(k)
        assert isinstance(d, Deferred)
        ask = self.h.upstream.pending[-1]
        assert (b"if-none-match", b'"v1"') in list(ask.headers)
        sent = self.h.clock.seconds()
        self.h.clock.advance(0.5)
        ask.respond(status=304, body=b"", headers=[(b"etag", b'"v1"')])
        r = self.successResultOf(d)
        assert (r.cache, r.response.body) == (REVALIDATED, b"one")
        assert r.member == b"apicache;fwd=stale;fwd-status=304;detail=events-behind"
        assert r.response.sent_at == sent, "F is when the revalidation was sent"
        hit = self.h.cache().hit(k)
        assert hit is not None and hit.cache == HIT

    def test_a_route_without_max_staleness_is_not_bounded(self) -> None:
        d = self.h.get(route="template")
        self.h.upstream.pending[-1].respond()
        self.successResultOf(d)
        self.h.clock.advance(299)
        assert self.h.cache("template").hit(key(route="template")) is not None

    def test_without_a_watermark_entries_are_judged_by_their_fetch_time(self) -> None:
        h = Harness(watermark=False)
        d = h.get()
        h.upstream.pending[-1].respond()
        self.successResultOf(d)
        h.clock.advance(5.01)
        assert h.cache().hit(key()) is None

    def test_re_fetches_are_spread_over_a_fifth_of_the_bound(self) -> None:
        keys = [key(str(i)) for i in range(200)]
        for k in keys:
            self.prime(k)
        served = []
        for _ in range(60):
            self.h.clock.advance(0.1)
            served.append(sum(1 for k in keys if self.h.cache().hit(k) is not None))
        # all served for the first 4 s, none after 5 s, some in between
        assert served[38] == 200
        assert served[50] == 0
        assert any(0 < n < 200 for n in served[39:50])
        assert len({n for n in served[39:50]}) > 5, "spread, not all at once"


def test_within_staleness() -> None:
    assert within_staleness(100.0, 0.0, 1e9), "no bound"
    assert within_staleness(100.0, 5.0, 105.0)
    assert not within_staleness(100.0, 5.0, 105.001)
    assert not within_staleness(float("-inf"), 5.0, 0.0)
