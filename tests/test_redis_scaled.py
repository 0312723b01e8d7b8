"""
The Redis store on a real Redis Cluster (3 primaries, 3 replicas) and on a
real Sentinel-managed primary (1 replica, 3 sentinels): the store contract,
what several instances see, purges reaching every primary, and purges
confirmed by the replicas (SPEC.md section 7).  The failovers and the
reshard under traffic are in test_redis_failover.py (slow).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from redis_support import ready, sleep
from scaled_support import deployment, need_redis_cli
from store_contract import entry, key, make_store_tests, store_entry

from apicache.harness.launchers import Daemon
from apicache.harness.polling import wait_until, wait_until_async
from apicache.harness.rediscluster import RedisCluster, RedisNode, RedisSentinels
from apicache.store.interface import StoreUnavailable
from apicache.store.redis.layout import BUCKET_TAGS, key_slot
from apicache.store.redis.scaled import ScaledRedisStore

pytestmark = pytest.mark.integration

MODES = ["cluster", "sentinel"]


async def cluster_store(
    request: pytest.FixtureRequest, max_bytes: int, max_entry_bytes: int, tenant_max_bytes: int = 0
) -> ScaledRedisStore:
    make = request.getfixturevalue("scaled_stores")
    return await ready(
        make("cluster", local_max_bytes=max_bytes, max_entry_bytes=max_entry_bytes,
             tenant_max_bytes=tenant_max_bytes, wait=False)
    )


async def sentinel_store(
    request: pytest.FixtureRequest, max_bytes: int, max_entry_bytes: int, tenant_max_bytes: int = 0
) -> ScaledRedisStore:
    make = request.getfixturevalue("scaled_stores")
    return await ready(
        make("sentinel", local_max_bytes=max_bytes, max_entry_bytes=max_entry_bytes,
             tenant_max_bytes=tenant_max_bytes, wait=False)
    )


class TestClusterStoreContract(make_store_tests(cluster_store, tenant_cap=True)):
    """The store contract, on a Redis Cluster."""


class TestSentinelStoreContract(make_store_tests(sentinel_store, tenant_cap=True)):
    """The store contract, on the master the sentinels name."""


# -- the layout on a real cluster ------------------------------------------------


def test_bucket_tags_hash_where_the_cluster_says(redis_cluster: RedisCluster) -> None:
    """Redis itself puts every bucket's tag in the slot the layout computes."""
    node = redis_cluster.nodes[0]
    for tag in BUCKET_TAGS[::17]:
        assert int(node.command("CLUSTER", "KEYSLOT", f"apicache:{{{tag}}}:e:x")) == key_slot(tag)


def test_buckets_are_spread_over_every_primary(redis_cluster: RedisCluster) -> None:
    """Each of the three primaries serves about a third of the buckets."""
    served = {p.port: 0 for p in redis_cluster.primaries()}
    for tag in BUCKET_TAGS:
        served[redis_cluster.primary_for(f"x{{{tag}}}").port] += 1
    assert sorted(served.values()) == [85, 85, 86]


# -- several instances -----------------------------------------------------------


def entry_keys(store: ScaledRedisStore, nodes: list[RedisNode]) -> dict[int, int]:
    """
    Return, for each node, how many of ``store``'s entry keys it holds (one
    SCAN pass per node).
    """
    counts = {}
    for n in nodes:
        cursor, found = b"0", 0
        while True:
            cursor, keys = n.command("SCAN", cursor, "MATCH", f"{store.prefix}:*", "COUNT", 1000)
            found += sum(1 for k in keys if store.layout.is_entry(k))
            if cursor == b"0":
                break
        counts[n.port] = found
    return counts


