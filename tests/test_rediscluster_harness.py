"""
The Redis Cluster and Sentinel launchers (L{apicache.harness.rediscluster})
against the real processes they start: the clusters are usable, a write
acknowledged by the replicas (C{WAIT}) survives a kill -9 of its primary,
and the failover is observed and timed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apicache.harness.rediscluster import RedisCluster, RedisReplyError, RedisSentinels

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="redis-server and redis-cli are not installed",
    ),
]


def cli(port: int, *args: str) -> str:
    """
    Run ``redis-cli -c`` (following redirections, as a cluster client does)
    against the node on ``port``; return its output, stripped.
    """
    out = subprocess.run(["redis-cli", "-c", "-p", str(port), *args], capture_output=True, timeout=10, check=True)
    return out.stdout.decode().strip()


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[RedisCluster]:
    with RedisCluster(str(tmp_path), node_timeout_ms=1000) as c:
        yield c


@pytest.fixture(scope="module")
def calm_cluster(tmp_path_factory: Any) -> Iterator[RedisCluster]:
    """One cluster for the tests that change nothing but keys (one start, ~6 s, saved)."""
    with RedisCluster(str(tmp_path_factory.mktemp("calm-cluster")), node_timeout_ms=1000) as c:
        yield c


@pytest.fixture
def sentinels(tmp_path: Any) -> Iterator[RedisSentinels]:
    with RedisSentinels(str(tmp_path), down_after_ms=1000) as s:
        yield s


def test_cluster_layout(calm_cluster: RedisCluster) -> None:
    """
    Six nodes: three primaries serving all 16384 slots between them, each
    with one replica; every node says the cluster is ok.
    """
    cluster = calm_cluster
    assert len(cluster.nodes) == 6
    primaries = cluster.primaries()
    assert len(primaries) == 3
    slots = sorted(r for i in cluster.topology() if i.is_primary for r in i.slots)
    assert sum(hi - lo + 1 for lo, hi in slots) == 16384
    for p in primaries:
        assert len(cluster.replicas_of(p)) == 1
    assert cluster.state_ok()
    assert cluster.url.count(",") == 5


def test_cluster_key_through_any_node(calm_cluster: RedisCluster) -> None:
    """
    A key written through one node (following MOVED) reads back through
    every other node; the node that does not serve it answers MOVED.
    """
    cluster = calm_cluster
    cli(cluster.nodes[0].port, "SET", "harness-key", "v1")
    for n in cluster.nodes:
        if n in cluster.primaries():
            assert cli(n.port, "GET", "harness-key") == "v1"
    owner = cluster.primary_for("harness-key")
    other = next(n for n in cluster.primaries() if n is not owner)
    with pytest.raises(RedisReplyError, match="^MOVED"):
        other.command("GET", "harness-key")
    assert owner.command("GET", "harness-key") == b"v1"


@pytest.mark.slow
def test_cluster_failover(cluster: RedisCluster) -> None:
    """
    Kill -9 the primary of a key written with WAIT 1: its replica is
    promoted (within a few node timeouts), serves the key, and the old
    primary rejoins as its replica.
    """
    owner = cluster.primary_for("fo-key")
    [replica] = cluster.replicas_of(owner)
    set_reply, acked = owner.pipeline(("SET", "fo-key", "kept"), ("WAIT", 1, 2000))
    assert (set_reply, acked) == (b"OK", 1)
    killed = cluster.kill(owner)
    new = cluster.wait_failover(owner, timeout=30)
    took = time.monotonic() - killed
    assert new is replica
    assert took < 15, took  # wall clock: real redis-server nodes fail over
    assert new.command("GET", "fo-key") == b"kept"
    assert cli(cluster.live_nodes()[0].port, "GET", "fo-key") == "kept"
    cluster.restart(owner)
    assert cluster.replicas_of(new) == [owner]
    assert owner.command("ROLE")[0] == b"slave"


def test_sentinel_layout(sentinels: RedisSentinels) -> None:
    """
    Every sentinel names the primary; the replica follows it; a key written
    on the primary reads on the replica.
    """
    primary = sentinels.primary()
    assert primary is sentinels.first_primary
    assert sentinels.url.startswith("redis://") and sentinels.url.endswith("/0")
    assert sentinels.url.count(",") == 2
    replica = sentinels.data_nodes[1]
    assert primary.pipeline(("SET", "s-key", "v"), ("WAIT", 1, 2000)) == [b"OK", 1]
    assert replica.command("GET", "s-key") == b"v"
    with pytest.raises(RedisReplyError, match="READONLY"):
        replica.command("SET", "s-key", "w")


@pytest.mark.slow
def test_sentinel_failover(sentinels: RedisSentinels) -> None:
    """
    Kill -9 the primary: the sentinels promote the replica, which keeps a
    write acknowledged with WAIT; the old primary comes back as a replica
    that holds what was written after the failover.
    """
    old = sentinels.primary()
    replica = sentinels.data_nodes[1]
    assert old.pipeline(("SET", "s-fo", "kept"), ("WAIT", 1, 2000)) == [b"OK", 1]
    killed = sentinels.kill(old)
    new = sentinels.wait_failover(old, timeout=30)
    took = time.monotonic() - killed
    assert new is replica
    assert took < 15, took  # wall clock: real redis-sentinel processes fail over
    assert sentinels.master_address() == ("127.0.0.1", replica.port)
    assert new.command("GET", "s-fo") == b"kept"
    new.command("SET", "s-after", "1")
    # the old primary comes back as a replica of the new one (started so, as
    # a supervisor asking the sentinels does: RedisSentinels.restart says why)
    sentinels.restart(old, timeout=30)
    assert sentinels.primary() is new
    assert old.command("ROLE")[0] == b"slave"
    assert old.command("GET", "s-after") == b"1"


def test_client_bench_smoke(tmp_path: Any) -> None:
    """
    bench/redis_clients.py still runs: today's client and the chosen one
    (redis-py on threads) each measure a hit on a single node, and the
    table has a row for each without an error.
    """
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "redis_clients.py"), "--rounds", "1", "--seconds", "0.3",
         "--targets", "single", "--ops", "hit", "--candidates", "txredisapi,redispy-thread", "--no-web",
         "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": root},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "error" not in out.stdout, out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| txredisapi", "| redispy-thread"))]
    assert len(rows) == 2, out.stdout
