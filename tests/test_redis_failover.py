"""
Failovers and a reshard under traffic, through real daemons on a real Redis
Cluster and a real Sentinel set-up (SPEC.md section 7): a primary is killed
with SIGKILL while two daemons answer GETs; reads keep answering; a purge
answered 200 before the kill is not undone by the promotion, while one the
replicas could not acknowledge was answered 503 (and the test shows it was
indeed lost); entries are shared again once a replica is promoted; and
slots moved by ``redis-cli --cluster reshard`` under traffic cause no 5xx.

Each test prints what the callers saw (run with ``-s``): the failover time,
the answers by status and X-Cache, and for how long reads bypassed Redis
and purges were refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from scaled_support import need_redis_cli

from apicache.harness.launchers import Daemon
from apicache.harness.polling import wait_until
from apicache.harness.rediscluster import RedisCluster, RedisNode, RedisSentinels
from apicache.store.redis.layout import BucketLayout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def path(i: int | str) -> str:
    return f"/server/object({i})/header"


def body_n(reply: Any) -> int:
    """The upstream's request counter in an answer: tells entries apart."""
    return int(json.loads(reply.body)["n"])


@dataclass
class Seen:
    at: float
    kind: str
    status: int
    cache: str


@dataclass
class Traffic:
    """
    Threads that GET ``paths`` round-robin on ``daemons`` (and DELETE
    ``purged`` every 100 ms) until stopped, recording every answer.  One
    GET in three adds a query never asked before: a key of the same
    bucket that no in-process tier holds, so it goes to Redis.
    """

    daemons: list[Daemon]
    paths: list[str]
    purged: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    threads: int = 4

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _record(self, kind: str, status: int, cache: str) -> None:
        with self._lock:
            self.seen.append(Seen(time.monotonic(), kind, status, cache))

    def _reads(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            d = self.daemons[i % len(self.daemons)]
            p = self.paths[i % len(self.paths)]
            if i % 3 == 0:
                # a key never asked before, in the same bucket: through Redis
                p = f"{p}?cold={offset}-{i}"
            try:
                r = d.request("GET", p, [("org_id", "t1")], timeout=10)
                self._record("get", r.status, r.headers.get("x-cache", ""))
            except OSError as e:
                self._record("get", 0, type(e).__name__)
            i += 1

    def _purges(self) -> None:
        i = 0
        while not self._stop.is_set() and self.purged:
            d = self.daemons[i % len(self.daemons)]
            try:
                r = d.request("DELETE", self.purged[i % len(self.purged)], [("org_id", "t1")], timeout=10)
                self._record("delete", r.status, "")
            except OSError as e:
                self._record("delete", 0, type(e).__name__)
            i += 1
            self._stop.wait(0.1)

    def __enter__(self) -> Traffic:
        for n in range(self.threads):
            self._workers.append(threading.Thread(target=self._reads, args=(n * 7,), daemon=True))
        self._workers.append(threading.Thread(target=self._purges, daemon=True))
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(15)

    def summary(self, since: float) -> dict[str, Any]:
        """
        What the callers saw: answers by (kind, status, X-Cache), and the
        first and last second (from ``since``) of reads that bypassed Redis
        or failed, and of purges that were refused.
        """
        with self._lock:
            seen = list(self.seen)
        counts = Counter(f"{s.kind} {s.status} {s.cache}".strip() for s in seen)
        bypass = [s.at - since for s in seen if s.kind == "get" and (s.cache == "BYPASS" or s.status != 200)]
        refused = [s.at - since for s in seen if s.kind == "delete" and s.status != 200]
        return {
            "answers": dict(sorted(counts.items())),
            "reads_bypassing_or_failing_s": [round(min(bypass), 2), round(max(bypass), 2)] if bypass else None,
            "purges_refused_s": [round(min(refused), 2), round(max(refused), 2)] if refused else None,
        }


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n{name}: {json.dumps(figures)}")


def ready(*daemons: Daemon, timeout: float = 15.0) -> None:
    for d in daemons:
        wait_until(lambda d=d: d.request("GET", "/readyz").status == 200, timeout, what=lambda d=d: d.logs()[-3000:])


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    need_redis_cli()
    directory = tempfile.mkdtemp(prefix="apicache-failover-")
    with RedisCluster(directory, node_timeout_ms=1000) as c:
        yield c
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sentinels() -> Iterator[RedisSentinels]:
    need_redis_cli()
    directory = tempfile.mkdtemp(prefix="apicache-failover-")
    with RedisSentinels(directory, down_after_ms=1000) as s:
        yield s
    shutil.rmtree(directory, ignore_errors=True)


def cut(primary: RedisNode, replica: RedisNode) -> Callable[[], None]:
    """
    Return what freezes ``replica`` and cuts its link to ``primary``: what
    the primary writes from then on never reaches it (a frozen replica
    alone would still find the writes in its socket's buffer).
    """

    def freeze() -> None:
        replica.pause()
        primary.command("CLIENT", "KILL", "TYPE", "replica")

    return freeze


def daemons(make_daemon: Callable[..., Daemon], store: dict[str, Any]) -> tuple[str, Daemon, Daemon]:
    prefix = f"fo-{uuid.uuid4().hex[:8]}"
    cfg = {"store": {"backend": "redis", "key_prefix": prefix, "redis_timeout": 0.5, **store},
           "server": {"access_log": False}}
    a, b = make_daemon(cfg), make_daemon(cfg)
    ready(a, b)
    return prefix, a, b


def the_promises_hold_across(
    kill: Callable[[], float],
    promoted: Callable[[], None],
    a: Daemon,
    b: Daemon,
    upstream: Any,
    victims: list[str],
    others: list[str],
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    name: str,
) -> None:
    """
    The failover scenario, for either deployment.  ``victims`` are paths
    whose keys the killed primary serves (at least 30), ``others`` paths
    on other primaries (none with Sentinel).
    """
    x, y, w = victims[:3]
    reads, fresh = victims[3:9], victims[9:]
    for p in (x, y, *reads, *others):
        assert a.get(p).status == 200
        assert b.get(p).cache == "HIT"
    first_x, first_y = body_n(b.get(x)), body_n(b.get(y))
    # a purge the replicas acknowledged: answered 200
    assert a.delete(x, tenant="t1").status == 200
    # a purge the (frozen) replica can't acknowledge: refused, 503
    freeze()
    r = a.delete(y, tenant="t1")
    assert (r.status, r.json()["error"]) == (503, "store_unavailable"), r.body

    def shared_again() -> bool:
        # a new entry: a miss on A (stored in Redis), then a hit on B
        z = fresh.pop()
        return a.get(z).cache == "MISS" and b.get(z).cache == "HIT"

    with Traffic([a, b], reads + others, purged=[w]) as traffic:
        time.sleep(0.2)
        killed = kill()
        thaw()
        promoted()
        failover = time.monotonic() - killed
        wait_until(shared_again, 20.0, 0.1, "a new entry shared again")
        shared_at = time.monotonic() - killed
        time.sleep(1.0)
    figures = traffic.summary(killed)
    figures.update(failover_s=round(failover, 2), shared_again_s=round(shared_at, 2))
    report(name, figures)

    answers = figures["answers"]
    # reads kept answering: every GET a 200, from the tier, Redis or upstream
    assert not [k for k in answers if k.startswith("get") and not k.startswith("get 200")], answers
    # purges of the failed primary's keys were refused while it was down,
    # never answered 200 and lost: after the promotion they answer 200 again
    assert a.delete(w, tenant="t1").status == 200
    # the purge answered 200 before the kill is not undone
    got = b.get(x)
    assert got.cache != "HIT" or body_n(got) > first_x, (got.cache, body_n(got), first_x)
    # the one answered 503 was indeed lost with the primary: a 200 then
    # would have been a lie (this is what WAIT prevents)
    lost = b.get(y)
    assert (lost.cache, body_n(lost)) == ("HIT", first_y)
    assert a.delete(y, tenant="t1").status == 200
    # (B hears of it through the cluster bus, a moment after A's answer)
    wait_until(lambda: b.get(y).cache == "MISS", 2.0, what="B to hear of the purge")
    assert upstream.calls() > 0


def test_cluster_primary_killed(cluster: RedisCluster, make_daemon: Callable[..., Daemon], upstream: Any) -> None:
    prefix, a, b = daemons(make_daemon, {"redis_mode": "cluster", "redis_url": cluster.url})
    layout = BucketLayout(prefix)
    victim = cluster.primaries()[0]
    replica = cluster.replicas_of(victim)[0]
    mine = [i for i in range(400) if cluster.primary_for(layout.resource("t1", "object", (str(i),))).port == victim.port]
    theirs = [i for i in range(400) if i not in mine]
    victims, others = [path(i) for i in mine[:40]], [path(i) for i in theirs[:6]]

    def kill() -> float:
        return cluster.kill(victim)

    def promoted() -> None:
        assert cluster.wait_failover(victim, 30.0).port == replica.port

    the_promises_hold_across(
        kill, promoted, a, b, upstream, victims, others, cut(victim, replica), replica.resume, "cluster failover"
    )


def test_sentinel_primary_killed(
    sentinels: RedisSentinels, make_daemon: Callable[..., Daemon], upstream: Any
) -> None:
    prefix, a, b = daemons(make_daemon, {"redis_mode": "sentinel", "redis_url": sentinels.url,
                                         "redis_sentinel_master": sentinels.master_name})
    victim = sentinels.primary()
    replica = next(n for n in sentinels.data_nodes if n is not victim)

    def kill() -> float:
        return sentinels.kill(victim)

    def promoted() -> None:
        assert sentinels.wait_failover(victim, 30.0).port == replica.port

    the_promises_hold_across(
        kill, promoted, a, b, upstream, [path(i) for i in range(40)], [], cut(victim, replica), replica.resume,
        "sentinel failover",
    )


def node_ids(cluster: RedisCluster) -> dict[int, str]:
    return {i.port: i.node_id for i in cluster.topology()}


def test_reshard_under_traffic_makes_no_5xx(
    cluster: RedisCluster, make_daemon: Callable[..., Daemon], upstream: Any
) -> None:
    """
    2,000 slots (about 31 buckets) move from one primary to another with
    ``redis-cli --cluster reshard`` while two daemons answer GETs and
    DELETEs of resources in those slots: no answer is a 5xx, and entries
    stay shared.
    """
    prefix, a, b = daemons(make_daemon, {"redis_mode": "cluster", "redis_url": cluster.url})
    layout = BucketLayout(prefix)
    src, dst = cluster.primaries()[:2]
    moving = [i for i in range(600) if cluster.primary_for(layout.resource("t1", "object", (str(i),))).port == src.port]
    paths = [path(i) for i in moving[:40]]
    for p in paths:
        assert a.get(p).status == 200
    ids = node_ids(cluster)
    with Traffic([a, b], paths[8:], purged=paths[:8]) as traffic:
        time.sleep(0.5)
        started = time.monotonic()
        done = subprocess.run(
            ["redis-cli", "--cluster", "reshard", src.address, "--cluster-from", ids[src.port],
             "--cluster-to", ids[dst.port], "--cluster-slots", "2000", "--cluster-yes"],
            capture_output=True, timeout=120,
        )
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        cluster.wait_ok(30.0)
        time.sleep(1.0)
    figures = traffic.summary(started)
    moved = sum(1 for i in moving[:40] if cluster.primary_for(layout.resource("t1", "object", (str(i),))).port == dst.port)
    figures.update(reshard_s=round(took, 2), resources_moved=moved)
    report("reshard", figures)
    assert moved > 0
    assert not [k for k in figures["answers"] if k.split()[1].startswith("5") or k.split()[1] == "0"], figures
    # shared after the move: a miss on one daemon is a hit on the other
    fresh = path(moving[45])
    assert a.get(fresh).cache == "MISS"
    assert b.get(fresh).cache == "HIT"