def data_nodes(request: pytest.FixtureRequest, mode: str) -> list[RedisNode]:
    d = deployment(request, mode)
    return d.primaries() if mode == "cluster" else [d.primary()]


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_what_one_instance_stores_another_loads(request: Any, mode: str) -> None:
    make = request.getfixturevalue("scaled_stores")
    prefix = f"two-{uuid.uuid4().hex[:8]}"
    a = await ready(make(mode, prefix, wait=False))
    b = await ready(make(mode, prefix, wait=False))
    assert await store_entry(a, key(), entry(b"shared"))
    assert b.lookup(key()) is None
    got = await b.load(key())
    assert got is not None and got.body == b"shared"
    assert b.lookup(key()) is not None


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_invalidations_reach_the_other_instance(request: Any, mode: str) -> None:
    """
    A resource invalidated on one instance (one bucket: published from
    inside its script) and a tenant cleared (several buckets: published once
    after them) leave the other's in-process tier too.
    """
    make = request.getfixturevalue("scaled_stores")
    prefix = f"inv-{uuid.uuid4().hex[:8]}"
    a = await ready(make(mode, prefix, wait=False))
    b = await ready(make(mode, prefix, wait=False))
    for k in (key(), key(params=("43",)), key(tenant="t2")):
        assert await store_entry(a, k)
        assert await b.load(k) is not None
    assert await a.invalidate("t1", "object", ("42",)) == 1
    await wait_until_async(lambda: b.lookup(key()) is None, 2.0, what="B to drop the invalidated entry")
    assert b.lookup(key(params=("43",))) is not None
    assert await a.clear("t1") == 1
    await wait_until_async(lambda: b.lookup(key(params=("43",))) is None, 2.0, what="B to drop the cleared entry")
    assert b.lookup(key(tenant="t2")) is not None
    assert await a.purge_tag(None, "none") == 0
    await wait_until_async(lambda: b.counters["invalidations_received"] == 3, 2.0, what="three messages on B")


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_purges_of_every_tenant_reach_every_primary(request: Any, mode: str) -> None:
    """
    Entries of 48 tenants land on every primary; a resource invalidated for
    every tenant, a tag purged across tenants and /clear each leave none
    behind on any primary, and count every one.
    """
    make = request.getfixturevalue("scaled_stores")
    s = await ready(make(mode, wait=False))
    nodes = data_nodes(request, mode)
    tenants = [f"tenant-{i}" for i in range(48)]

    async def fill() -> None:
        for t in tenants:
            assert await store_entry(s, key(tenant=t), entry(tags=("list:1",)))

    await fill()
    held = entry_keys(s, nodes)
    assert all(n > 0 for n in held.values()), held
    assert sum(held.values()) == len(tenants)
    assert await s.invalidate(None, "object", ("42",)) == len(tenants)
    assert sum(entry_keys(s, nodes).values()) == 0
    for t in tenants[:3]:
        assert await s.load(key(tenant=t)) is None

    await fill()
    assert await s.purge_tag(None, "list:1") == len(tenants)
    assert sum(entry_keys(s, nodes).values()) == 0

    await fill()
    assert await s.clear(None) == len(tenants)
    assert entry_keys(s, nodes) == {n.port: 0 for n in nodes}


@pytest_twisted.ensureDeferred
async def test_a_tenants_clear_and_tag_purge_stay_within_its_buckets(request: Any) -> None:
    make = request.getfixturevalue("scaled_stores")
    s = await ready(make("cluster", wait=False))
    for i in range(20):
        assert await store_entry(s, key(params=(str(i),)), entry(tags=("t",)))
        assert await store_entry(s, key(tenant="other", params=(str(i),)), entry(tags=("t",)))
    used = {s.layout.at(key(params=(str(i),))) for i in range(20)}
    assert len(used) > 1 and used <= set(s.layout.of_tenant("t1"))
    assert await s.purge_tag("t1", "t") == 20
    assert await s.load(key(tenant="other", params=("3",))) is not None
    assert await s.clear("other") == 20


# -- purges confirmed by the replicas ----------------------------------------------


def replica_of_bucket(request: Any, mode: str, bucket: str) -> RedisNode:
    d = deployment(request, mode)
    if mode == "cluster":
        return d.replicas_of(d.primary_for(bucket))[0]
    sentinels: RedisSentinels = d
    return next(n for n in sentinels.data_nodes if n.alive and n is not sentinels.primary())


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_a_purge_the_replica_does_not_acknowledge_fails(request: Any, mode: str) -> None:
    """
    With the replica of the primary that took it frozen, a purge fails with
    StoreUnavailable (503 store_unavailable) within about redis_timeout,
    while reads keep answering; once the replica is back it succeeds.
    """
    make = request.getfixturevalue("scaled_stores")
    s = await ready(make(mode, wait=False, timeout=0.5))
    reader = await ready(make(mode, s.prefix, wait=False, timeout=0.5))
    assert await store_entry(s, key())
    replica = replica_of_bucket(request, mode, s.layout.at(key()))
    replica.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="acknowledged|replicas"):
            await s.invalidate("t1", "object", ("42",))
        took = time.monotonic() - started
        assert 0.25 < took < 1.0, took
        assert s.counters["purges_not_confirmed"] == 1
        # the bump is on the primary: nothing of it is served from there
        assert await reader.load(key()) is None
        assert await store_entry(reader, key(params=("7",)))
    finally:
        replica.resume()
    await sleep(0.05)
    assert await s.invalidate("t1", "object", ("7",)) == 1
    assert s.counters["purges_confirmed"] >= 1


