"""
Tags in the Redis store, against a private redis-server: sorted sets per
tag, purges that take effect at once on every instance, the race rule for
tags across instances, batched deletion, refresh, the sweep of expired
members, and a store that cannot be reached.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from redis_support import ready, sleep
from store_contract import entry, key
from twisted.internet.defer import Deferred

from apicache.cache.keys import CacheKey
from apicache.cache.registry import CacheRegistry
from apicache.cache.tenant import FetchRequest
from apicache.config import RouteConfig
from apicache.harness.launchers import RedisServer
from apicache.harness.polling import wait_until_async
from apicache.store.interface import CachedResponse, StoreUnavailable
from apicache.store.redis import RedisStore
from apicache.store.redis import store as redis_store_module
from apicache.testing import FakeUpstream

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def tagged(*tags: str, body: bytes = b"x", ttl: float = 60.0) -> CachedResponse:
    e = entry(body, ttl=ttl)
    e.tags = tags
    return e


async def put(store: RedisStore, k: CacheKey, e: CachedResponse) -> bool:
    token = await store.begin(k)
    return bool(await store.put(k, e, token))


def raw(s: RedisStore, *args: Any) -> Deferred[Any]:
    return s.commands.execute(*args)


@pytest_twisted.ensureDeferred
async def test_tag_sets_are_sorted_sets_scored_by_expiry(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("z")))
    assert await put(s, key(), tagged("object:42", "list:1"))
    members = await raw(s, "ZRANGE", f"{s.prefix}:z:t1:object%3A42", 0, -1, "WITHSCORES")
    assert len(members) == 2
    assert float(members[1]) == pytest.approx((time.time() + 60) * 1000, abs=5000)
    assert await raw(s, "TYPE", f"{s.prefix}:Z:list%3A1") in (b"zset", "zset")


@pytest_twisted.ensureDeferred
async def test_purge_drops_the_tagged_entries_and_only_those(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("p")))
    for i in range(5):
        assert await put(s, key(params=(str(i),)), tagged("list:1" if i < 3 else "list:2"))
    assert await s.purge_tag("t1", "list:1") == 3
    other = await ready(stores(prefix=s.prefix))
    for i in range(5):
        found = await other.load(key(params=(str(i),)))
        assert (found is None) == (i < 3)
    assert await raw(s, "EXISTS", f"{s.prefix}:z:t1:list%3A1") == 0


@pytest_twisted.ensureDeferred
async def test_a_tag_belongs_to_its_tenant_in_redis(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("t")))
    assert await put(s, key("acme"), tagged("object:42"))
    assert await put(s, key("globex"), tagged("object:42"))
    assert await s.purge_tag("acme", "object:42") == 1
    other = await ready(stores(prefix=s.prefix))
    assert await other.load(key("acme")) is None
    assert await other.load(key("globex")) is not None
    assert await s.purge_tag(None, "object:42") == 1
    assert await other.load(key("globex")) is None


@pytest_twisted.ensureDeferred
async def test_a_purge_on_one_instance_reaches_the_other_instances_tier(stores: Callable[..., RedisStore]) -> None:
    shared = unique("two")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    assert await put(a, key(), tagged("object:42"))
    assert (await b.load(key())) is not None
    assert b.lookup(key()) is not None
    started = time.monotonic()
    await a.purge_tag(None, "object:42")
    # wall clock: the purge travels through a real redis-server's pub/sub,
    # whose latency only the clock measures
    await wait_until_async(lambda: b.lookup(key()) is None, 0.5, 0.001, "b to drop the purged entry")
    # (0.5 s: room for a loaded machine, make test runs three workers on two cores)
    assert time.monotonic() - started < 0.5
    assert b.counters["invalidations_received"] >= 1


@pytest_twisted.ensureDeferred
async def test_a_purge_takes_effect_in_redis_before_the_entries_are_deleted(stores: Callable[..., RedisStore]) -> None:
    """
    Reading checks the tags' generations: an entry whose deletion has not
    happened yet is a miss at once (here the deletion never runs).
    """
    s = await ready(stores(prefix=unique("gen")))
    assert await put(s, key(), tagged("object:42"))
    message = s._publish_message("g", "t1", "object:42", False)
    await s.commands.eval(
        redis_store_module.scripts.PURGE_TAG,
        [f"{s.prefix}:seq", f"{s.prefix}:L"],
        [s.prefix, "t1", "object%3A42", "0", "nobody-listens", message, 120000],
    )
    assert await raw(s, "EXISTS", redis_store_module.encode_key(s.prefix, key())) == 1
    other = await ready(stores(prefix=s.prefix))
    assert await other.load(key()) is None
    # the read deleted it
    assert await raw(s, "EXISTS", redis_store_module.encode_key(s.prefix, key())) == 0


@pytest_twisted.ensureDeferred
async def test_race_rule_for_tags_across_instances(stores: Callable[..., RedisStore]) -> None:
    """
    A fetch begun on B before a purge on A does not store an answer carrying
    the purged tag, in Redis or in B's tier; one carrying other tags does.
    """
    shared = unique("race")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    k1, k2 = key(params=("1",)), key(params=("2",))
    token1 = await b.begin(k1)
    token2 = await b.begin(k2)
    await a.purge_tag("t1", "list:1")
    assert not await b.put(k1, tagged("list:1", "object:1"), token1)
    assert b.lookup(k1) is None
    assert await a.load(k1) is None
    assert await b.put(k2, tagged("list:2"), token2)
    # a fetch begun after the purge stores
    assert await put(b, k1, tagged("list:1"))
    assert await a.load(k1) is not None


@pytest_twisted.ensureDeferred
async def test_an_entry_stored_again_during_a_purge_is_kept(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("again")))
    for i in range(1200):
        assert await put(s, key(params=(str(i),)), tagged("big"))
    d = s.purge_tag("t1", "big")
    # stored again before the batches reach it
    assert await put(s, key(params=("1199",)), tagged("big", body=b"new"))
    assert await d >= 1199
    other = await ready(stores(prefix=s.prefix))
    found = await other.load(key(params=("1199",)))
    assert found is not None and found.body == b"new"
    assert await other.load(key(params=("0",))) is None


@pytest_twisted.ensureDeferred
async def test_a_big_purge_runs_in_bounded_batches(stores: Callable[..., RedisStore], monkeypatch: Any) -> None:
    s = await ready(stores(prefix=unique("batch")))
    n = 3000
    pipe = []
    for i in range(n):
        pipe.append(put(s, key(params=(str(i),)), tagged("big")))
    for p in pipe:
        assert await p
    calls: list[int] = []
    original = s.commands.eval

    def counting(script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        if script is redis_store_module.scripts.DROP_BATCH:
            calls.append(int(args[0]))
        return original(script, keys, args)

    monkeypatch.setattr(s.commands, "eval", counting)
    assert await s.purge_tag("t1", "big") == n
    assert len(calls) == n // redis_store_module.TAG_DROP_BATCH
    assert await raw(s, "DBSIZE") > 0
    keys = await raw(s, "KEYS", f"{s.prefix}:e:*")
    assert keys == []


@pytest_twisted.ensureDeferred
async def test_refresh_by_tag_marks_entries_stale_everywhere(stores: Callable[..., RedisStore]) -> None:
    shared = unique("refresh")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared))
    assert await put(a, key(), tagged("list:1"))
    await b.load(key())
    assert await a.purge_tag("t1", "list:1", stale=True) == 1
    # wall clock: through a real redis-server's pub/sub
    await wait_until_async(lambda: b.lookup(key()) is not None and b.lookup(key()).stale, 1.0, 0.001, "b to see the entry marked stale")
    c = await ready(stores(prefix=shared))
    found = await c.load(key())
    assert found is not None and found.stale
    # a fetch begun before the refresh does not store; one after does
    token = await c.begin(key())
    await a.purge_tag("t1", "list:1", stale=True)
    assert not await c.put(key(), tagged("list:1"), token)
    assert await put(c, key(), tagged("list:1", body=b"fresh"))
    found = await (await ready(stores(prefix=shared))).load(key())
    assert found is not None and not found.stale and found.body == b"fresh"


@pytest_twisted.ensureDeferred
async def test_untagged_entry_replacing_a_tagged_one_is_not_purged(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("untag")))
    assert await put(s, key(), tagged("a"))
    assert await put(s, key(), entry(b"plain"))
    await s.purge_tag("t1", "a")
    found = await (await ready(stores(prefix=s.prefix))).load(key())
    assert found is not None and found.body == b"plain" and found.tags == ()


@pytest_twisted.ensureDeferred
async def test_the_sweep_trims_expired_members(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("sweep")))
    # the set lives as long as its longest-lived member
    assert await put(s, key(params=("long",)), tagged("t", ttl=60))
    # a second to live: the 20 puts finish within it on a loaded machine
    # (make test runs three workers on two cores), so no put trims another
    for i in range(20):
        assert await put(s, key(params=(str(i),)), tagged("t", ttl=1.0))
    zset = f"{s.prefix}:z:t1:t"
    assert await raw(s, "ZCARD", zset) == 21
    await sleep(1.2)
    # one SCAN step at a time, until the cursor comes round
    trimmed = await s.sweep_tags()
    while s._sweep_cursor != b"0":
        trimmed += await s.sweep_tags()
    assert trimmed == 20
    assert s.counters["tag_members_swept"] == 20
    assert await raw(s, "ZCARD", zset) == 1


@pytest_twisted.ensureDeferred
async def test_purge_fails_with_store_unavailable_when_redis_is_down(
    stores: Callable[..., RedisStore], redis_server: RedisServer
) -> None:
    s = await ready(stores(url=redis_server.url, wait=False))
    assert await put(s, key(), tagged("a"))
    redis_server.stop()
    await wait_until_async(lambda: not s.is_ready(), 5.0, 0.01, "the store to notice Redis is down")
    with pytest.raises(StoreUnavailable):
        await s.purge_tag("t1", "a")
    # the in-process tier dropped it all the same
    assert s.lookup(key()) is None


@pytest_twisted.ensureDeferred
async def test_a_request_after_another_instances_purge_does_not_join_an_older_fetch(
    stores: Callable[..., RedisStore],
) -> None:
    """
    The race rule across instances for coalescing: once B hears of A's tag
    purge, a request on B starts a fetch of its own instead of waiting for
    one that began before the purge (and may carry the tag).
    """
    from twisted.internet import reactor

    shared = unique("flights")
    a = await ready(stores(prefix=shared))
    b = await ready(stores(prefix=shared, lock_ttl=0))
    upstream = FakeUpstream()
    route = RouteConfig("list", "/l/<p>", "/l/{p}", params=("p",), fingerprint="f")
    registry = CacheRegistry(b, upstream, reactor, [route], (), tags_header="surrogate-key")
    k = CacheKey("t1", "list", ("1",), "v")
    first = registry.cache("t1", "list").get(k, FetchRequest("/l/1", []))
    await wait_until_async(lambda: len(upstream.pending) == 1, 2.0, 0.01, "the first fetch to start")
    before = b.counters["invalidations_received"]
    await a.purge_tag("t1", "object:42")
    await wait_until_async(lambda: b.counters["invalidations_received"] > before, 1.0, 0.001, "b to receive the tag purge")
    second = registry.cache("t1", "list").get(k, FetchRequest("/l/1", []))
    await wait_until_async(lambda: len(upstream.pending) == 2, 2.0, 0.01, "the second fetch to start")
    answer = [(b"content-type", b"application/json"), (b"surrogate-key", b"object:42")]
    upstream.pending[0].respond(body=b"old", headers=answer)
    upstream.pending[0].respond(body=b"new", headers=answer)
    assert (await first).response.body == b"old"
    assert (await second).response.body == b"new"
    found = await a.load(k)
    assert found is not None and found.body == b"new"


@pytest_twisted.ensureDeferred
async def test_generations_outlive_every_entry(stores: Callable[..., RedisStore]) -> None:
    s = await ready(stores(prefix=unique("gttl")))
    assert await put(s, key(), tagged("a", "b", ttl=7200.0))
    assert await put(s, key(params=("43",)), tagged("a", "c", ttl=7200.0))
    assert await s.purge_tag("t1", "b") == 1
    assert await s.purge_tag(None, "c") == 1
    for gen in (f"{s.prefix}:x:t1:b", f"{s.prefix}:y:t1:b", f"{s.prefix}:X:c", f"{s.prefix}:Y:c"):
        # longer than the longest-lived entry carrying a tag (2 h)
        assert int(await raw(s, "PTTL", gen)) > 7200 * 1000
