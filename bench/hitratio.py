"""
``make bench-hitratio``: how much the memory store answers from a given
budget (issue 14), against libCacheSim's LRU, SIEVE, S3-FIFO and W-TinyLFU
fed the same traces at the same bytes.

Traces (fixed seed): Zipf alpha 0.8, 1.0 and 1.2 over 100k objects, 1M
requests, sizes log-normal between 200 B and 20 KiB; and a multi-tenant
trace of 20 tenants with Zipf popularity each, one of which interleaves a
one-pass scan of new keys.  Each is replayed through the real
L{apicache.store.memory.MemoryStore} (a miss stores the answer) and through
libCacheSim at 1 %, 5 % and 10 % of the trace's unique bytes, every object
charged what apicache charges (answer + key + ENTRY_OVERHEAD).

Needs the ``bench`` extra (``pip install '.[bench]'``: numpy, libcachesim).
``--quick`` is a smoke run on small traces.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from apicache.cache.keys import CacheKey
from apicache.store.interface import ENTRY_OVERHEAD, CachedResponse
from apicache.store.memory import MemoryStore

SEED = 14
ROUTE = "object"
FRACTIONS = (0.01, 0.05, 0.10)
ALGORITHMS = ("LRU", "Sieve", "S3FIFO", "WTinyLFU")
_BODY = memoryview(bytes(20 * 1024))


@dataclass
class Trace:
    name: str
    tenants: list[str]  # per request
    ids: np.ndarray  # per request: object id, unique across tenants
    sizes: np.ndarray  # per object id: answer bytes
    names: list[str]  # tenant names

    def charge(self, tenant: str, obj: int) -> int:
        return int(self.sizes[obj]) + CacheKey(tenant, ROUTE, (str(obj),), "").size() + ENTRY_OVERHEAD


def object_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Log-normal answer sizes (median 2 KiB) clipped to 200 B .. 20 KiB."""
    return np.clip(rng.lognormal(np.log(2048), 1.0, n), 200, 20 * 1024).astype(np.int64)


def zipf_ids(rng: np.random.Generator, alpha: float, objects: int, requests: int) -> np.ndarray:
    p = 1.0 / np.arange(1, objects + 1) ** alpha
    p /= p.sum()
    # popularity rank is not the id order
    return rng.permutation(objects)[rng.choice(objects, size=requests, p=p)]


def single_tenant(alpha: float, objects: int, requests: int) -> Trace:
    rng = np.random.default_rng(SEED)
    ids = zipf_ids(rng, alpha, objects, requests)
    return Trace(f"zipf {alpha}", ["t"] * requests, ids, object_sizes(rng, objects), ["t"])


def multi_tenant(objects: int, requests: int, skew: float, tenants: int = 20) -> Trace:
    """
    ``tenants`` tenants with ``objects / tenants`` objects each, Zipf alpha
    1.0 within each; tenant ``i`` sends a share of the traffic proportional
    to ``1 / (i + 1) ** skew`` (0: equal traffic).  The last one also reads
    ``objects`` new keys once each (a one-pass scan, 10 % of requests with
    the defaults), spread evenly through the trace.
    """
    rng = np.random.default_rng(SEED)
    per = objects // tenants
    scan = objects
    normal = requests - scan
    weights = 1.0 / np.arange(1, tenants + 1) ** skew
    who = rng.choice(tenants, size=normal, p=weights / weights.sum())
    ids = np.empty(normal, dtype=np.int64)
    for t in range(tenants):
        mine = who == t
        ids[mine] = t * per + zipf_ids(rng, 1.0, per, int(mine.sum()))
    # the scan: new ids after every tenant's objects, at even intervals
    at = np.linspace(0, requests - 1, scan).astype(np.int64)
    order_ids = np.empty(requests, dtype=np.int64)
    order_who = np.empty(requests, dtype=np.int64)
    is_scan = np.zeros(requests, dtype=bool)
    is_scan[at] = True
    order_ids[is_scan] = tenants * per + np.arange(scan)
    order_who[is_scan] = tenants - 1
    order_ids[~is_scan] = ids
    order_who[~is_scan] = who
    names = [f"t{t:02d}" for t in range(tenants)]
    traffic = "equal traffic" if not skew else f"traffic Zipf {skew} across tenants"
    return Trace(f"20 tenants, {traffic}, t19 scans", [names[w] for w in order_who.tolist()], order_ids,
                 object_sizes(rng, tenants * per + scan), names)


