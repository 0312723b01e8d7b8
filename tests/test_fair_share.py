"""
Fair share in the memory store (SPEC.md section 3): room for an insert comes
from expired entries first, then from the tenant furthest above its fair
share; a tenant within its share never loses an entry to another's inserts.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from store_contract import charge
from twisted.internet.task import Clock

from apicache.cache.keys import CacheKey
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore


def k(tenant: str, i: int | str) -> CacheKey:
    return CacheKey(tenant, "object", (str(i),), "v")


def e(size: int = 1000, expires_at: float = 1e9, stored_at: float = 0.0) -> CachedResponse:
    return CachedResponse(200, (), b"x" * size, stored_at, expires_at, expires_at)


ONE = charge(k("a", 0), e())


def held(store: MemoryStore, tenant: str, n: int) -> list[int]:
    return [i for i in range(n) if k(tenant, i) in store._slots]


def test_expired_entries_go_before_any_tenants_fresh_ones():
    clock = Clock()
    s = MemoryStore(ONE * 4, clock=clock)
    s.put_now(k("a", 0), e(expires_at=10.0), 0)
    s.put_now(k("a", 1), e(), 0)
    s.put_now(k("b", 0), e(), 0)
    s.put_now(k("b", 1), e(), 0)
    clock.advance(11)
    assert s.put_now(k("c", 0), e(), 0)
    assert k("a", 0) not in s._slots
    assert all(x in s._slots for x in (k("a", 1), k("b", 0), k("b", 1), k("c", 0)))
    assert s.evictions_by_reason == {"expiry": 1, "fair_share": 0, "tenant_cap": 0, "policy": 0}


def test_an_entry_made_fresh_again_in_place_is_not_taken_for_expired():
    clock = Clock()
    s = MemoryStore(ONE * 2, clock=clock)
    s.put_now(k("a", 0), e(expires_at=10.0), 0)
    s.put_now(k("a", 1), e(expires_at=10.0), 0)
    s.lookup(k("a", 0)).expires_at = 100.0  # a revalidation
    clock.advance(11)
    assert s.put_now(k("a", 2), e(), 0)
    assert k("a", 0) in s._slots and k("a", 1) not in s._slots
    assert s.evictions_by_reason["expiry"] == 1


def test_without_a_clock_now_is_the_latest_stored_at():
    s = MemoryStore(ONE * 2)
    s.put_now(k("a", 0), e(expires_at=10.0, stored_at=0.0), 0)
    s.put_now(k("b", 0), e(expires_at=1e9, stored_at=0.0), 0)
    # at "now" 5 nothing has expired: the tenant above its share pays
    assert s.put_now(k("b", 1), e(stored_at=5.0), 0)
    assert k("a", 0) in s._slots
    assert s.put_now(k("c", 0), e(stored_at=20.0), 0)
    assert k("a", 0) not in s._slots
    assert s.evictions_by_reason["expiry"] == 1


def test_the_tenant_furthest_above_its_share_pays():
    s = MemoryStore(ONE * 10)
    for i in range(6):
        s.put_now(k("B", i), e(), 0)
    for i in range(3):
        s.put_now(k("M", i), e(), 0)
    s.put_now(k("L", 0), e(), 0)
    assert s.put_now(k("N", 0), e(), 0)
    assert len(held(s, "B", 6)) == 5
    assert len(held(s, "M", 3)) == 3 and held(s, "L", 1) == [0]
    assert s.evictions_by_reason["fair_share"] == 1


def test_the_inserting_tenant_evicts_its_own_when_nobody_else_is_above_its_share():
    s = MemoryStore(ONE * 4)
    s.put_now(k("a", 0), e(), 0)
    s.put_now(k("a", 1), e(), 0)
    s.put_now(k("b", 0), e(), 0)
    s.put_now(k("b", 1), e(), 0)
    assert s.put_now(k("b", 2), e(), 0)
    assert held(s, "a", 2) == [0, 1]
    assert len(held(s, "b", 3)) == 2
    assert s.evictions_by_reason["policy"] == 1


def test_an_answer_bigger_than_its_share_with_nothing_to_give_is_not_stored():
    s = MemoryStore(10_000)
    s.put_now(k("a", 0), e(1500), 0)
    s.put_now(k("a", 1), e(1500), 0)
    assert not s.put_now(k("b", 0), e(6000), 0)
    assert held(s, "a", 2) == [0, 1]
    assert s.stats()["evictions"] == 0


def test_tenant_cap_evicts_the_tenants_own_entries():
    s = MemoryStore(ONE * 100, tenant_max_bytes=ONE * 3)
    for i in range(5):
        assert s.put_now(k("a", i), e(), 0)
    assert len(held(s, "a", 5)) == 3
    assert s.evictions_by_reason["tenant_cap"] == 2
    assert s.top_tenants() == [("a", ONE * 3, 3)]


def test_top_tenants_lists_the_largest_first_and_at_most_n():
    s = MemoryStore(ONE * 100)
    for t, n in (("a", 1), ("b", 3), ("c", 2)):
        for i in range(n):
            s.put_now(k(t, i), e(), 0)
    assert s.top_tenants(2) == [("b", ONE * 3, 3), ("c", ONE * 2, 2)]
    assert [t for t, _, _ in s.top_tenants()] == ["b", "c", "a"]


def test_detailed_stats_count_hits_lookups_and_evictions_by_reason():
    s = MemoryStore(ONE * 2)
    s.put_now(k("a", 0), e(), 0)
    s.lookup(k("a", 0))
    s.lookup(k("a", 1))
    s.put_now(k("a", 1), e(), 0)
    s.put_now(k("a", 2), e(), 0)
    d = s.detailed_stats()
    assert (d["hits"], d["lookups"], d["entries"], d["tenants"]) == (1, 2, 2, 1)
    assert (d["evictions"], d["evictions_policy"], d["evictions_fair_share"]) == (1, 1, 0)
    assert {k: d[k] for k in ("entries", "bytes", "evictions")} == s.stats()


def test_churn_leaves_no_garbage_behind():
    """Lazy removal stays bounded: RSS does not grow under put/purge churn."""
    s = MemoryStore(ONE * 50)
    for i in range(20_000):
        s.put_now(k(f"t{i % 7}", i), e(), 0)
        if i % 3:
            s.invalidate(f"t{i % 7}", "object", (str(i),))
    live = s.stats()["entries"]
    assert live <= 50
    queued = sum(len(t.small) + len(t.main) for by_client in s._tenants.values() for t in by_client.values())
    assert queued <= 2 * live + 7 * 33
    assert sum(len(b) for b in s._wheel.buckets.values()) <= 2 * live + 1025
    assert all(len(c.sizes.heap) <= 2 * len(c.tenants) + 65 for c in s._clients.values())
    assert len(s._client_sizes.heap) <= 2 * len(s._clients) + 65


# -- the property -------------------------------------------------------------

inserts = st.lists(
    st.tuples(st.sampled_from(["n1", "n2", "n3", "n4"]), st.integers(0, 30), st.integers(100, 4000)),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(100, 4000), min_size=1, max_size=6),
    inserts,
    st.sampled_from([0, 9000]),
)
def test_no_inserts_by_others_evict_an_entry_of_a_tenant_within_its_fair_share(mine, others, cap):
    max_bytes = 20_000
    s = MemoryStore(max_bytes, max_bytes, tenant_max_bytes=cap)
    for i, size in enumerate(mine):
        s.put_now(k("victim", i), e(size), 0)
    for tenant, i, size in others:
        sizes = {t: b for t, b, _ in s.top_tenants(len(s._tenants))}
        n = len(sizes) + (tenant not in sizes)
        share = max_bytes / n
        protected = {
            key for key in s._slots if key.tenant != tenant and sizes[key.tenant] <= share
        }
        s.put_now(k(tenant, i), e(size), 0)
        assert protected <= set(s._slots)
        assert s.stats()["bytes"] <= max_bytes
        if cap:
            assert all(b <= cap for _, b, _ in s.top_tenants(10))


def test_an_answer_that_cannot_fit_evicts_nothing_of_its_own_tenant_first():
    s = MemoryStore(10_000, 10_000)
    s.put_now(k("a", 0), e(3000), 0)
    s.put_now(k("b", 0), e(1000), 0)
    s.put_now(k("b", 1), e(1000), 0)
    # b with the new answer is furthest above its share, and a keeps its 3.6 kB
    assert not s.put_now(k("b", 2), e(6000), 0)
    assert held(s, "b", 2) == [0, 1] and held(s, "a", 1) == [0]
    assert s.stats()["evictions"] == 0
