"""
Tag purges (issue 12), in the memory store and in Redis:

- the time to purge one tag carried by 1k, 10k and 100k entries: until the
  purge takes effect (every later read misses) and until every entry is
  deleted (memory freed in batches; for Redis, the longest any one script
  held it, from SLOWLOG);
- the bytes per (entry, tag) pair of the in-process index (tracemalloc);
- the cross-instance purge latency, p50 and p99: two RedisStores on their
  own connections to one private redis-server, from the purge on A until
  B's in-process tier no longer holds the entry.

    .venv/bin/python bench/tags.py [--sizes 1000,10000,100000] [--rounds 200]

Goals: a 10k-entry purge in <= 50 ms in memory and <= 500 ms in Redis;
cross-instance p50 <= 5 ms; <= 100 B per (entry, tag) in memory.
Needs ``redis-server`` on the PATH (or ``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, react

from apicache.cache.keys import CacheKey
from apicache.harness.launchers import RedisServer
from apicache.store.interface import CachedResponse
from apicache.store.memory import MemoryStore
from apicache.store.redis import RedisStore

BODY = b"x" * 1024


def entry(tags: tuple[str, ...], now: float, ttl: float = 600.0) -> CachedResponse:
    return CachedResponse(200, ((b"content-type", b"application/json"),), BODY, now, now + ttl, now + ttl, tags=tags)


def key(i: int, tenant: str = "acme") -> CacheKey:
    return CacheKey(tenant, "object", (str(i),), "v")


# -- memory ------------------------------------------------------------------


def memory_purge(n: int) -> tuple[float, float]:
    """
    Return (ms until the purge takes effect, ms until every entry is freed)
    for one tag carried by ``n`` entries, the batches run back to back (in
    the daemon each runs in a reactor turn of its own).
    """
    clock = Clock()
    store = MemoryStore(1 << 40, clock=clock)
    for i in range(n):
        store.put_now(key(i), entry(("list:1", f"object:{i}"), 0.0), 0)
    gc.collect()
    started = time.perf_counter()
    store.purge_tag("acme", "list:1")
    effective = time.perf_counter() - started
    while clock.calls:
        clock.advance(0)
    freed = time.perf_counter() - started
    assert store.stats()["entries"] == 0
    return effective * 1000, freed * 1000


def bytes_per_pair(n: int = 100_000) -> dict[str, float]:
    """
    Return the resident bytes per (entry, tag) pair of the index: for a tag
    every entry shares, and for a tag of each entry's own (``object:{id}``,
    the tag string itself included), against the same entries untagged.
    """

    def measure(tags_of: Any) -> int:
        gc.collect()
        tracemalloc.start()
        store = MemoryStore(1 << 40)
        entries = [(key(i), entry(tags_of(i), 0.0)) for i in range(n)]
        before = tracemalloc.get_traced_memory()[0]
        for k, e in entries:
            store.put_now(k, e, 0)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del store, entries
        return used

    plain = measure(lambda i: ())
    shared = measure(lambda i: ("list:1",))
    own = measure(lambda i: (f"object:{i}",))
    both = measure(lambda i: ("list:1", f"object:{i}"))
    return {
        "shared tag": (shared - plain) / n,
        "own tag (string included)": (own - plain) / n,
        "two tags, per pair": (both - plain) / (2 * n),
    }


# -- redis ---------------------------------------------------------------------


async def fill(store: RedisStore, n: int, tag: str, now: float) -> None:
    window = 500
    for start in range(0, n, window):
        tokens = []
        for i in range(start, min(n, start + window)):
            tokens.append((i, store.begin(key(i))))
        puts = []
        for i, t in tokens:
            puts.append(store.put(key(i), entry((tag,), now), await t))
        for p in puts:
            assert await p


async def redis_purge(reactor: Any, url: str, n: int) -> tuple[float, tuple[float, float, int], float]:
    """
    Return (ms for the whole purge, (the longest and the median ms of its
    scripts that held Redis 0.5 ms or more, how many did) from SLOWLOG, ms
    of a read after it) for one tag carried by ``n`` entries in Redis.
    """
    store = RedisStore(reactor, url, prefix=f"bench-{uuid.uuid4().hex[:8]}", timeout=30.0, local_max_bytes=1 << 20)
    store.start()
    while not store.is_ready():
        await sleep(reactor, 0.01)
    await fill(store, n, "list:1", time.time())
    # Redis's own account of how long each command held it
    # (Redis 7 also logs the commands a script calls: only slow ones, then)
    await store.commands.execute("CONFIG", "SET", "slowlog-log-slower-than", "500")
    await store.commands.execute("CONFIG", "SET", "slowlog-max-len", "5000")
    await store.commands.execute("SLOWLOG", "RESET")
    started = time.perf_counter()
    d = store.purge_tag("acme", "list:1")
    # a read from another connection misses as soon as the generation is bumped
    probe = RedisStore(reactor, url, prefix=store.prefix, timeout=5.0)
    probe.start()
    while not probe.is_ready():
        await sleep(reactor, 0.001)
    n_dropped = await d
    total = time.perf_counter() - started
    assert n_dropped == n, (n_dropped, n)
    log = await store.commands.execute("SLOWLOG", "GET", "5000")
    evals = sorted(int(e[2]) for e in log if bytes(e[3][0]).upper().startswith(b"EVAL"))
    held = (evals[-1] / 1000, evals[len(evals) // 2] / 1000, len(evals)) if evals else (0.5, 0.5, 0)
    await store.commands.execute("CONFIG", "SET", "slowlog-log-slower-than", "10000")
    t0 = time.perf_counter()
    assert await probe.load(key(n - 1)) is None
    read = time.perf_counter() - t0
    await probe.close()
    await store.close()
    return total * 1000, held, read * 1000


async def cross_instance(reactor: Any, url: str, rounds: int) -> list[float]:
    """
    Return the seconds from each purge on A until B's tier dropped the entry.
    """
    prefix = f"bench-x-{uuid.uuid4().hex[:8]}"
    a = RedisStore(reactor, url, prefix=prefix, timeout=5.0)
    b = RedisStore(reactor, url, prefix=prefix, timeout=5.0)
    a.start()
    b.start()
    while not (a.is_ready() and b.is_ready()):
        await sleep(reactor, 0.01)
    latencies = []
    for r in range(rounds):
        tag = f"object:{r}"
        token = await a.begin(key(0))
        assert await a.put(key(0), entry((tag,), time.time()), token)
        assert await b.load(key(0)) is not None
        started = time.perf_counter()
        a.purge_tag(None, tag)
        # polled every reactor turn: B drops it when the pub/sub message lands
        while b.lookup(key(0)) is not None:
            await sleep(reactor, 0)
        latencies.append(time.perf_counter() - started)
        await sleep(reactor, 0.002)
    await a.close()
    await b.close()
    return latencies


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def main(reactor: Any, args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    print("memory store: purge of one tag")
    for n in sizes:
        effective, freed = memory_purge(n)
        print(f"  {n:>7} entries: takes effect in {effective:7.3f} ms; all freed after {freed:8.1f} ms of batches")
    print("memory store: index bytes per (entry, tag) pair (100k entries, 1 KiB bodies)")
    for what, b in bytes_per_pair().items():
        print(f"  {what:<28} {b:6.1f} B")

    directory = None
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        if shutil.which("redis-server") is None:
            print("redis: skipped (no redis-server and no REDIS_URL)")
            return
        directory = tempfile.mkdtemp(prefix="apicache-bench-tags-")
        server = RedisServer(directory).start()
        url = server.url
    try:
        print("redis store: purge of one tag")
        for n in sizes:
            total, (most, median, calls), read = await redis_purge(reactor, url, n)
            print(
                f"  {n:>7} entries: {total:8.1f} ms in all; {calls} of its scripts held Redis >= 0.5 ms:"
                f" {median:.2f} ms median, {most:.2f} ms most; a read after it misses ({read:.2f} ms)"
            )
        lat = await cross_instance(reactor, url, args.rounds)
        print(f"cross-instance purge (A purges until B's tier drops it), {args.rounds} rounds: "
              f"p50 {pct(lat, 0.5) * 1000:.2f} ms, p99 {pct(lat, 0.99) * 1000:.2f} ms")
    finally:
        if server is not None:
            server.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=200)
    options = parser.parse_args()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