@dataclass
class Result:
    hits: int
    requests: int
    hit_bytes: int
    bytes: int
    per_tenant: dict[str, tuple[int, int]]

    @property
    def object_ratio(self) -> float:
        return self.hits / self.requests

    @property
    def byte_ratio(self) -> float:
        return self.hit_bytes / self.bytes

    def worst(self) -> tuple[str, float]:
        return min(((t, h / n) for t, (h, n) in self.per_tenant.items()), key=lambda x: x[1])


def tally(trace: Trace, outcome: list[bool]) -> Result:
    hit = np.array(outcome, dtype=bool)
    sizes = trace.sizes[trace.ids]
    per: dict[str, tuple[int, int]] = {}
    if len(trace.names) > 1:
        who = np.array(trace.tenants)
        for name in trace.names:
            mine = who == name
            per[name] = (int(hit[mine].sum()), int(mine.sum()))
    else:
        per[trace.names[0]] = (int(hit.sum()), len(hit))
    return Result(int(hit.sum()), len(hit), int(sizes[hit].sum()), int(sizes.sum()), per)


def replay_store(trace: Trace, budget: int) -> Result:
    store = MemoryStore(budget, int(budget * 0.1))
    outcome = []
    append = outcome.append
    lookup, put = store.lookup, store.put_now
    sizes = trace.sizes
    inf = float("inf")
    for tenant, obj in zip(trace.tenants, trace.ids.tolist(), strict=True):
        key = CacheKey(tenant, ROUTE, (str(obj),), "")
        if lookup(key) is not None:
            append(True)
            continue
        append(False)
        put(key, CachedResponse(200, (), _BODY[: int(sizes[obj])], 0.0, inf, inf), 0)  # type: ignore[arg-type]
    return tally(trace, outcome)


def replay_libcachesim(trace: Trace, budget: int, algorithm: str, charges: np.ndarray) -> Result:
    import libcachesim

    cache = getattr(libcachesim, algorithm)(cache_size=budget)
    req = libcachesim.Request()
    outcome = []
    append = outcome.append
    get = cache.get
    for obj, charge in zip(trace.ids.tolist(), charges.tolist(), strict=True):
        req.obj_id = obj + 1
        req.obj_size = charge
        append(bool(get(req)))
    return tally(trace, outcome)


def run(trace: Trace, out: Any) -> None:
    charge_of = np.array([0] * len(trace.sizes), dtype=np.int64)
    owner: dict[int, str] = dict(zip(trace.ids.tolist(), trace.tenants, strict=True))
    for obj, tenant in owner.items():
        charge_of[obj] = trace.charge(tenant, obj)
    unique = int(charge_of[list(owner)].sum())
    charges = charge_of[trace.ids]
    multi = len(trace.names) > 1
    print(f"\n{trace.name}: {len(trace.ids):,} requests, {len(owner):,} objects, "
          f"{unique / 2**20:.0f} MiB unique (charged as apicache does)", file=out)
    head = f"{'budget':>7} {'cache':<10} {'objects':>8} {'bytes':>7}"
    print(head + (f" {'worst tenant':>14}" if multi else "") + "  seconds", file=out)
    for fraction in FRACTIONS:
        budget = int(unique * fraction)
        rows = [("apicache", replay_store)] + [(a, None) for a in ALGORITHMS]
        for name, fn in rows:
            started = time.perf_counter()
            if fn is not None:
                r = fn(trace, budget)
            else:
                r = replay_libcachesim(trace, budget, name, charges)
            took = time.perf_counter() - started
            line = f"{fraction:>6.0%} {name:<10} {r.object_ratio:>8.4f} {r.byte_ratio:>7.4f}"
            if multi:
                t, ratio = r.worst()
                line += f" {ratio:>8.4f} ({t})"
            print(line + f"  {took:6.1f}", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small traces: a smoke test")
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--objects", type=int, default=100_000)
    p.add_argument("--only", choices=["single", "multi"], help="run one kind of trace")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.objects = 60_000, 10_000
    try:
        import libcachesim  # noqa: F401
    except ImportError:
        print("bench-hitratio needs libcachesim: pip install '.[bench]'", file=sys.stderr)
        return 2
    traces: list[Any] = []
    if args.only != "multi":
        traces += [lambda a=a: single_tenant(a, args.objects, args.requests) for a in (0.8, 1.0, 1.2)]
    if args.only != "single":
        traces += [lambda s=s: multi_tenant(args.objects, args.requests, s) for s in (0.0, 1.0)]
    print(f"hit ratios (objects, bytes); seed {SEED}; ENTRY_OVERHEAD {ENTRY_OVERHEAD} B charged per object")
    for make in traces:
        run(make(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
