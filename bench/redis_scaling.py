"""
Two real daemons sharing one private Redis: how many upstream calls 100
concurrent misses for one key cost (split between the instances), and how
long a DELETE on one instance takes to reach the other's in-process tier.

    .venv/bin/python bench/redis_scaling.py [--rounds 5] [--latency 0.2]

Needs ``redis-server`` on the PATH (or ``REDIS_URL``); uses nothing else of
the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, RedisServer

KEY = "bench-key"


def config(upstream: str, redis_url: str, prefix: str, lock_ttl: float) -> str:
    return f"""
[server]
api_keys = ["{KEY}"]
access_log = false
log_level = "warn"

[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
redis_lock_ttl = {lock_ttl}

[upstream]
base_url = "{upstream}/api"

[[routes]]
type = "object"
path = "/server/object(<id>)/header"
upstream = "/object({{id}})/header"
ttl = 300
"""


def wait_ready(d: Daemon) -> None:
    deadline = time.monotonic() + 10
    while d.request("GET", "/readyz").status != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("daemon not ready")
        time.sleep(0.05)


def coalescing(a: Daemon, b: Daemon, upstream: UpstreamStub, rounds: int) -> list[int]:
    """Return the upstream calls of each round of 100 concurrent misses."""
    calls = []
    with ThreadPoolExecutor(100) as pool:
        for r in range(rounds):
            path = f"/server/object(c{r}-{uuid.uuid4().hex[:6]})/header"
            before = upstream.calls()
            replies = list(pool.map(lambda i, path=path: (a if i % 2 else b).get(path), range(100)))
            assert all(x.status == 200 for x in replies), {x.status for x in replies}
            calls.append(upstream.calls() - before)
    return calls


def invalidation_delay(a: Daemon, b: Daemon, rounds: int) -> list[float]:
    """
    Return, per round, the seconds from a DELETE answered by ``a`` until
    ``b`` stops answering from its in-process tier.
    """
    delays = []
    for r in range(rounds):
        path = f"/server/object(i{r})/header"
        a.get(path)
        assert b.get(path).cache == "HIT"
        a.delete(path, tenant="t1")
        started = time.monotonic()
        while True:
            # the request that misses also waits for the upstream: count
            # only until it was sent (an upper bound of the delay)
            sent = time.monotonic()
            if b.get(path).cache != "HIT":
                break
            if sent - started > 2:
                raise RuntimeError("invalidation never arrived")
        delays.append(sent - started)
    return delays


def store_delay(url: str, rounds: int) -> list[float]:
    """
    Return, per round, the seconds from one RedisStore's invalidate() call
    until another's in-process tier (other connections, same Redis) drops
    the entry: the pub/sub path without HTTP.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    from apicache.cache.keys import CacheKey
    from apicache.store.interface import CachedResponse
    from apicache.store.redis import RedisStore

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    a, b = RedisStore(reactor, url, prefix=prefix), RedisStore(reactor, url, prefix=prefix)
    delays: list[float] = []

    async def run() -> None:
        a.start()
        b.start()
        while not (a.is_ready() and b.is_ready()):
            await deferLater(reactor, 0.01, lambda: None)
        for r in range(rounds):
            k = CacheKey("t1", "object", (str(r),), "v")
            now = time.time()
            token = await a.begin(k)
            await a.put(k, CachedResponse(200, (), b"x" * 200, now, now + 300, now + 300), token)
            await b.load(k)
            started = time.perf_counter()
            await a.invalidate("t1", "object", (str(r),))
            # b applies the message in the reactor turn that reads it: look
            # once a turn (the store offers no hook, and needs none)
            while b.lookup(k) is not None:
                if time.perf_counter() - started > 1:
                    raise RuntimeError("the invalidation did not arrive within 1 s")
                await deferLater(reactor, 0, lambda: None)
            delays.append(time.perf_counter() - started)
        await a.close()
        await b.close()

    d = Deferred.fromCoroutine(run())
    d.addErrback(lambda f: f.printTraceback()).addBoth(lambda _: reactor.stop())
    reactor.run()
    return delays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency", type=float, default=0.2, help="upstream latency, seconds")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="apicache-bench-")
    redis = None
    url = os.environ.get("REDIS_URL")
    if not url:
        redis = RedisServer(tmp).start()
        url = redis.url
    delays = sorted(store_delay(url, 500))
    print(
        "cross-instance invalidation, store to store through Redis pub/sub, 500 rounds: "
        f"median {statistics.median(delays) * 1000:.2f} ms, p99 {delays[int(len(delays) * 0.99) - 1] * 1000:.2f} ms, "
        f"max {delays[-1] * 1000:.2f} ms"
    )
    upstream = UpstreamStub(latency=args.latency).start()
    daemons: list[Daemon] = []
    try:
        for lock_ttl in (1.0, 0.0):
            path = os.path.join(tmp, f"apicache-{lock_ttl}.toml")
            with open(path, "w") as f:
                f.write(config(upstream.url, url, f"bench-{uuid.uuid4().hex[:8]}", lock_ttl))
            a, b = Daemon(path, api_key=KEY).start(), Daemon(path, api_key=KEY).start()
            daemons += [a, b]
            wait_ready(a)
            wait_ready(b)
            calls = coalescing(a, b, upstream, args.rounds)
            label = f"redis_lock_ttl = {lock_ttl:g}"
            print(f"{label}: upstream calls for 100 concurrent misses (50 per instance), per round: {calls}")
            if lock_ttl:
                delays = sorted(invalidation_delay(a, b, 50))
                first = sum(1 for d in delays if d < 1e-4)
                print(
                    "cross-instance invalidation (DELETE answered by A -> B misses), 50 rounds: "
                    f"the first GET on B after the DELETE was already a miss in {first}/50; "
                    f"median {statistics.median(delays) * 1000:.2f} ms, max {delays[-1] * 1000:.2f} ms"
                )
            a.stop()
            b.stop()
    finally:
        for d in daemons:
            d.kill()
        upstream.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
