"""
What each operation of the Redis store costs Redis, on a private local
Redis Cluster (3 primaries, 3 replicas) and, for comparison, on one private
``redis-server``: the figures docs/capacity.md builds on.

    make bench-redis       # or: .venv/bin/python bench/redis_ops.py [--ops 2000] [--json out.json]

For each operation, run ``--ops`` times (the fan-outs fewer) with
``--concurrency`` in flight through the real store
(L{apicache.store.redis.scaled.ScaledRedisStore}, or
L{apicache.store.redis.RedisStore} for one node), it reads every node's
``INFO commandstats``, ``INFO stats`` and ``INFO cpu`` before and after
(counters Redis keeps anyway: no MONITOR) and reports per operation:

- ``calls``: the store's calls to Redis (a script, an MGET, a barrier and
  its WAIT in one pipeline: one call each), counted in the client;
- ``cmds``: commands Redis ran, those inside scripts included;
- ``cpu_us``: Redis CPU on the primaries (and the replicas apart);
- ``bytes``: bytes between the store and the primaries, both ways, and
  the bytes the primaries copied to their replicas;
- ``client_us``: the store's own CPU (all its threads), and the rate.

Operations (1 KiB bodies, every entry with two tags, 64 tenants):

    miss        load (GET_OR_LOCK takes the lock) + begin (MGET) + put (PUT_TAGGED)
    hit         load of a stored entry, the in-process tier emptied first (a Redis hit)
    purge       a resource of one tenant (one bucket), confirmed by the replicas
    tag-tenant  a tag of one tenant (its 8 buckets), confirmed
    purge-all   a resource of every tenant (every bucket), confirmed
    tag-all     a tag of every tenant (every bucket), confirmed
    event       the listener's work for an invalidation event: purges one after the
                other, as a batch is applied (its rate is events per second per listener)

and ``memory``: Redis's ``used_memory_dataset`` per stored entry (body,
key, tag records and sets), primaries only.

With ``--daemon`` (needs ``wrk``) it also measures the real daemon's CPU
per request under ``wrk`` (bench/run.py's upstream and load, 50
connections): in-process hits, Redis hits (an in-process tier too small to
hold anything) and misses (unique keys), with the memory store and on the
cluster: the per-core figures of docs/capacity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import defer, reactor, threads  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from apicache.cache.keys import CacheKey  # noqa: E402
from apicache.harness.launchers import RedisServer  # noqa: E402
from apicache.harness.rediscluster import RedisCluster  # noqa: E402
from apicache.store.interface import CachedResponse  # noqa: E402
from apicache.store.redis import RedisStore  # noqa: E402
from apicache.store.redis.scaled import ScaledRedisStore  # noqa: E402

BODY = b"x" * 1024
TENANTS = 64


def entry(tags: tuple[str, ...]) -> CachedResponse:
    now = time.time()
    return CachedResponse(
        200, ((b"content-type", b"application/json"), (b"etag", b'"v1"')), BODY,
        stored_at=now, expires_at=now + 3600, stale_until=now + 3600, tags=tags,
    )


def key(i: int) -> CacheKey:
    return CacheKey(f"tenant-{i % TENANTS}", "object", (str(i),), "fp")


def info(port: int, section: str) -> dict[str, str]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode())
        f = s.makefile("rb")
        n = int(f.readline()[1:])
        text = f.read(n + 2).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def snapshot(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    stats = info(port, "stats")
    for k in ("total_net_input_bytes", "total_net_output_bytes", "total_net_repl_output_bytes"):
        out[k] = float(stats.get(k, 0))
    cpu = info(port, "cpu")
    out["cpu"] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    calls = 0
    for k, v in info(port, "commandstats").items():
        if k.startswith("cmdstat_"):
            calls += int(dict(p.split("=") for p in v.split(","))["calls"])
    out["cmds"] = float(calls)
    # the data set alone: the replication backlog and client buffers grow
    # while they warm up, whatever is stored
    out["memory"] = float(info(port, "memory")["used_memory_dataset"])
    return out


class Meter:
    """
    Counts the store's calls to Redis and reads the nodes' counters around
    each operation.
    """

    def __init__(self, store: Any, primaries: list[int], replicas: list[int]) -> None:
        self.store = store
        self.primaries = primaries
        self.replicas = replicas
        self.calls = 0
        self.idle = {"p": 0.0, "r": 0.0}
        commands = store.commands
        original = commands.call

        def counted(*a: Any, **kw: Any) -> Any:
            self.calls += 1
            return original(*a, **kw)

        # both connection layers route every call through call()
        commands.call = counted

    async def measure_idle(self, seconds: float = 2.0) -> None:
        """
        Measure the nodes' CPU per second while nothing is asked.
        """
        before = self.read()
        await deferLater(reactor, seconds, lambda: None)
        after = self.read()
        self.idle = {g: (after[g].get("cpu", 0.0) - before[g].get("cpu", 0.0)) / seconds for g in ("p", "r")}

    def read(self) -> dict[str, dict[str, float]]:
        return {"p": _sum([snapshot(p) for p in self.primaries]), "r": _sum([snapshot(r) for r in self.replicas])}


def _sum(snaps: list[dict[str, float]]) -> dict[str, float]:
    total: Counter[str] = Counter()
    for s in snaps:
        total.update(s)
    return dict(total)


async def measure(
    name: str, meter: Meter, n: int, concurrency: int, op: Callable[[int], Awaitable[Any]], sequential: bool = False
) -> dict[str, Any]:
    calls0 = meter.calls
    before = meter.read()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    errors = 0

    async def worker(start: int) -> None:
        nonlocal errors
        for i in range(start, n, 1 if sequential else concurrency):
            try:
                await op(i)
            except Exception:
                errors += 1

    if sequential:
        await worker(0)
    else:
        await defer.gatherResults([defer.Deferred.fromCoroutine(worker(c)) for c in range(concurrency)])
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    after = meter.read()
    p = {k: after["p"][k] - before["p"][k] for k in before["p"]}
    r = {k: after["r"].get(k, 0) - before["r"].get(k, 0) for k in before["p"]}
    # what the nodes spend when nobody asks anything (cluster bus, cron,
    # replication pings) is not the operations'
    elapsed = time.monotonic() - t0
    p["cpu"] = max(0.0, p["cpu"] - meter.idle["p"] * elapsed)
    r["cpu"] = max(0.0, r.get("cpu", 0.0) - meter.idle["r"] * elapsed)
    client = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / n * 1e6
    return {
        "op": name,
        "n": n,
        "errors": errors,
        "per_s": round(n / wall),
        "calls": round((meter.calls - calls0) / n, 2),
        "cmds": round(p["cmds"] / n, 1),
        "cpu_us": round(p["cpu"] / n * 1e6, 1),
        "replica_cpu_us": round(r["cpu"] / n * 1e6, 1) if meter.replicas else 0,
        # (total_net_output_bytes counts what goes to the replicas too)
        "bytes": round((p["total_net_input_bytes"] + p["total_net_output_bytes"] - p["total_net_repl_output_bytes"]) / n),
        "repl_bytes": round(p["total_net_repl_output_bytes"] / n),
        "client_us": round(client, 1),
    }


async def run(store: Any, meter: Meter, args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.ops
    rows = []
    # connections, buffers and scripts made before anything is counted
    for i in range(200):
        k = CacheKey("warm-up", "object", (str(i),), "fp")
        await store.load(k)
        await store.put(k, entry(("warm",)), await store.begin(k))
    await meter.measure_idle()

    async def miss(i: int) -> None:
        k = key(i)
        await store.load(k)
        token = await store.begin(k)
        await store.put(k, entry((f"list:{i % 16}", f"object:{i}")), token)

    before_fill = meter.read()["p"]["memory"]
    rows.append(await measure("miss", meter, n, args.concurrency, miss))
    per_entry = (meter.read()["p"]["memory"] - before_fill) / n

    async def hit(i: int) -> None:
        store.local.discard(key(i))
        got = await store.load(key(i))
        assert got is not None

    rows.append(await measure("hit", meter, n, args.concurrency, hit))

    async def purge(i: int) -> None:
        k = key(i)
        await store.invalidate(k.tenant, k.route, k.params)

    rows.append(await measure("purge", meter, n // 2, args.concurrency, purge))

    async def tag_tenant(i: int) -> None:
        await store.purge_tag(f"tenant-{i % TENANTS}", f"list:{i % 16}")

    rows.append(await measure("tag-tenant", meter, max(20, n // 10), args.concurrency, tag_tenant))

    fan = max(10, n // 50)

    async def purge_all(i: int) -> None:
        await store.invalidate(None, "object", (str(i),))

    rows.append(await measure("purge-all", meter, fan, min(4, args.concurrency), purge_all))

    async def tag_all(i: int) -> None:
        await store.purge_tag(None, f"list:{i % 16}")

    rows.append(await measure("tag-all", meter, fan, min(4, args.concurrency), tag_all))

    async def event(i: int) -> None:
        k = key(n + i)
        await store.invalidate(k.tenant, k.route, k.params)

    rows.append(await measure("event", meter, n // 2, 1, event, sequential=True))
    rows.append({"op": "memory", "bytes_per_entry": round(per_entry)})
    return rows


async def ready(store: Any) -> None:
    deadline = time.monotonic() + 30
    while not store.is_ready():
        if time.monotonic() > deadline:
            raise RuntimeError("the store did not connect")
        await deferLater(reactor, 0.02, lambda: None)


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    cols = ["op", "n", "errors", "per_s", "calls", "cmds", "cpu_us", "replica_cpu_us", "bytes", "repl_bytes", "client_us"]
    print(" | ".join(cols))
    for r in rows:
        if r["op"] == "memory":
            print(f"memory: {r['bytes_per_entry']} bytes of Redis used_memory_dataset per entry (1 KiB body, 2 tags)")
        else:
            print(" | ".join(str(r[c]) for c in cols))


def daemon_figures(cluster_url: str | None, seconds: float, single_url: str | None = None) -> list[dict[str, Any]]:
    """
    CPU per request of the real daemon under wrk (see the module
    docstring); blocking.
    """
    sys.path.insert(0, HERE)
    import run as bench_run  # bench/run.py

    rows = []
    tmp = tempfile.mkdtemp(prefix="apicache-bench-daemon-")
    ps = bench_run.Processes(tmp)
    try:
        _, upstream_port = bench_run.start_server(ps, "upstream", 0.0)
        cases = [("memory", "", 268435456), ("cluster", cluster_url, 268435456), ("cluster", cluster_url, 1),
                 ("single", single_url, 268435456), ("single", single_url, 1)]
        for store, url, local in cases:
            if not (url or (store == "memory" and cluster_url)):
                continue
            name = f"apicache-{store}-{local}"
            config = bench_run.apicache_config(upstream_port, False)
            if store != "memory":
                config = config.replace(
                    'backend = "memory"',
                    f'backend = "redis"\nredis_mode = "{store}"\nredis_url = "{url}"\n'
                    f'key_prefix = "d{uuid.uuid4().hex[:6]}"\nlocal_max_bytes = {local}\nredis_timeout = 2.0',
                )
            path = os.path.join(tmp, f"{name}.toml")
            with open(path, "w") as f:
                f.write(config)
            port = bench_run.free_port()
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            proc = ps.start([twistd, "-n", "--pidfile=", "apicache", "--config", path,
                             "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024"], name)
            bench_run.wait_port(port, proc)
            deadline = time.monotonic() + 30
            while bench_run.get(port, "/readyz")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} is not ready")
                time.sleep(0.05)
            kinds = ["miss", "hit"] if local > 1 else ["redis hit"]
            for kind in kinds:
                if kind != "miss":
                    bench_run.warm(port, "/server/object(", ")/header", 100)
                r = bench_run.run_wrk(port, "/server/object(", ")/header", 100, seconds, 50, tmp,
                                      unique=kind == "miss", pid=proc.pid)
                rows.append({"store": store, "answer": kind, "req_s": round(r.rps), "p50_ms": r.p50_ms,
                             "p99_ms": r.p99_ms, "errors": r.errors, "cpu_us": round(r.cpu_us, 1),
                             "per_core": round(1e6 / r.cpu_us) if r.cpu_us else 0})
            ps.stop(proc)
    finally:
        for proc in ps.procs:
            ps.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nthe daemon under wrk -c50 (CPU of the apicache process per request)")
    for r in rows:
        print(f"{r['store']:8} {r['answer']:10} {r['req_s']:>7} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
              f"{r['cpu_us']} us CPU/req  = {r['per_core']}/s per core  errors {r['errors']}")
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    work = tempfile.mkdtemp(prefix="apicache-bench-redis-")
    try:
        if "cluster" in args.targets:
            os.makedirs(os.path.join(work, "c"))
            with RedisCluster(os.path.join(work, "c")) as c:
                primaries = [n.port for n in c.primaries()]
                replicas = [n.port for n in c.nodes if n.port not in primaries]
                store = ScaledRedisStore(reactor, c.url, mode="cluster", prefix=f"b{uuid.uuid4().hex[:6]}",
                                         timeout=args.timeout)
                store.start()
                await ready(store)
                rows = await run(store, Meter(store, primaries, replicas), args)
                await store.close()
                results["cluster"] = rows
                print_rows("Redis Cluster, 3 primaries + 3 replicas (per operation)", rows)
                if args.daemon:
                    results["daemon"] = await threads.deferToThread(daemon_figures, c.url, args.seconds)
        if "single" in args.targets:
            os.makedirs(os.path.join(work, "s"))
            server = RedisServer(os.path.join(work, "s")).start()
            try:
                store = RedisStore(reactor, server.url, prefix=f"b{uuid.uuid4().hex[:6]}", timeout=args.timeout)
                store.start()
                await ready(store)
                port = int(server.url.rsplit(":", 1)[1].split("/")[0])
                rows = await run(store, Meter(store, [port], []), args)
                await store.close()
                results["single"] = rows
                print_rows("one redis-server, no replica (per operation)", rows)
                if args.daemon:
                    results["daemon"] = results.get("daemon", []) + await threads.deferToThread(
                        daemon_figures, None, args.seconds, server.url
                    )
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=2.0, help="redis_timeout (generous: the machine is shared)")
    p.add_argument("--targets", default="cluster,single")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--daemon", action="store_true", help="also the daemon's CPU per request under wrk")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of each wrk run (--daemon)")
    args = p.parse_args()
    out: dict[str, Any] = {}

    def done(r: Any) -> None:
        if isinstance(r, dict):
            out.update(r)
        else:
            print(r)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main(args)).addBoth(done))
    reactor.run()
    if args.json and out:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    sys.exit(0 if out else 1)
