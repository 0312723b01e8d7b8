"""
Real daemons (``twistd -n apicache``) sharing one real Redis: what users of
a scaled-out deployment see.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from daemon_support import metric, ready

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, RedisServer, Reply
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

OBJ = "/server/object(42)/header"
UP = "/api/object(42)/header"


@pytest.fixture
def pair(make_daemon: Callable[..., Daemon], redis_url: str) -> Callable[..., tuple[Daemon, Daemon]]:
    """
    Return ``make(url=None)`` starting two daemons that share one Redis
    under a fresh key prefix.
    """

    def make(url: str | None = None, **store: Any) -> tuple[Daemon, Daemon]:
        cfg = {"store": {"backend": "redis", "redis_url": url or redis_url,
                         "key_prefix": f"it-{uuid.uuid4().hex[:8]}", **store}}
        a = make_daemon(cfg)
        b = make_daemon(cfg)
        return ready(a), ready(b)

    return make


def test_a_miss_on_one_instance_is_a_hit_on_the_other(pair: Any, upstream: UpstreamStub) -> None:
    a, b = pair()
    first = a.get(OBJ)
    second = b.get(OBJ)
    assert (first.status, first.cache) == (200, "MISS")
    assert (second.status, second.cache) == (200, "HIT")
    assert second.body == first.body
    assert b.get(OBJ).cache == "HIT"
    assert upstream.calls(UP) == 1


def test_delete_on_one_instance_is_a_miss_on_the_other(pair: Any, upstream: UpstreamStub) -> None:
    a, b = pair()
    a.get(OBJ)
    assert b.get(OBJ).cache == "HIT"  # now also in b's in-process tier
    deleted = a.delete(OBJ, tenant="t1")
    assert (deleted.status, deleted.json()) == (200, {"invalidated": 1})
    # wall clock: through a real redis-server's pub/sub to another real daemon
    wait_until(lambda: metric(b, "apicache_redis_invalidations_received") >= 1, 1.0, 0.02, "b to receive the invalidation")
    assert b.get(OBJ).cache == "MISS"
    assert upstream.calls(UP) == 2


def test_delete_for_every_tenant_reaches_every_instance(pair: Any, upstream: UpstreamStub) -> None:
    a, b = pair()
    a.get(OBJ, tenant="t1")
    b.get(OBJ, tenant="t2")
    b.get(OBJ, tenant="t1")
    assert a.delete(OBJ).json() == {"invalidated": 2}
    # wall clock: through a real redis-server's pub/sub to another real daemon
    wait_until(lambda: metric(b, "apicache_redis_invalidations_received") >= 1, 1.0, 0.02, "b to receive the invalidation")
    assert b.get(OBJ, tenant="t1").cache == "MISS"
    assert b.get(OBJ, tenant="t2").cache == "MISS"


def test_an_entry_survives_a_daemon_restart(make_daemon: Callable[..., Daemon], redis_url: str,
                                            upstream: UpstreamStub) -> None:
    cfg = {"store": {"backend": "redis", "redis_url": redis_url, "key_prefix": f"it-{uuid.uuid4().hex[:8]}"}}
    a = ready(make_daemon(cfg))
    assert a.get(OBJ).cache == "MISS"
    assert a.stop() in (0, -15)
    again = ready(make_daemon(cfg))
    r = again.get(OBJ)
    assert (r.status, r.cache) == (200, "HIT")
    assert upstream.calls(UP) == 1


def test_tenants_stay_isolated_across_instances(pair: Any, upstream: UpstreamStub) -> None:
    a, b = pair()
    assert a.get(OBJ, tenant="t1").cache == "MISS"
    assert b.get(OBJ, tenant="t2").cache == "MISS"
    assert b.get(OBJ, tenant="t1").cache == "HIT"
    assert a.delete("/clear", tenant="t2").json() == {"invalidated": 1}
    assert b.get(OBJ, tenant="t1").cache == "HIT"
    assert upstream.calls(UP) == 2


def test_redis_down_then_back(pair: Any, redis_server: RedisServer, upstream: UpstreamStub) -> None:
    a, b = pair(url=redis_server.url)
    a.get(OBJ)
    assert b.get(OBJ).cache == "HIT"
    redis_server.stop()

    def not_ready(d: Daemon) -> Reply | None:
        r = d.request("GET", "/readyz")
        return r if r.status == 503 else None

    for d in (a, b):
        r = wait_until(lambda d=d: not_ready(d), 5.0, 0.02, "/readyz to answer 503")
        assert r.json() == {"ready": False, "failing": ["redis"]}
    for d in (a, b):
        # held in this process: still a hit; not held: fetched without the store
        assert (d.get(OBJ).status, d.get(OBJ).cache) == (200, "HIT")
        other = d.get("/server/object(7)/header")
        assert (other.status, other.cache) == (200, "BYPASS")
        for path in (OBJ, "/clear"):
            r = d.delete(path, tenant="t1")
            assert (r.status, r.json()["error"]) == (503, "store_unavailable")
        assert metric(d, "apicache_redis_up") == 0
        assert metric(d, "apicache_redis_errors") >= 3
    redis_server.start()
    for d in (a, b):
        ready(d, timeout=5.0)
    assert a.get("/server/object(8)/header").cache == "MISS"
    assert b.get("/server/object(8)/header").cache == "HIT"


def test_concurrent_misses_on_two_instances_cost_one_upstream_call(pair: Any, upstream: UpstreamStub) -> None:
    upstream.set("/api/object(42)/header", delay=0.3, body=b'{"one": 1}')
    a, b = pair()
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda i: (a if i % 2 else b).get(OBJ), range(20)))
    assert {(r.status, r.body) for r in replies} == {(200, b'{"one": 1}')}
    assert upstream.calls(UP) == 1


def test_an_answer_that_is_not_stored_does_not_hold_up_the_other_instance(pair: Any, upstream: UpstreamStub) -> None:
    upstream.set("/api/object(42)/header", status=404, delay=0.3, body=b"{}")
    a, b = pair(redis_lock_ttl=5.0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(a.get, OBJ)
        time.sleep(0.1)  # a holds the lock now
        started = time.monotonic()
        second = b.get(OBJ)
        elapsed = time.monotonic() - started
    assert first.result().status == second.status == 404
    # b waited for a's fetch, then fetched itself: not for the lock's 5 s
    # (wall clock: two real daemons and a real redis-server hold the lock)
    assert elapsed < 1.5
    assert upstream.calls(UP) == 2


def test_starting_while_redis_is_down(make_daemon: Callable[..., Daemon], redis_server: RedisServer,
                                      upstream: UpstreamStub) -> None:
    redis_server.stop()
    d = make_daemon({"store": {"backend": "redis", "redis_url": redis_server.url}})
    r = d.request("GET", "/readyz")
    assert (r.status, r.json()) == (503, {"ready": False, "failing": ["redis"]})
    first = d.get(OBJ)
    assert (first.status, first.cache) == (200, "BYPASS")
    redis_server.start()
    ready(d, timeout=5.0)
    assert d.get(OBJ).cache == "MISS"
    assert d.get(OBJ).cache == "HIT"
    assert upstream.calls(UP) == 2
