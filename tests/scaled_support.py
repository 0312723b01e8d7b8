"""
Fixtures for the Redis store on a real Redis Cluster and on a real
Sentinel-managed primary (L{apicache.harness.rediscluster}): private
processes on loopback, started by the tests, never a fake.

A plugin of tests/conftest.py: its fixtures are there for every test.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import greenlet
import pytest
import pytest_twisted
from redis_support import no_redis_server
from twisted.internet.defer import Deferred

from apicache.harness.polling import wait_until_async
from apicache.harness.rediscluster import RedisCluster, RedisSentinels
from apicache.store.redis.scaled import ScaledRedisStore

__all__ = ["redis_cluster", "redis_sentinels", "scaled_stores", "make_scaled_store", "need_redis_cli", "deployment"]


def need_redis_cli() -> None:
    """
    Skip (or, under CI=true, fail) without C{redis-server} and C{redis-cli}.
    """
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        no_redis_server("redis-server and redis-cli are not installed")


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """
    A 6-process Redis Cluster (3 primaries, 3 replicas) for this module.
    """
    need_redis_cli()
    directory = tempfile.mkdtemp(prefix="apicache-cluster-")
    with RedisCluster(directory, node_timeout_ms=2000) as c:
        yield c
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_sentinels() -> Iterator[RedisSentinels]:
    """
    One primary, one replica and three sentinels, for this module.
    """
    need_redis_cli()
    directory = tempfile.mkdtemp(prefix="apicache-sentinel-")
    with RedisSentinels(directory, down_after_ms=2000) as s:
        yield s
    shutil.rmtree(directory, ignore_errors=True)


def deployment(request: pytest.FixtureRequest, mode: str) -> Any:
    """
    Return the module's cluster (``mode="cluster"``) or sentinels.
    """
    return request.getfixturevalue("redis_cluster" if mode == "cluster" else "redis_sentinels")


def make_scaled_store(mode: str, url: str, prefix: str | None = None, **kwargs: Any) -> ScaledRedisStore:
    """
    Return a started L{ScaledRedisStore} (not waited for) under a fresh prefix.
    """
    from twisted.internet import reactor

    s = ScaledRedisStore(reactor, url, mode=mode, prefix=prefix or f"test-{uuid.uuid4().hex[:8]}", **kwargs)
    s.start()
    return s


@pytest.fixture
def scaled_stores(request: pytest.FixtureRequest) -> Iterator[Callable[..., ScaledRedisStore]]:
    """
    Return ``make(mode, prefix=None, wait=True, **kwargs)`` giving stores on
    the module's cluster or sentinels, all closed at the end of the test.
    """
    made: list[ScaledRedisStore] = []

    def make(mode: str, prefix: str | None = None, wait: bool = True, **kwargs: Any) -> ScaledRedisStore:
        s = make_scaled_store(mode, deployment(request, mode).url, prefix, **kwargs)
        made.append(s)
        if wait and greenlet.getcurrent() is not pytest_twisted._instances.gr_twisted:
            pytest_twisted.blockon(Deferred.fromCoroutine(wait_until_async(s.is_ready, 5.0, 0.01, "the store to connect")))
        return s

    yield make
    for s in made:
        pytest_twisted.blockon(s.close())
