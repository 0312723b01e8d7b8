"""
Event watermarks shared through a real Redis (group mode, SPEC.md section
5): merged with max, stamped with Redis's clock, read back never later than
they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import pytest_twisted
from redis_support import ready

from apicache.harness.launchers import RedisServer
from apicache.store.interface import StoreUnavailable
from apicache.store.redis import RedisStore
from apicache.store.redis.watermarks import RedisWatermarks

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration


def exchange(store: RedisStore, key: str, live: bool = True) -> RedisWatermarks:
    from twisted.internet import reactor

    return RedisWatermarks(store.commands.eval, key, reactor, lambda: live)


@pytest_twisted.ensureDeferred
async def test_marks_are_merged_with_max_and_read_back_no_later_than_published(stores: Callable[..., RedisStore]) -> None:
    from twisted.internet import reactor

    prefix = f"wm-{uuid.uuid4().hex[:8]}"
    a = exchange(await ready(stores(prefix, wait=False)), f"{prefix}:events:g")
    b = exchange(await ready(stores(prefix, wait=False)), f"{prefix}:events:g")
    now = reactor.seconds()
    await a.publish({("t", 0): now - 1.0, ("t", 1): now - 2.0, ("t", 2): float("-inf")})
    await b.publish({("t", 0): now - 3.0, ("a:b", 1): now - 0.5})
    marks = await b.fetch()
    assert set(marks) == {("t", 0), ("t", 1), ("a:b", 1)}, "−∞ is never published"
    # one clock on one host: converted twice, within the round trips, never later
    assert now - 1.05 < marks[("t", 0)] <= now - 1.0, "the larger mark won"
    assert now - 2.05 < marks[("t", 1)] <= now - 2.0
    assert now - 0.55 < marks[("a:b", 1)] <= now - 0.5
    assert b.is_live()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_redis_is_an_error(redis_server: RedisServer) -> None:
    from twisted.internet import reactor

    store = RedisStore(reactor, redis_server.url, prefix="wm", timeout=0.3)
    store.start()
    try:
        await ready(store)
        ex = exchange(store, "wm:events:g")
        redis_server.pause()
        with pytest.raises(StoreUnavailable):
            await ex.fetch()
        with pytest.raises(StoreUnavailable):
            await ex.publish({("t", 0): reactor.seconds()})
    finally:
        redis_server.resume()
        await store.close()
