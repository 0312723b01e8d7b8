"""
The store contract: behaviours every L{IStore} must have, written once and
run against each implementation.

A test module subclasses L{StoreContract} and provides a ``store``
fixture: an empty, ready store whose clock is the wall clock, with
``max_entry_bytes`` of L{ENTRY_LIMIT} and an in-process budget of
``local_budget`` bytes.  (When the shared ``make_store_tests(fixture)``
factory lands, these tests move there unchanged.)  The tests are coroutines run by pytest-twisted, so that stores that answer
through the network (Redis) and stores that answer at once (memory) run the
same code.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from zope.interface.verify import verifyObject

from apicache.keys import CacheKey
from apicache.store.interface import CachedResponse, IStore

ENTRY_LIMIT = 64 * 1024
TTL = 300.0


def key(tenant: str = "t1", route: str = "object", params: tuple[str, ...] = ("42",), variant: str = "fp\x00\x00\x01") -> CacheKey:
    return CacheKey(tenant, route, params, variant)


def entry(body: bytes = b'{"a": 1}', ttl: float = TTL, now: float | None = None, **kw: Any) -> CachedResponse:
    now = time.time() if now is None else now
    return CachedResponse(
        200,
        ((b"content-type", b"application/json"), (b"etag", b'"v1"')),
        body,
        stored_at=now,
        expires_at=now + ttl,
        stale_until=now + ttl + kw.pop("stale_if_error", 0.0),
        **kw,
    )


async def store_entry(store: Any, k: CacheKey, e: CachedResponse | None = None) -> bool:
    token = await store.begin(k)
    return bool(await store.put(k, e or entry(), token))


class StoreContract:
    """
    Behaviours shared by every store (SPEC.md section 3, IStore).
    """

    def test_provides_istore(self, store: Any) -> None:
        assert verifyObject(IStore, store)

    @pytest_twisted.ensureDeferred
    async def test_missing_key_is_none(self, store: Any) -> None:
        assert store.lookup(key()) is None
        assert await store.load(key()) is None

    @pytest_twisted.ensureDeferred
    async def test_put_then_lookup_and_load_give_the_entry(self, store: Any) -> None:
        e = entry()
        assert await store_entry(store, key(), e)
        assert store.lookup(key()) == e
        loaded = await store.load(key())
        assert (loaded.status, loaded.headers, loaded.body) == (e.status, e.headers, e.body)
        assert (loaded.stored_at, loaded.expires_at, loaded.stale_until, loaded.stale) == (
            e.stored_at, e.expires_at, e.stale_until, False)

    @pytest_twisted.ensureDeferred
    async def test_put_replaces(self, store: Any) -> None:
        await store_entry(store, key(), entry(b"one"))
        await store_entry(store, key(), entry(b"two"))
        assert (await store.load(key())).body == b"two"

    @pytest_twisted.ensureDeferred
    async def test_token_taken_before_invalidate_stores_nothing(self, store: Any) -> None:
        token = await store.begin(key())
        await store.invalidate("t1", "object", ("42",))
        assert not await store.put(key(), entry(), token)
        assert await store.load(key()) is None
        assert await store_entry(store, key())

    @pytest_twisted.ensureDeferred
    async def test_token_taken_before_invalidating_every_tenant_stores_nothing(self, store: Any) -> None:
        token = await store.begin(key())
        await store.invalidate(None, "object", ("42",))
        assert not await store.put(key(), entry(), token)

    @pytest_twisted.ensureDeferred
    async def test_token_survives_changes_to_other_resources(self, store: Any) -> None:
        token = await store.begin(key())
        await store.invalidate("t1", "object", ("43",))
        await store.invalidate("t2", "object", ("42",))
        await store.invalidate(None, "template", ("42",))
        await store.clear("t2")
        assert await store.put(key(), entry(), token)

    @pytest_twisted.ensureDeferred
    async def test_token_taken_before_mark_stale_stores_nothing(self, store: Any) -> None:
        token = await store.begin(key())
        await store.mark_stale("t1", "object", ("42",))
        assert not await store.put(key(), entry(), token)

    @pytest_twisted.ensureDeferred
    async def test_token_taken_before_clear_stores_nothing(self, store: Any) -> None:
        for tenant in ("t1", None):
            token = await store.begin(key())
            await store.clear(tenant)
            assert not await store.put(key(), entry(), token)

    @pytest_twisted.ensureDeferred
    async def test_invalidate_drops_every_variant_of_one_tenant(self, store: Any) -> None:
        for v in ("a", "b", "c"):
            await store_entry(store, key(variant=v))
        await store_entry(store, key(tenant="t2"))
        await store_entry(store, key(params=("43",)))
        assert await store.invalidate("t1", "object", ("42",)) == 3
        for v in ("a", "b", "c"):
            assert store.lookup(key(variant=v)) is None
            assert await store.load(key(variant=v)) is None
        assert await store.load(key(tenant="t2")) is not None
        assert await store.load(key(params=("43",))) is not None
        assert await store.invalidate("t1", "object", ("42",)) == 0

    @pytest_twisted.ensureDeferred
    async def test_invalidate_without_tenant_drops_every_tenant(self, store: Any) -> None:
        for t in ("t1", "t2", "t3"):
            for v in ("a", "b"):
                await store_entry(store, key(tenant=t, variant=v))
        await store_entry(store, key(params=("43",)))
        assert await store.invalidate(None, "object", ("42",)) == 6
        for t in ("t1", "t2", "t3"):
            assert await store.load(key(tenant=t, variant="a")) is None
        assert await store.load(key(params=("43",))) is not None

    @pytest_twisted.ensureDeferred
    async def test_mark_stale_marks_every_variant(self, store: Any) -> None:
        await store_entry(store, key(variant="a"))
        await store_entry(store, key(variant="b"))
        await store_entry(store, key(tenant="t2"))
        assert await store.mark_stale("t1", "object", ("42",)) == 2
        assert store.lookup(key(variant="a")).stale
        assert (await store.load(key(variant="b"))).stale
        assert not (await store.load(key(tenant="t2"))).stale
        assert await store.mark_stale(None, "object", ("42",)) == 3
        assert (await store.load(key(tenant="t2"))).stale

    @pytest_twisted.ensureDeferred
    async def test_clear_one_tenant(self, store: Any) -> None:
        await store_entry(store, key(variant="a"))
        await store_entry(store, key(route="template"))
        await store_entry(store, key(tenant="t2"))
        assert await store.clear("t1") == 2
        assert await store.load(key(variant="a")) is None
        assert await store.load(key(route="template")) is None
        assert await store.load(key(tenant="t2")) is not None

    @pytest_twisted.ensureDeferred
    async def test_clear_every_tenant(self, store: Any) -> None:
        await store_entry(store, key())
        await store_entry(store, key(tenant="t2"))
        assert await store.clear(None) == 2
        assert await store.load(key()) is None
        assert await store.load(key(tenant="t2")) is None
        assert store.stats()["entries"] == 0

    @pytest_twisted.ensureDeferred
    async def test_entry_too_big_is_not_stored(self, store: Any) -> None:
        assert not await store_entry(store, key(), entry(b"x" * (ENTRY_LIMIT + 1)))
        assert await store.load(key()) is None
        assert await store_entry(store, key(), entry(b"x" * (ENTRY_LIMIT // 2)))

    @pytest_twisted.ensureDeferred
    async def test_discard_drops_one_variant(self, store: Any) -> None:
        await store_entry(store, key(variant="a"))
        await store_entry(store, key(variant="b"))
        assert await store.discard(key(variant="a")) == 1
        assert await store.load(key(variant="a")) is None
        assert await store.load(key(variant="b")) is not None

    @pytest_twisted.ensureDeferred
    async def test_budget_holds_in_this_process(self, store: Any) -> None:
        for i in range(40):
            await store_entry(store, key(params=(str(i),)), entry(b"y" * 4000))
        stats = store.stats()
        assert 0 < stats["bytes"] <= self.local_budget
        assert stats["evictions"] > 0
        # the most recent is held here
        assert store.lookup(key(params=("39",))) is not None

    local_budget = 64 * 1024

    @pytest_twisted.ensureDeferred
    async def test_forget_releases_what_this_process_holds(self, store: Any) -> None:
        await store_entry(store, key())
        await store_entry(store, key(tenant="t2"))
        store.forget("t1", "object")
        assert store.lookup(key()) is None
        assert store.lookup(key(tenant="t2")) is not None