# -- the real daemon ----------------------------------------------------------------


OBJ = "/server/object(42)/header"
UP = "/api/object(42)/header"


@pytest.mark.parametrize("mode", MODES)
def test_daemons_share_entries_and_purges(
    request: Any, mode: str, make_daemon: Callable[..., Daemon], upstream: Any
) -> None:
    """
    Two real daemons on the cluster (or sentinels): a miss on one is a hit
    on the other; a DELETE on one answers 200 once the replicas have it and
    is a miss on the other; with the replica frozen a DELETE answers 503
    store_unavailable while GETs keep answering 200.
    """
    need_redis_cli()
    d = deployment(request, mode)
    cfg = {"store": {"backend": "redis", "redis_mode": mode, "redis_url": d.url,
                     "key_prefix": f"it-{uuid.uuid4().hex[:8]}"}}
    if mode == "sentinel":
        cfg["store"]["redis_sentinel_master"] = d.master_name
    a = make_daemon(cfg)
    b = make_daemon(cfg)
    for x in (a, b):
        wait_until(lambda x=x: x.request("GET", "/readyz").status == 200, 10.0, what=lambda x=x: x.logs()[-2000:])
    assert a.get(OBJ).cache == "MISS"
    assert b.get(OBJ).cache == "HIT"
    assert upstream.calls(UP) == 1
    assert a.delete(OBJ, tenant="t1").status == 200
    assert b.get(OBJ).cache == "MISS"
    assert upstream.calls(UP) == 2

    replica = replica_of_bucket(request, mode, f"{cfg['store']['key_prefix']}:{{{BUCKET_TAGS[0]}}}")
    # the replica of every primary: whichever bucket the resource is in
    frozen = [replica] if mode == "sentinel" else [n for p in d.primaries() for n in d.replicas_of(p)]
    for n in frozen:
        n.pause()
    try:
        r = a.delete(OBJ, tenant="t1")
        assert (r.status, r.json()["error"]) == (503, "store_unavailable")
        got = b.get(OBJ)
        assert got.status == 200
    finally:
        for n in frozen:
            n.resume()
    time.sleep(0.1)
    assert a.delete(OBJ, tenant="t1").status == 200


def vcap_for(mode: str, d: Any) -> str:
    """A binding of the module's cluster (SAP BTP's form) or sentinels (Spring Cloud Bindings' form)."""
    import json

    if mode == "cluster":
        seed = d.nodes[0]
        label, creds = "redis-cache", {"cluster_mode": True, "hostname": "127.0.0.1", "port": seed.port,
                                       "password": "", "tls": False}
    else:
        label, creds = "redis", {"sentinel.nodes": ",".join(d.sentinel_addresses), "sentinel.master": d.master_name}
    return json.dumps({label: [{"name": "cache", "label": label, "tags": [], "credentials": creds}]})


@pytest.mark.parametrize("mode", MODES)
def test_a_cloud_foundry_binding_selects_the_mode(
    request: Any, mode: str, make_daemon: Callable[..., Daemon], upstream: Any
) -> None:
    """
    A daemon whose only Redis configuration is a VCAP_SERVICES binding of
    the cluster (or the sentinels) runs in that mode: it is ready, shares
    entries with a daemon configured by file, and says so at start.
    """
    need_redis_cli()
    d = deployment(request, mode)
    prefix = f"cf-{uuid.uuid4().hex[:8]}"
    a = make_daemon({"store": {"key_prefix": prefix}}, env={"VCAP_SERVICES": vcap_for(mode, d)})
    cfg = {"store": {"backend": "redis", "redis_mode": mode, "redis_url": d.url, "key_prefix": prefix}}
    if mode == "sentinel":
        cfg["store"]["redis_sentinel_master"] = d.master_name
    b = make_daemon(cfg)
    for x in (a, b):
        wait_until(lambda x=x: x.request("GET", "/readyz").status == 200, 10.0, what=lambda x=x: x.logs()[-2000:])
    assert a.get(OBJ).cache == "MISS"
    assert b.get(OBJ).cache == "HIT"
    assert "store.redis_mode" in a.logs()
