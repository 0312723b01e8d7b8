"""
The store contract: ``make_store_tests(fixture)`` returns a test class that
every L{apicache.store.interface.IStore} implementation runs.

``fixture`` is a callable ``fixture(max_bytes) -> store`` (or a Deferred or
coroutine firing with one); the store must start empty.  Every test is a
coroutine run by pytest-twisted, so stores whose Deferreds fire later (a
real Redis) run the same tests as the in-memory one::

    from store_contract import make_store_tests

    class TestRedisStoreContract(make_store_tests(make_redis_store)):
        pass
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from apicache.keys import CacheKey
from apicache.store.interface import CachedResponse, IStore

__all__ = ["make_store_tests", "key", "entry"]


def key(tenant: str = "t1", route: str = "object", params: tuple[str, ...] = ("1",), variant: str = "v") -> CacheKey:
    """
    Return a cache key with defaults for what a test does not care about.
    """
    return CacheKey(tenant, route, params, variant)


def entry(body: bytes = b"{}", status: int = 200, stored_at: float = 0.0, ttl: float = 300.0) -> CachedResponse:
    """
    Return an entry as the cache core builds one.
    """
    return CachedResponse(
        status,
        ((b"content-type", b"application/json"),),
        body,
        stored_at=stored_at,
        expires_at=stored_at + ttl,
        stale_until=stored_at + ttl,
    )


async def resolve(value: Any) -> Any:
    """
    Return ``value``, awaited if it is a Deferred or a coroutine.
    """
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


def make_store_tests(fixture: Callable[[int], Any], max_bytes: int = 1 << 20) -> type:
    """
    Return a pytest test class (name it ``Test...`` in the calling module)
    running the store contract against stores made by ``fixture``.
    """

    class StoreContract:
        async def store(self) -> Any:
            return await resolve(fixture(max_bytes))

        async def put(self, store: Any, k: CacheKey, e: CachedResponse) -> bool:
            token = await resolve(store.begin(k))
            return bool(await resolve(store.put(k, e, token)))

        @pytest_twisted.ensureDeferred
        async def test_provides_the_interface(self):
            s = await self.store()
            assert verifyObject(IStore, s)
            assert s.is_ready() is True

        @pytest_twisted.ensureDeferred
        async def test_empty_store_has_nothing(self):
            s = await self.store()
            assert await resolve(s.load(key())) is None

        @pytest_twisted.ensureDeferred
        async def test_stored_entry_loads_back_equal(self):
            s = await self.store()
            e = entry(b'{"a": 1}', stored_at=5.0)
            assert await self.put(s, key(), e) is True
            got = await resolve(s.load(key()))
            assert got is not None
            assert (got.status, got.headers, got.body) == (e.status, e.headers, e.body)
            assert (got.stored_at, got.expires_at, got.stale_until) == (5.0, 305.0, 305.0)

        @pytest_twisted.ensureDeferred
        async def test_put_replaces_an_entry(self):
            s = await self.store()
            await self.put(s, key(), entry(b"old"))
            await self.put(s, key(), entry(b"new"))
            assert (await resolve(s.load(key()))).body == b"new"

        @pytest_twisted.ensureDeferred
        async def test_keys_differing_in_any_part_are_apart(self):
            s = await self.store()
            base = key()
            others = [key(tenant="t2"), key(route="template"), key(params=("2",)), key(variant="w")]
            await self.put(s, base, entry(b"base"))
            for k in others:
                assert await resolve(s.load(k)) is None

        @pytest_twisted.ensureDeferred
        async def test_invalidate_drops_every_variant_of_one_tenant(self):
            s = await self.store()
            await self.put(s, key(variant="a"), entry())
            await self.put(s, key(variant="b"), entry())
            await self.put(s, key(tenant="t2"), entry())
            await self.put(s, key(params=("2",)), entry())
            assert await resolve(s.invalidate("t1", "object", ("1",))) == 2
            assert await resolve(s.load(key(variant="a"))) is None
            assert await resolve(s.load(key(variant="b"))) is None
            assert await resolve(s.load(key(tenant="t2"))) is not None
            assert await resolve(s.load(key(params=("2",)))) is not None

        @pytest_twisted.ensureDeferred
        async def test_invalidate_without_tenant_drops_every_tenant(self):
            s = await self.store()
            await self.put(s, key(tenant="t1"), entry())
            await self.put(s, key(tenant="t2"), entry())
            await self.put(s, key(route="template"), entry())
            assert await resolve(s.invalidate(None, "object", ("1",))) == 2
            assert await resolve(s.load(key(tenant="t2"))) is None
            assert await resolve(s.load(key(route="template"))) is not None

        @pytest_twisted.ensureDeferred
        async def test_invalidating_nothing_counts_zero(self):
            s = await self.store()
            assert await resolve(s.invalidate("t1", "object", ("1",))) == 0

        @pytest_twisted.ensureDeferred
        async def test_clear_of_a_tenant_keeps_the_others(self):
            s = await self.store()
            await self.put(s, key(tenant="t1"), entry())
            await self.put(s, key(tenant="t1", route="template"), entry())
            await self.put(s, key(tenant="t2"), entry())
            assert await resolve(s.clear("t1")) == 2
            assert await resolve(s.load(key(tenant="t2"))) is not None
            assert await resolve(s.load(key(tenant="t1"))) is None

        @pytest_twisted.ensureDeferred
        async def test_clear_drops_everything(self):
            s = await self.store()
            await self.put(s, key(tenant="t1"), entry())
            await self.put(s, key(tenant="t2"), entry())
            assert await resolve(s.clear(None)) == 2
            assert await resolve(s.load(key(tenant="t2"))) is None
            assert s.stats()["entries"] == 0

        @pytest_twisted.ensureDeferred
        async def test_discard_drops_one_entry(self):
            s = await self.store()
            await self.put(s, key(variant="a"), entry())
            await self.put(s, key(variant="b"), entry())
            assert await resolve(s.discard(key(variant="a"))) == 1
            assert await resolve(s.discard(key(variant="a"))) == 0
            assert await resolve(s.load(key(variant="b"))) is not None

        @pytest_twisted.ensureDeferred
        async def test_mark_stale_keeps_entries_marked(self):
            s = await self.store()
            await self.put(s, key(), entry())
            assert await resolve(s.mark_stale("t1", "object", ("1",))) == 1
            got = await resolve(s.load(key()))
            assert got is not None and got.stale is True

        @pytest_twisted.ensureDeferred
        async def test_put_after_invalidation_of_its_resource_stores_nothing(self):
            s = await self.store()
            token = await resolve(s.begin(key()))
            await resolve(s.invalidate("t1", "object", ("1",)))
            assert await resolve(s.put(key(), entry(), token)) is False
            assert await resolve(s.load(key())) is None

        @pytest_twisted.ensureDeferred
        async def test_put_after_invalidation_of_every_tenant_stores_nothing(self):
            s = await self.store()
            token = await resolve(s.begin(key()))
            await resolve(s.invalidate(None, "object", ("1",)))
            assert await resolve(s.put(key(), entry(), token)) is False

        @pytest_twisted.ensureDeferred
        async def test_put_after_clear_stores_nothing(self):
            s = await self.store()
            t1 = await resolve(s.begin(key()))
            await resolve(s.clear("t1"))
            assert await resolve(s.put(key(), entry(), t1)) is False
            t2 = await resolve(s.begin(key()))
            await resolve(s.clear(None))
            assert await resolve(s.put(key(), entry(), t2)) is False

        @pytest_twisted.ensureDeferred
        async def test_put_after_mark_stale_stores_nothing(self):
            s = await self.store()
            token = await resolve(s.begin(key()))
            await resolve(s.mark_stale("t1", "object", ("1",)))
            assert await resolve(s.put(key(), entry(), token)) is False

        @pytest_twisted.ensureDeferred
        async def test_invalidating_another_resource_does_not_block_a_put(self):
            s = await self.store()
            token = await resolve(s.begin(key()))
            await resolve(s.invalidate("t1", "object", ("2",)))
            await resolve(s.invalidate("t2", "object", ("1",)))
            await resolve(s.clear("t2"))
            assert await resolve(s.put(key(), entry(), token)) is True

        @pytest_twisted.ensureDeferred
        async def test_fetch_begun_after_invalidation_is_stored(self):
            s = await self.store()
            await resolve(s.invalidate("t1", "object", ("1",)))
            assert await self.put(s, key(), entry()) is True

        @pytest_twisted.ensureDeferred
        async def test_entry_bigger_than_the_budget_is_not_stored(self):
            s = await self.store()
            assert await self.put(s, key(), entry(b"x" * (max_bytes + 1))) is False
            assert await resolve(s.load(key())) is None

        @pytest_twisted.ensureDeferred
        async def test_forget_releases_one_tenant_route(self):
            s = await self.store()
            await self.put(s, key(tenant="t1"), entry())
            await self.put(s, key(tenant="t2"), entry())
            s.forget("t1", "object")
            assert s.lookup(key(tenant="t1")) is None
            assert s.lookup(key(tenant="t2")) is not None or s.shared

        @pytest_twisted.ensureDeferred
        async def test_stats_count_entries_and_bytes(self):
            s = await self.store()
            await self.put(s, key(), entry(b"x" * 100))
            stats = s.stats()
            assert stats["entries"] >= 1 or s.shared
            assert stats["bytes"] >= 100 or s.shared
            assert "evictions" in stats

    return StoreContract
