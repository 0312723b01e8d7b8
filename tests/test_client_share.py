"""
Fair share among clients (issue 21, SPEC.md section 3, C{store.fair_share =
"client"}) in the memory store: the version 2 rule applies first among
clients, then among the tenants of the client that must give room, so that
a client within its share keeps every entry however many tenant ids another
client invents.  C{"tenant"} keeps version 2's rule among tenants.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_support import ready
from store_contract import charge, store_entry
from store_contract import entry as contract_entry
from store_contract import key as contract_key
from twisted.internet.defer import Deferred

from apicache.auth.apikey import ANONYMOUS_CLIENT, ApiKeys, fingerprint
from apicache.cache.keys import CacheKey
from apicache.store.eviction import ANONYMOUS, acting_for, current_client
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore


def k(tenant: str, i: int | str) -> CacheKey:
    return CacheKey(tenant, "object", (str(i),), "v")


def e(size: int = 1000) -> CachedResponse:
    return CachedResponse(200, (), b"x" * size, 0.0, 1e9, 1e9)


ONE = charge(k("a", 0), e())
VICTIM, SYBIL, THIRD = 1, 2, 3


def fill(store: MemoryStore, client: int, tenant: str, n: int, start: int = 0, size: int = 1000) -> list[bool]:
    return [store.put_now(k(tenant, start + i), e(size), 0, client) for i in range(n)]


def held(store: MemoryStore, tenant: str, n: int) -> int:
    return sum(k(tenant, i) in store._slots for i in range(n))


def test_a_client_inventing_tenants_takes_room_only_from_itself():
    s = MemoryStore(ONE * 20)
    assert all(fill(s, VICTIM, "acme", 6))
    # the Sybil: one new tenant per insert, many times the budget
    for i in range(200):
        s.put_now(k(f"invented-{i}", 0), e(), 0, SYBIL)
    assert held(s, "acme", 6) == 6
    assert s.client_sizes()[SYBIL][0] <= ONE * 14
    assert s.stats()["bytes"] <= s.max_bytes


def test_with_fair_share_tenant_the_invented_tenants_win():
    """Version 2's rule: each invented tenant is owed a share, the victim's shrinks to nothing."""
    s = MemoryStore(ONE * 20, fair_share="tenant")
    assert all(fill(s, VICTIM, "acme", 6))
    for i in range(200):
        s.put_now(k(f"invented-{i}", 0), e(), 0, SYBIL)
    assert held(s, "acme", 6) <= 1
    assert s.client_sizes() == {ANONYMOUS: (s.stats()["bytes"], s.stats()["entries"])}


def test_the_client_furthest_above_its_share_gives_room_from_its_largest_tenant():
    s = MemoryStore(ONE * 10 + 100)
    fill(s, SYBIL, "big", 5)
    fill(s, SYBIL, "small", 3)
    fill(s, VICTIM, "acme", 2)
    assert s.put_now(k("acme", 2), e(), 0, VICTIM)
    assert held(s, "big", 5) == 4 and held(s, "small", 3) == 3
    assert s.evictions_by_reason["fair_share"] == 1


def test_within_a_client_the_tenant_rule_of_version_2_applies():
    s = MemoryStore(ONE * 10 + 100)
    fill(s, VICTIM, "big", 8)
    fill(s, VICTIM, "small", 2)
    # the client is alone: its tenant above its share (10 / 2) pays
    assert s.put_now(k("small", 2), e(), 0, VICTIM)
    assert held(s, "big", 8) == 7 and held(s, "small", 3) == 3
    # a tenant within its share evicts its own entries when nobody is above
    fill(s, VICTIM, "small", 3, start=3)
    assert held(s, "small", 6) == 5 and held(s, "big", 8) == 5


def test_a_tenant_stored_by_two_clients_counts_for_each():
    s = MemoryStore(ONE * 10)
    fill(s, VICTIM, "shared", 3)
    fill(s, SYBIL, "shared", 3, start=3)
    one = charge(k("shared", 0), e())
    assert s.client_sizes() == {VICTIM: (3 * one, 3), SYBIL: (3 * one, 3)}
    assert s.tenant_entries() == {"shared": 6}
    assert s.top_tenants(1) == [("shared", 6 * one, 6)]
    # the other client floods the tenant: only its own entries of it go
    fill(s, SYBIL, "shared", 50, start=10)
    assert held(s, "shared", 3) == 3
    s.invalidate("shared", "object", ("0",))
    assert s.client_sizes()[VICTIM] == (2 * one, 2)
    s.clear("shared")
    assert s.client_sizes() == {} and s.stats() == {"entries": 0, "bytes": 0, "evictions": s.stats()["evictions"]}


def test_the_tenant_cap_takes_only_the_inserting_clients_entries():
    one = charge(k("capped", 0), e())
    s = MemoryStore(one * 100, tenant_max_bytes=one * 4)
    assert fill(s, VICTIM, "capped", 4) == [True] * 4
    # the tenant is at its cap with another client's entries: not stored
    assert fill(s, SYBIL, "capped", 2, start=4) == [False, False]
    assert held(s, "capped", 4) == 4 and s.evictions_by_reason["tenant_cap"] == 0
    # the victim's own entries of the tenant go first
    assert fill(s, VICTIM, "capped", 2, start=6) == [True, True]
    assert s.evictions_by_reason["tenant_cap"] == 2
    assert s.client_sizes() == {VICTIM: (4 * one, 4)}


def test_a_replaced_entry_moves_to_the_client_that_fetched_it_again():
    s = MemoryStore(ONE * 10)
    s.put_now(k("a", 0), e(), 0, VICTIM)
    s.put_now(k("a", 0), e(), 0, SYBIL)
    assert s.client_sizes() == {SYBIL: (ONE, 1)}


def test_the_client_comes_from_the_context_when_not_given():
    s = MemoryStore(ONE * 10)
    assert current_client() == ANONYMOUS
    with acting_for(SYBIL):
        assert current_client() == SYBIL
        assert s.put_now(k("a", 0), e(), 0)
    assert current_client() == ANONYMOUS
    s.put_now(k("a", 1), e(), 0)
    assert s.client_sizes() == {SYBIL: (ONE, 1), ANONYMOUS: (ONE, 1)}
    assert s.detailed_stats()["clients"] == 2


def test_an_answer_too_big_for_what_the_others_keep_evicts_nothing():
    s = MemoryStore(10_000, 10_000)
    s.put_now(k("a", 0), e(3000), 0, VICTIM)
    s.put_now(k("b", 0), e(1000), 0, SYBIL)
    s.put_now(k("b", 1), e(1000), 0, SYBIL)
    assert not s.put_now(k("b", 2), e(6000), 0, SYBIL)
    assert s.stats()["evictions"] == 0 and s.stats()["entries"] == 3


def test_api_keys_name_clients_by_a_fingerprint_never_the_key():
    keys = ApiKeys(["alpha-secret", "beta-secret"], ["admin-secret"])
    assert keys.client([b"alpha-secret"]) == 1
    assert keys.client([b"beta-secret"]) == 2
    assert keys.client([b"admin-secret"]) == 3
    assert keys.client([b"nope"]) == keys.client(None) == keys.client([b"alpha-secret"] * 2) == ANONYMOUS_CLIENT
    assert keys.client_name(1) == fingerprint("alpha-secret") == fingerprint("alpha-secret")[:8]
    assert len(keys.client_name(2)) == 8 and "secret" not in keys.client_name(2)
    assert keys.client_name(ANONYMOUS_CLIENT) == "anonymous"


# -- the property -------------------------------------------------------------

#: one client's inserts: (tenant, id, size), over tenants it invents freely
sybil_inserts = st.lists(
    st.tuples(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 40), st.integers(100, 4000)),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    victims=st.lists(
        st.tuples(st.sampled_from([VICTIM, THIRD]), st.sampled_from(["v1", "v2", "shared"]), st.integers(100, 4000)),
        min_size=1,
        max_size=10,
    ),
    inserts=sybil_inserts,
    cap=st.sampled_from([0, 9000]),
)
def test_no_inserts_of_one_client_evict_an_entry_of_another_client_within_its_share(victims, inserts, cap):
    max_bytes = 30_000
    s = MemoryStore(max_bytes, max_bytes, tenant_max_bytes=cap)
    for i, (client, tenant, size) in enumerate(victims):
        s.put_now(k(tenant, f"victim{i}"), e(size), 0, client)
    for tenant, i, size in inserts:
        sizes = s.client_sizes()
        share = max_bytes / (len(sizes) + (SYBIL not in sizes))
        protected = {
            key: slot.owner.client.name
            for key, slot in s._slots.items()
            if slot.owner.client.name != SYBIL and sizes[slot.owner.client.name][0] <= share
        }
        s.put_now(k(tenant, i), e(size), 0, SYBIL)
        assert set(protected) <= set(s._slots)
        assert s.stats()["bytes"] <= max_bytes
        assert sum(b for b, _ in s.client_sizes().values()) == s.stats()["bytes"]
        if cap:
            assert all(b <= cap for _, b, _ in s.top_tenants(len(s._tenants)))


# -- the in-process tier in front of Redis -------------------------------------


def _as(client: int, work: Any) -> Deferred[Any]:
    """
    Run coroutine function C{work} for C{client}: the context is copied when
    the coroutine starts, as when the HTTP layer calls the cache core.
    """
    with acting_for(client):
        return Deferred.fromCoroutine(work())


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_the_in_process_tier_in_front_of_redis_shares_among_clients(stores) -> None:
    local = 20 * charge(contract_key("victim", params=("0",)), contract_entry())
    s = stores(local_max_bytes=local, wait=False)
    await ready(s)
    for i in range(5):
        assert await _as(VICTIM, lambda i=i: store_entry(s, contract_key("victim", params=(str(i),))))
    # the Sybil's answers reach Redis; in this process they take only its own share
    for i in range(60):
        assert await _as(SYBIL, lambda i=i: store_entry(s, contract_key(f"invented-{i}", params=("0",))))
    assert all(s.local.lookup(contract_key("victim", params=(str(i),))) is not None for i in range(5))
    sizes = s.local.client_sizes()
    assert sizes[VICTIM][1] == 5 and sizes[SYBIL][0] <= local - sizes[VICTIM][0]
    assert 0 < sizes[SYBIL][1] < 60

    # an entry another instance loads from Redis counts for the loading client
    other = stores(prefix=s.prefix, local_max_bytes=local, wait=False)
    await ready(other)

    async def load() -> Any:
        return await other.load(contract_key("victim", params=("3",)))

    loaded = await _as(THIRD, load)
    assert loaded is not None
    assert other.local.client_sizes() == {THIRD: (charge(contract_key("victim", params=("3",)), loaded), 1)}
