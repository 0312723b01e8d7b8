"""
What events do to cached entries (SPEC.md section 5), deterministically:
``refresh`` (stale-marking, one background re-fetch), ``stale_if_error``,
and the race rule for events, on a task.Clock with an upstream whose
answers the test hands out.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.keys import CacheKey
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import HIT, MISS, STALE, CacheResult, FetchRequest
from apicache.config import RouteConfig
from apicache.store import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamUnreachable

ROUTE = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=10.0, stale_if_error=5.0, params=("id",), fingerprint="f")
KEY = CacheKey("t1", "object", ("1",), "v")
REQUEST = FetchRequest("/o/1", [(b"authorization", b"Bearer x")])
JSON = [(b"content-type", b"application/json")]


class EventEffectsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(1 << 20)
        self.upstream = FakeUpstream()
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, [ROUTE], ())

    def answer(self, status: int = 200, body: bytes = b"") -> None:
        """Answer the oldest fetch waiting."""
        self.upstream.pending[0].respond(status, body, JSON)

    def refuse(self) -> None:
        """Fail the oldest fetch waiting as a refused connection would."""
        self.upstream.pending[0].fail(UpstreamUnreachable("refused"))

    def get(self) -> CacheResult | Deferred[CacheResult]:
        return self.registry.cache("t1", "object").get(KEY, REQUEST)

    def cached(self, body: bytes = b"old") -> None:
        d = self.get()
        assert isinstance(d, Deferred)
        self.answer(body=body)
        self.assertEqual(self.successResultOf(d).cache, MISS)

    def refresh(self) -> None:
        self.assertEqual(self.successResultOf(self.registry.refresh(None, "object", ("1",))), 1)

    def now(self, result: object) -> CacheResult:
        assert isinstance(result, CacheResult), result
        return result

    def test_refresh_serves_stale_then_one_refetch_replaces_the_entry(self) -> None:
        self.cached()
        self.clock.advance(2)
        self.refresh()
        first = self.now(self.get())
        second = self.now(self.get())
        self.assertEqual((first.cache, first.response.body, first.age), (STALE, b"old", 2.0))
        self.assertEqual(second.cache, STALE)
        self.assertEqual(len(self.upstream.pending), 1, "one background re-fetch")
        self.assertEqual(self.upstream.fetched[-1].headers, REQUEST.headers)
        self.answer(body=b"new")
        fresh = self.now(self.get())
        self.assertEqual((fresh.cache, fresh.response.body), (HIT, b"new"))

    def test_a_refetch_that_is_not_a_200_drops_the_entry(self) -> None:
        self.cached()
        self.refresh()
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.answer(404, b"gone")
        self.assertIsNone(self.store.lookup(KEY))
        self.assertIsInstance(self.get(), Deferred)

    def test_a_failed_refetch_leaves_it_stale_and_retries_after_a_second(self) -> None:
        self.cached()
        self.refresh()
        self.now(self.get())
        self.refuse()
        self.clock.advance(0.5)
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.assertEqual(self.upstream.pending, [], "no retry within 1 s")
        self.clock.advance(0.5)
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.assertEqual(len(self.upstream.pending), 1)
        self.answer(503)
        self.assertEqual(self.now(self.get()).cache, STALE, "a 5xx is a failure too: still stale")

    def test_the_retry_second_counts_from_the_failure_of_a_slow_refetch(self) -> None:
        self.cached()
        self.refresh()
        self.now(self.get())
        self.clock.advance(3)
        self.refuse()
        self.clock.advance(0.9)
        self.now(self.get())
        self.assertEqual(self.upstream.pending, [])
        self.clock.advance(0.1)
        self.now(self.get())
        self.assertEqual(len(self.upstream.pending), 1)

    def test_a_stale_entry_is_never_served_past_expiry_plus_stale_if_error(self) -> None:
        self.cached()
        self.refresh()
        self.clock.advance(14.9)
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.refuse()
        self.clock.advance(0.2)
        d = self.get()
        self.assertIsInstance(d, Deferred)
        self.refuse()
        self.failureResultOf(d, UpstreamUnreachable)

    def test_stale_if_error_serves_an_expired_entry_when_the_upstream_fails(self) -> None:
        self.cached()
        self.clock.advance(11)
        d = self.get()
        self.refuse()
        served = self.successResultOf(d)
        self.assertEqual((served.cache, served.response.body, served.age), (STALE, b"old", 11.0))
        d = self.get()
        self.answer(502, b"bad gateway")
        self.assertEqual(self.successResultOf(d).cache, STALE)
        self.clock.advance(4.5)
        d = self.get()
        self.refuse()
        self.failureResultOf(d, UpstreamUnreachable)

    def test_an_event_during_a_fetch_wins(self) -> None:
        for apply in (self.registry.invalidate, self.registry.refresh):
            waiting = self.get()
            assert isinstance(waiting, Deferred)
            self.successResultOf(apply("t1", "object", ("1",)))
            self.answer(body=b"in flight")
            self.assertEqual(self.successResultOf(waiting).response.body, b"in flight")
            self.assertIsNone(self.store.lookup(KEY), "not stored")
            after = self.get()
            self.assertIsInstance(after, Deferred, "a new fetch")
            self.answer(body=b"after")
            self.assertEqual(self.successResultOf(after).cache, MISS)
            self.assertEqual(self.now(self.get()).cache, HIT)
            self.successResultOf(self.registry.invalidate(None, "object", ("1",)))
