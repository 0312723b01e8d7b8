"""
The store contract: ``make_store_tests(fixture)`` returns a test class that
every L{apicache.store.interface.IStore} implementation runs, the in-memory
one included.

``fixture`` is a callable ``fixture(request, max_bytes, max_entry_bytes)``
returning a store (or a Deferred or coroutine firing with one): empty,
ready, on the wall clock, holding at most ``max_bytes`` in this process and
refusing entries bigger than ``max_entry_bytes``.  ``request`` is pytest's
fixture request, for stores that need other fixtures (a Redis server).
With ``tenant_cap=True`` the fixture also takes ``tenant_max_bytes=N`` and
the contract covers the per-tenant cap (SPEC.md section 2).  Every
test is a coroutine run by pytest-twisted, so stores whose Deferreds fire
later (a real Redis) run the same tests as the in-memory one::

    from store_contract import make_store_tests

    class TestRedisStoreContract(make_store_tests(make_redis_store)):
        pass
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from apicache.cache.keys import CacheKey, variant_key
from apicache.cache.variants import Variant
from apicache.store.interface import ENTRY_OVERHEAD, VARIANT_OVERHEAD, CachedResponse, CachedVariant, IStore

__all__ = ["make_store_tests", "key", "entry", "store_entry", "charge", "ENTRY_LIMIT", "LOCAL_BUDGET", "TTL", "LANG"]

#: The contract's default entry limit and in-process budget.  They are
#: equal, so an entry over the limit is also over the budget.
ENTRY_LIMIT = 64 * 1024
LOCAL_BUDGET = 64 * 1024
TTL = 300.0


def key(
    tenant: str = "t1", route: str = "object", params: tuple[str, ...] = ("42",), variant: str = "fp\x00\x00\x01"
) -> CacheKey:
    """
    Return a cache key with defaults for what a test does not care about.
    """
    return CacheKey(tenant, route, params, variant)


#: Variants of one key that vary on accept-language (their selectors stand
#: for three values of it).
LANG = tuple(Variant((b"accept-language",), bytes([i]) * 16, 1000.0 + i) for i in range(3))


def entry(body: bytes = b'{"a": 1}', ttl: float = TTL, now: float | None = None, **kw: Any) -> CachedResponse:
    """
    Return an entry as the cache core builds one, stored ``now`` (default:
    the wall clock, which a shared store's expiry runs on).
    """
    now = time.time() if now is None else now
    # a variant of its key (v3) when given one
    cls: Any = CachedVariant if kw.get("variant") is not None else CachedResponse
    if cls is CachedResponse:
        kw.pop("variant", None)
    return cls(
        200,
        ((b"content-type", b"application/json"), (b"etag", b'"v1"')),
        body,
        stored_at=now,
        expires_at=now + ttl,
        stale_until=now + ttl + kw.pop("stale_if_error", 0.0),
        **kw,
    )


async def store_entry(store: Any, k: CacheKey, e: CachedResponse | None = None) -> bool:
    """
    Return whether ``store`` stored ``e`` under ``k`` (a fetch begun now).
    """
    token = await store.begin(k)
    return bool(await store.put(k, e or entry(), token))


async def resolve(value: Any) -> Any:
    """
    Return ``value``, awaited if it is a Deferred or a coroutine.
    """
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


def charge(k: CacheKey, e: CachedResponse) -> int:
    """
    Return the bytes a store charges for ``e`` under ``k``.
    """
    return e.size() + k.size() + ENTRY_OVERHEAD


def make_store_tests(
    fixture: Callable[..., Any],
    max_bytes: int = LOCAL_BUDGET,
    max_entry_bytes: int = ENTRY_LIMIT,
    tenant_cap: bool = False,
) -> type:
    """
    Return a pytest test class (name it ``Test...`` in the calling module)
    running the store contract (SPEC.md section 3, IStore) against stores
    made by ``fixture``.  The fair share and scan cases look at the tier in
    this process (``lookup``), which is where they apply.
    """

    class StoreContract:
        async def store(self, request: Any) -> Any:
            return await resolve(fixture(request, max_bytes, max_entry_bytes))

        @pytest_twisted.ensureDeferred
        async def test_provides_the_interface(self, request: Any) -> None:
            s = await self.store(request)
            assert verifyObject(IStore, s)
            assert s.is_ready() is True

        @pytest_twisted.ensureDeferred
        async def test_missing_key_is_none(self, request: Any) -> None:
            s = await self.store(request)
            assert s.lookup(key()) is None
            assert await s.load(key()) is None

        @pytest_twisted.ensureDeferred
        async def test_put_then_lookup_and_load_give_the_entry(self, request: Any) -> None:
            s = await self.store(request)
            e = entry()
            assert await store_entry(s, key(), e) is True
            assert s.lookup(key()) == e
            loaded = await s.load(key())
            assert loaded is not None
            assert (loaded.status, loaded.headers, loaded.body) == (e.status, e.headers, e.body)
            assert (loaded.stored_at, loaded.expires_at, loaded.stale_until, loaded.stale) == (
                e.stored_at, e.expires_at, e.stale_until, False)

        @pytest_twisted.ensureDeferred
        async def test_put_replaces_an_entry(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(), entry(b"one"))
            await store_entry(s, key(), entry(b"two"))
            assert (await s.load(key())).body == b"two"

        @pytest_twisted.ensureDeferred
        async def test_keys_differing_in_any_part_are_apart(self, request: Any) -> None:
            s = await self.store(request)
            others = [key(tenant="t2"), key(route="template"), key(params=("43",)), key(variant="w")]
            await store_entry(s, key(), entry(b"base"))
            for k in others:
                assert await s.load(k) is None

        @pytest_twisted.ensureDeferred
        async def test_token_taken_before_invalidate_stores_nothing(self, request: Any) -> None:
            s = await self.store(request)
            token = await s.begin(key())
            await s.invalidate("t1", "object", ("42",))
            assert await s.put(key(), entry(), token) is False
            assert await s.load(key()) is None
            assert await store_entry(s, key()) is True

        @pytest_twisted.ensureDeferred
        async def test_fetch_begun_after_invalidation_is_stored(self, request: Any) -> None:
            s = await self.store(request)
            await s.invalidate("t1", "object", ("42",))
            assert await store_entry(s, key()) is True

        @pytest_twisted.ensureDeferred
        async def test_token_taken_before_invalidating_every_tenant_stores_nothing(self, request: Any) -> None:
            s = await self.store(request)
            token = await s.begin(key())
            await s.invalidate(None, "object", ("42",))
            assert await s.put(key(), entry(), token) is False

        @pytest_twisted.ensureDeferred
        async def test_token_survives_changes_to_other_resources(self, request: Any) -> None:
            s = await self.store(request)
            token = await s.begin(key())
            await s.invalidate("t1", "object", ("43",))
            await s.invalidate("t2", "object", ("42",))
            await s.invalidate(None, "template", ("42",))
            await s.clear("t2")
            assert await s.put(key(), entry(), token) is True

        @pytest_twisted.ensureDeferred
        async def test_token_taken_before_mark_stale_stores_nothing(self, request: Any) -> None:
            s = await self.store(request)
            token = await s.begin(key())
            await s.mark_stale("t1", "object", ("42",))
            assert await s.put(key(), entry(), token) is False

        @pytest_twisted.ensureDeferred
        async def test_token_taken_before_clear_stores_nothing(self, request: Any) -> None:
            s = await self.store(request)
            for tenant in ("t1", None):
                token = await s.begin(key())
                await s.clear(tenant)
                assert await s.put(key(), entry(), token) is False

        @pytest_twisted.ensureDeferred
        async def test_invalidating_nothing_counts_zero(self, request: Any) -> None:
            s = await self.store(request)
            assert await s.invalidate("t1", "object", ("42",)) == 0

        @pytest_twisted.ensureDeferred
        async def test_invalidate_drops_every_variant_of_one_tenant(self, request: Any) -> None:
            s = await self.store(request)
            for v in ("a", "b", "c"):
                await store_entry(s, key(variant=v))
            await store_entry(s, key(tenant="t2"))
            await store_entry(s, key(params=("43",)))
            assert await s.invalidate("t1", "object", ("42",)) == 3
            for v in ("a", "b", "c"):
                assert s.lookup(key(variant=v)) is None
                assert await s.load(key(variant=v)) is None
            assert await s.load(key(tenant="t2")) is not None
            assert await s.load(key(params=("43",))) is not None
            assert await s.invalidate("t1", "object", ("42",)) == 0

        @pytest_twisted.ensureDeferred
        async def test_invalidate_without_tenant_drops_every_tenant(self, request: Any) -> None:
            s = await self.store(request)
            for t in ("t1", "t2", "t3"):
                for v in ("a", "b"):
                    await store_entry(s, key(tenant=t, variant=v))
            await store_entry(s, key(params=("43",)))
            await store_entry(s, key(route="template"))
            assert await s.invalidate(None, "object", ("42",)) == 6
            for t in ("t1", "t2", "t3"):
                assert await s.load(key(tenant=t, variant="a")) is None
            assert await s.load(key(params=("43",))) is not None
            assert await s.load(key(route="template")) is not None

        @pytest_twisted.ensureDeferred
        async def test_mark_stale_marks_every_variant(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(variant="a"))
            await store_entry(s, key(variant="b"))
            await store_entry(s, key(tenant="t2"))
            assert await s.mark_stale("t1", "object", ("42",)) == 2
            assert s.lookup(key(variant="a")).stale is True
            got = await s.load(key(variant="b"))
            assert got is not None and got.stale is True
            assert (await s.load(key(tenant="t2"))).stale is False
            assert await s.mark_stale(None, "object", ("42",)) == 3
            assert (await s.load(key(tenant="t2"))).stale is True

        @pytest_twisted.ensureDeferred
        async def test_clear_of_a_tenant_keeps_the_others(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(variant="a"))
            await store_entry(s, key(route="template"))
            await store_entry(s, key(tenant="t2"))
            assert await s.clear("t1") == 2
            assert await s.load(key(variant="a")) is None
            assert await s.load(key(route="template")) is None
            assert await s.load(key(tenant="t2")) is not None

        @pytest_twisted.ensureDeferred
        async def test_clear_drops_every_tenant(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key())
            await store_entry(s, key(tenant="t2"))
            assert await s.clear(None) == 2
            assert await s.load(key()) is None
            assert await s.load(key(tenant="t2")) is None
            assert s.stats()["entries"] == 0

        @pytest_twisted.ensureDeferred
        async def test_discard_drops_one_variant(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(variant="a"))
            await store_entry(s, key(variant="b"))
            assert await s.discard(key(variant="a")) == 1
            assert await s.discard(key(variant="a")) == 0
            assert await s.load(key(variant="a")) is None
            assert await s.load(key(variant="b")) is not None

        @pytest_twisted.ensureDeferred
        async def test_entry_too_big_is_not_stored(self, request: Any) -> None:
            s = await self.store(request)
            assert await store_entry(s, key(), entry(b"x" * (max_entry_bytes + 1))) is False
            assert await store_entry(s, key(), entry(b"x" * (max_bytes + 1))) is False
            assert s.lookup(key()) is None
            assert await s.load(key()) is None
            assert await store_entry(s, key(), entry(b"x" * (max_entry_bytes // 2))) is True

        @pytest_twisted.ensureDeferred
        async def test_budget_holds_in_this_process(self, request: Any) -> None:
            s = await self.store(request)
            for i in range(40):
                await store_entry(s, key(params=(str(i),)), entry(b"y" * 4000))
            stats = s.stats()
            assert 0 < stats["bytes"] <= max_bytes
            assert stats["evictions"] > 0
            # the most recent is held here
            assert s.lookup(key(params=("39",))) is not None

        @pytest_twisted.ensureDeferred
        async def test_stats_count_entries_and_bytes(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(), entry(b"x" * 100))
            stats = s.stats()
            assert stats["entries"] >= 1
            assert stats["bytes"] >= 100
            assert "evictions" in stats

        @pytest_twisted.ensureDeferred
        async def test_forget_releases_what_this_process_holds(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key())
            await store_entry(s, key(tenant="t2"))
            s.forget("t1", "object")
            assert s.lookup(key()) is None
            assert s.lookup(key(tenant="t2")) is not None

        # -- tags (SPEC.md section 3, "Tags") ------------------------------

        @pytest_twisted.ensureDeferred
        async def test_purge_tag_drops_the_tenants_entries_carrying_it(self, request: Any) -> None:
            s = await self.store(request)
            tagged = [key(params=("1",)), key(params=("2",), variant="w"), key(tenant="t2", params=("1",))]
            for k in tagged:
                assert await store_entry(s, k, entry(tags=("list:1", f"object:{k.params[0]}")))
            assert await store_entry(s, key(params=("3",)), entry(tags=("list:2",)))
            assert await s.purge_tag("t1", "list:1") == 2
            assert s.lookup(tagged[0]) is None and await s.load(tagged[1]) is None
            assert await s.load(tagged[2]) is not None, "a tag belongs to its tenant"
            assert await s.load(key(params=("3",))) is not None
            assert await s.purge_tag(None, "object:1") == 1
            assert await s.load(tagged[2]) is None
            assert await s.purge_tag("t1", "nothing") == 0

        @pytest_twisted.ensureDeferred
        async def test_token_taken_before_a_tag_purge_stores_nothing_carrying_it(self, request: Any) -> None:
            s = await self.store(request)
            before = await s.begin(key())
            other = await s.begin(key(params=("43",)))
            await s.purge_tag("t1", "list:1")
            assert await s.put(key(), entry(tags=("list:1",)), before) is False
            assert await s.load(key()) is None
            assert await s.put(key(params=("43",)), entry(tags=("list:2",)), other) is True
            assert await store_entry(s, key(), entry(tags=("list:1",))) is True

        @pytest_twisted.ensureDeferred
        async def test_refresh_by_tag_marks_entries_stale(self, request: Any) -> None:
            s = await self.store(request)
            assert await store_entry(s, key(), entry(tags=("list:1",)))
            assert await s.purge_tag(None, "list:1", True) == 1
            found = s.lookup(key()) or await s.load(key())
            assert found is not None and found.stale

        @pytest_twisted.ensureDeferred
        async def test_tag_stats_count_pairs_held_here(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(), entry(tags=("a", "b")))
            assert s.tag_stats() == {"tags": 2, "pairs": 2}
            await s.discard(key())
            assert s.tag_stats() == {"tags": 0, "pairs": 0}
        @pytest_twisted.ensureDeferred
        async def test_a_tenant_within_its_fair_share_keeps_its_entries(self, request: Any) -> None:
            """Another tenant's flood of new keys evicts only its own entries."""
            s = await self.store(request)
            body = b"v" * 2000
            mine = [key(tenant="victim", params=(str(i),)) for i in range(4)]
            for k in mine:
                assert await store_entry(s, k, entry(body))
            held = sum(charge(k, entry(body)) for k in mine)
            assert held < max_bytes / 2
            for i in range(120):
                await store_entry(s, key(tenant="noisy", params=(str(i),)), entry(body))
                assert s.stats()["bytes"] <= max_bytes
            for k in mine:
                assert s.lookup(k) is not None
            assert s.lookup(key(tenant="noisy", params=("119",))) is not None
            assert s.stats()["evictions"] > 0

        @pytest_twisted.ensureDeferred
        async def test_a_tenant_above_its_fair_share_makes_room_for_a_newcomer(self, request: Any) -> None:
            s = await self.store(request)
            body = b"w" * 2000
            for i in range(60):
                await store_entry(s, key(tenant="big", params=(str(i),)), entry(body))
            one = charge(key(tenant="big", params=("0",)), entry(body))
            big_before = sum(s.lookup(key(tenant="big", params=(str(i),))) is not None for i in range(60))
            assert big_before * one > max_bytes / 2
            small = [key(tenant="small", params=(str(i),)) for i in range(5)]
            for k in small:
                assert await store_entry(s, k, entry(body)) is True
            for k in small:
                assert s.lookup(k) is not None
            big_after = sum(s.lookup(key(tenant="big", params=(str(i),))) is not None for i in range(60))
            # big paid for every one of small's entries, and kept its share
            assert big_after == big_before - len(small)
            assert big_after * one >= max_bytes / 2 - one

        @pytest_twisted.ensureDeferred
        async def test_entries_used_again_survive_a_one_pass_scan(self, request: Any) -> None:
            """Eviction within a tenant keeps its hot entries through a scan of new keys."""
            s = await self.store(request)
            body = b"h" * 2000
            hot = [key(params=(f"hot{i}",)) for i in range(6)]
            for k in hot:
                assert await store_entry(s, k, entry(body))
            for _ in range(2):
                for k in hot:
                    assert s.lookup(k) is not None
            scan = 10 * max_bytes // charge(key(), entry(body))
            for i in range(scan):
                await store_entry(s, key(params=(f"scan{i}",)), entry(body))
            for k in hot:
                assert s.lookup(k) is not None, k
            assert s.lookup(key(params=(f"scan{scan - 1}",))) is not None
            assert s.lookup(key(params=("scan0",))) is None

        # -- variants (SPEC.md section 3, v3; RFC 9111 section 4.1) --------

        @pytest_twisted.ensureDeferred
        async def test_variants_of_a_key_are_held_apart(self, request: Any) -> None:
            """RFC 9111 section 4.1: several variants under one key."""
            s = await self.store(request)
            assert await store_entry(s, key(), entry(b"en", variant=LANG[0])) is True
            assert await store_entry(s, key(), entry(b"de", variant=LANG[1])) is True
            assert s.lookup(key()) is None
            assert s.variants(key()) == (LANG[1], LANG[0])
            assert await s.load(key()) == (LANG[1], LANG[0])
            for v, body in ((LANG[0], b"en"), (LANG[1], b"de")):
                vkey = variant_key(key(), v.selector)
                assert s.lookup(vkey).body == body
                loaded = await s.load(vkey)
                assert (loaded.body, loaded.variant) == (body, v)
            assert s.variants(key(params=("43",))) == ()
            assert s.stats()["entries"] == 2

        @pytest_twisted.ensureDeferred
        async def test_variants_and_an_entry_for_every_request_replace_each_other(self, request: Any) -> None:
            """RFC 9111 section 4.1: the newest answer says whether the key varies."""
            s = await self.store(request)
            await store_entry(s, key(), entry(b"en", variant=LANG[0]))
            await store_entry(s, key(), entry(b"de", variant=LANG[1]))
            assert await store_entry(s, key(), entry(b"all")) is True
            assert s.variants(key()) == ()
            assert (await s.load(key())).body == b"all"
            assert await s.load(variant_key(key(), LANG[0].selector)) is None
            assert s.stats()["entries"] == 1
            # and back, stored by a fetch that began under a variant's key
            vkey = variant_key(key(), LANG[2].selector)
            token = await s.begin(vkey)
            assert await s.put(vkey, entry(b"fr", variant=LANG[2]), token) is True
            assert s.lookup(key()) is None
            assert await s.load(key()) == (LANG[2],)
            assert (await s.load(vkey)).body == b"fr"
            assert s.stats()["entries"] == 1

        @pytest_twisted.ensureDeferred
        async def test_past_max_variants_the_oldest_goes(self, request: Any) -> None:
            """SPEC.md section 2: max_variants."""
            s = await self.store(request)
            for i in range(3):
                token = await s.begin(key())
                assert await s.put(key(), entry(b"%d" % i, variant=LANG[i]), token, 2) is True
            assert s.variants(key()) == (LANG[2], LANG[1])
            assert await s.load(key()) == (LANG[2], LANG[1])
            assert await s.load(variant_key(key(), LANG[0].selector)) is None
            # the same selector replaces its variant in place
            token = await s.begin(key())
            assert await s.put(key(), entry(b"again", variant=LANG[1]), token, 2) is True
            assert s.variants(key()) == (LANG[1], LANG[2])
            assert (await s.load(variant_key(key(), LANG[1].selector))).body == b"again"
            assert s.stats()["entries"] == 2

        @pytest_twisted.ensureDeferred
        async def test_invalidate_and_clear_drop_every_variant(self, request: Any) -> None:
            s = await self.store(request)
            for i in range(3):
                await store_entry(s, key(), entry(variant=LANG[i]))
            await store_entry(s, key(tenant="t2"), entry(variant=LANG[0]))
            assert await s.mark_stale("t1", "object", ("42",)) == 3
            assert (await s.load(variant_key(key(), LANG[2].selector))).stale is True
            assert await s.invalidate("t1", "object", ("42",)) == 3
            assert s.variants(key()) == ()
            assert await s.load(key()) is None
            for v in LANG:
                assert await s.load(variant_key(key(), v.selector)) is None
            assert await s.load(key(tenant="t2")) == (LANG[0],)
            await store_entry(s, key(), entry(variant=LANG[0]))
            assert await s.clear("t1") == 1
            assert await s.load(key()) is None and s.variants(key()) == ()
            assert await s.load(key(tenant="t2")) == (LANG[0],)
            assert await s.invalidate(None, "object", ("42",)) == 1
            assert await s.load(key(tenant="t2")) is None

        @pytest_twisted.ensureDeferred
        async def test_a_variant_fetch_begun_before_an_invalidation_stores_nothing(self, request: Any) -> None:
            """SPEC.md section 3, the race rule, for a variant."""
            s = await self.store(request)
            await store_entry(s, key(), entry(variant=LANG[0]))
            vkey = variant_key(key(), LANG[1].selector)
            token = await s.begin(vkey)
            await s.invalidate("t1", "object", ("42",))
            assert await s.put(vkey, entry(variant=LANG[1]), token) is False
            assert await s.load(key()) is None and s.variants(key()) == ()

        @pytest_twisted.ensureDeferred
        async def test_discard_and_a_tag_purge_drop_one_variant(self, request: Any) -> None:
            s = await self.store(request)
            await store_entry(s, key(), entry(b"en", variant=LANG[0], tags=("lang:en",)))
            await store_entry(s, key(), entry(b"de", variant=LANG[1], tags=("lang:de",)))
            await store_entry(s, key(), entry(b"fr", variant=LANG[2]))
            assert await s.purge_tag("t1", "lang:en") == 1
            assert await s.load(variant_key(key(), LANG[0].selector)) is None
            assert s.variants(key()) == (LANG[2], LANG[1])
            assert await s.discard(variant_key(key(), LANG[1].selector)) == 1
            assert await s.load(variant_key(key(), LANG[1].selector)) is None
            assert s.variants(key()) == (LANG[2],)
            assert (await s.load(variant_key(key(), LANG[2].selector))).body == b"fr"

        @pytest_twisted.ensureDeferred
        async def test_a_variant_is_charged_its_record(self, request: Any) -> None:
            s = await self.store(request)
            e = entry(b"x" * 100, variant=LANG[0])
            await store_entry(s, key(), e)
            assert s.stats()["bytes"] == charge(variant_key(key(), LANG[0].selector), e) + VARIANT_OVERHEAD
            await s.discard(variant_key(key(), LANG[0].selector))
            assert s.stats() == {"entries": 0, "bytes": 0, "evictions": 0}

    if tenant_cap:
        cap = max_bytes // 4

        class CappedStoreContract(StoreContract):
            async def capped(self, request: Any) -> Any:
                return await resolve(fixture(request, max_bytes, max_entry_bytes, tenant_max_bytes=cap))

            @pytest_twisted.ensureDeferred
            async def test_a_tenant_never_holds_more_than_its_cap(self, request: Any) -> None:
                s = await self.capped(request)
                body = b"c" * 2000
                for i in range(30):
                    assert await store_entry(s, key(params=(str(i),)), entry(body)) is True
                    assert s.stats()["bytes"] <= cap
                assert s.stats()["evictions"] > 0
                assert s.lookup(key(params=("29",))) is not None
                # the cap is the tenant's, not the store's
                assert await store_entry(s, key(tenant="t2"), entry(body)) is True
                assert s.lookup(key(params=("29",))) is not None

            @pytest_twisted.ensureDeferred
            async def test_an_entry_over_the_tenant_cap_is_not_stored(self, request: Any) -> None:
                s = await self.capped(request)
                assert await store_entry(s, key(params=("1",)), entry(b"s" * 100)) is True
                stored = await store_entry(s, key(), entry(b"x" * cap))
                # the cap is on this process's tier: a shared store may keep it elsewhere
                assert stored is (True if s.shared else False)
                assert s.lookup(key()) is None
                assert s.lookup(key(params=("1",))) is not None

        return CappedStoreContract

    return StoreContract
