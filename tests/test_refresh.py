"""
What events do to cached entries (SPEC.md section 5), deterministically:
``refresh`` (stale-marking, one background re-fetch), ``stale_if_error``,
and the race rule for events, on a task.Clock with an upstream whose
answers the test hands out.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache import HIT, MISS, STALE, CacheRegistry, CacheResult, FetchRequest
from apicache.config import RouteConfig
from apicache.keys import CacheKey
from apicache.store import MemoryStore
from apicache.upstream import UpstreamResponse, UpstreamUnreachable

ROUTE = RouteConfig("object", "/o/<id>", "/o/{id}", ttl=10.0, stale_if_error=5.0, params=("id",), fingerprint="f")
KEY = CacheKey("t1", "object", ("1",), "v")
REQUEST = FetchRequest("/o/1", [(b"authorization", b"Bearer x")])
JSON = [(b"content-type", b"application/json")]


class FakeUpstream:
    """An upstream whose fetches wait until the test answers them."""

    in_flight = 0

    def __init__(self) -> None:
        self.pending: list[Deferred[UpstreamResponse]] = []
        self.asked: list[Sequence[tuple[bytes, bytes]]] = []

    def fetch(self, path: str, headers: Sequence[tuple[bytes, bytes]], *, tenant: str) -> Deferred[UpstreamResponse]:
        d: Deferred[UpstreamResponse] = Deferred()
        self.pending.append(d)
        self.asked.append(headers)
        return d

    def answer(self, status: int = 200, body: bytes = b"") -> None:
        self.pending.pop(0).callback(UpstreamResponse(status, JSON, body))

    def fail(self) -> None:
        self.pending.pop(0).errback(UpstreamUnreachable("refused"))


class EventEffectsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(1 << 20)
        self.upstream = FakeUpstream()
        self.registry = CacheRegistry(self.store, self.upstream, self.clock, [ROUTE], ())  # type: ignore[arg-type]

    def get(self) -> CacheResult | Deferred[CacheResult]:
        return self.registry.cache("t1", "object").get(KEY, REQUEST)

    def cached(self, body: bytes = b"old") -> None:
        d = self.get()
        assert isinstance(d, Deferred)
        self.upstream.answer(body=body)
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
        self.assertEqual(self.upstream.asked[-1], REQUEST.headers)
        self.upstream.answer(body=b"new")
        fresh = self.now(self.get())
        self.assertEqual((fresh.cache, fresh.response.body), (HIT, b"new"))

    def test_a_refetch_that_is_not_a_200_drops_the_entry(self) -> None:
        self.cached()
        self.refresh()
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.upstream.answer(404, b"gone")
        self.assertIsNone(self.store.lookup(KEY))
        self.assertIsInstance(self.get(), Deferred)

    def test_a_failed_refetch_leaves_it_stale_and_retries_after_a_second(self) -> None:
        self.cached()
        self.refresh()
        self.now(self.get())
        self.upstream.fail()
        self.clock.advance(0.5)
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.assertEqual(self.upstream.pending, [], "no retry within 1 s")
        self.clock.advance(0.5)
        self.assertEqual(self.now(self.get()).cache, STALE)
        self.assertEqual(len(self.upstream.pending), 1)
        self.upstream.answer(503)
        self.assertEqual(self.now(self.get()).cache, STALE, "a 5xx is a failure too: still stale")

    def test_the_retry_second_counts_from_the_failure_of_a_slow_refetch(self) -> None:
        self.cached()
        self.refresh()
        self.now(self.get())
        self.clock.advance(3)
        self.upstream.fail()
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
        self.upstream.fail()
        self.clock.advance(0.2)
        d = self.get()
        self.assertIsInstance(d, Deferred)
        self.upstream.fail()
        self.failureResultOf(d, UpstreamUnreachable)

    def test_stale_if_error_serves_an_expired_entry_when_the_upstream_fails(self) -> None:
        self.cached()
        self.clock.advance(11)
        d = self.get()
        self.upstream.fail()
        served = self.successResultOf(d)
        self.assertEqual((served.cache, served.response.body, served.age), (STALE, b"old", 11.0))
        d = self.get()
        self.upstream.answer(502, b"bad gateway")
        self.assertEqual(self.successResultOf(d).cache, STALE)
        self.clock.advance(4.5)
        d = self.get()
        self.upstream.fail()
        self.failureResultOf(d, UpstreamUnreachable)

    def test_an_event_during_a_fetch_wins(self) -> None:
        for apply in (self.registry.invalidate, self.registry.refresh):
            waiting = self.get()
            assert isinstance(waiting, Deferred)
            self.successResultOf(apply("t1", "object", ("1",)))
            self.upstream.answer(body=b"in flight")
            self.assertEqual(self.successResultOf(waiting).response.body, b"in flight")
            self.assertIsNone(self.store.lookup(KEY), "not stored")
            after = self.get()
            self.assertIsInstance(after, Deferred, "a new fetch")
            self.upstream.answer(body=b"after")
            self.assertEqual(self.successResultOf(after).cache, MISS)
            self.assertEqual(self.now(self.get()).cache, HIT)
            self.successResultOf(self.registry.invalidate(None, "object", ("1",)))
