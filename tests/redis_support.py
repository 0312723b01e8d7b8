"""
Fixtures for tests against a real Redis: a private ``redis-server`` on a
free loopback port (or ``REDIS_URL`` when set), never the machine's shared
instance and never a fake.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import greenlet
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from apicache.harness.launchers import RedisServer
from apicache.harness.polling import wait_until_async
from apicache.store.redis import RedisStore

#: Under CI=true (.ci/run) a missing redis-server fails the test: skipping
#: would leave the whole RedisStore contract untested without a word.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def no_redis_server(reason: str) -> None:
    """
    Skip the test for want of C{redis-server}, or fail it under C{CI=true}.
    """
    if IN_CI:
        pytest.fail(f"CI=true: {reason} (.ci/run installs it with apt-get)", pytrace=False)
    pytest.skip(reason)


needs_redis_server = pytest.mark.skipif(
    not IN_CI and shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """
    The URL of a Redis for this module: ``REDIS_URL``, else a private server.
    """
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        no_redis_server("redis-server is not installed and REDIS_URL is not set")
    directory = tempfile.mkdtemp(prefix="apicache-redis-")
    server = RedisServer(directory).start()
    yield server.url
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Any) -> Iterator[RedisServer]:
    """
    A private server this test may stop, freeze and restart.
    """
    if shutil.which("redis-server") is None:
        no_redis_server("redis-server is not installed")
    server = RedisServer(str(tmp_path)).start()
    yield server
    server.resume() if server.proc and server.proc.poll() is None else None
    server.stop()


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor

    return deferLater(reactor, seconds, lambda: None)


async def ready(store: RedisStore, timeout: float = 5.0) -> RedisStore:
    """
    Wait until ``store`` is connected and return it.
    """
    await wait_until_async(store.is_ready, timeout, 0.01, "the store to connect")
    return store


def make_store(url: str, prefix: str | None = None, **kwargs: Any) -> RedisStore:
    """
    Return a started L{RedisStore} (not waited for) under a fresh prefix.
    """
    from twisted.internet import reactor

    s = RedisStore(reactor, url, prefix=prefix or f"test-{uuid.uuid4().hex[:8]}", **kwargs)
    s.start()
    return s


@pytest.fixture
def stores(redis_url: str) -> Iterator[Callable[..., RedisStore]]:
    """
    Return ``make(prefix=None, wait=True, **kwargs)`` giving connected stores,
    all closed at the end of the test.
    """
    made: list[RedisStore] = []

    def make(prefix: str | None = None, wait: bool = True, url: str | None = None, **kwargs: Any) -> RedisStore:
        s = make_store(url or redis_url, prefix, **kwargs)
        made.append(s)
        # inside a test coroutine (the reactor's greenlet) use `await ready(s)`
        if wait and greenlet.getcurrent() is not pytest_twisted._instances.gr_twisted:
            pytest_twisted.blockon(Deferred.fromCoroutine(wait_until_async(s.is_ready, 5.0, 0.01, "the store to connect")))
        return s

    yield make
    for s in made:
        pytest_twisted.blockon(s.close())
