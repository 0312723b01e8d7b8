"""
What per-tenant upstream pools cost on misses: new connections (handshakes)
and time per miss, against a loopback upstream (``bench/servers.py upstream``
in a process of its own, no added latency), for three pools:

- ``twisted``: Twisted's HTTPConnectionPool, one key per host (apicache
  before issue 10): tenants share connections;
- ``shared``: apicache's pool with every fetch under one tenant name, that
  tenant allowed every idle connection (the same code as below, so the
  difference is the keying alone);
- ``per-tenant``: apicache's pool, as the daemon runs it.

Two workloads, each ``--rounds`` times after one warm-up round:

- ``burst``: ``--misses`` steps; in each, every tenant fetches one miss at
  once (``--tenants`` concurrent fetches);
- ``serial``: ``--misses`` fetches per tenant, one at a time, tenants taken
  round-robin (the worst case for per-tenant pools once there are more
  tenants than idle connections).

    .venv/bin/python bench/pools.py [--tenants 8,64,200] [--misses 10] [--rounds 5]

Prints, per pool, workload and tenant count: connections opened per round
(median) and time per miss in microseconds (median over rounds).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody

from apicache.upstream.client import UpstreamClient

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_CONNECTIONS = 64  # upstream.max_connections's default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "servers.py"), "upstream", "--port", str(port), "--latency", "0"],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None
    p.stdout.readline()  # "upstream ready on PORT"
    return p, port


class TwistedPool:
    """Twisted's own pool behind the same fetch(path, tenant) call."""

    def __init__(self, base: str) -> None:
        self.opened = 0
        bench = self

        class Counting(_HTTP11ClientFactory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Any:
                bench.opened += 1
                return super().buildProtocol(addr)

        self.pool = HTTPConnectionPool(reactor)
        self.pool._factory = Counting
        self.pool.maxPersistentPerHost = MAX_CONNECTIONS
        self.agent = Agent(reactor, pool=self.pool)
        self.base = base.encode()

    async def fetch(self, path: str, tenant: str) -> None:
        response = await self.agent.request(b"GET", self.base + path.encode())
        await readBody(response)

    def close(self) -> defer.Deferred[None]:
        return self.pool.closeCachedConnections()


class ApicachePool:
    """apicache's UpstreamClient; ``shared``: every fetch as one tenant."""

    def __init__(self, base: str, shared: bool) -> None:
        self.client = UpstreamClient(
            reactor, base, timeout=10.0, max_body_bytes=1 << 20, max_connections=MAX_CONNECTIONS, max_in_flight=100000
        )
        self.shared = shared
        if shared:
            # one key for everyone, allowed the whole pool like Twisted's
            self.client.pool.max_idle_per_tenant = MAX_CONNECTIONS

    @property
    def opened(self) -> int:
        return self.client.pool.opened

    async def fetch(self, path: str, tenant: str) -> None:
        await self.client.fetch(path, [], tenant="shared" if self.shared else tenant)

    def close(self) -> defer.Deferred[None]:
        return self.client.close()


async def burst(pool: Any, tenants: int, misses: int, tag: str) -> None:
    for m in range(misses):
        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(pool.fetch(f"/{tag}/{t}/{m}", f"t{t}")) for t in range(tenants)]
        )


async def serial(pool: Any, tenants: int, misses: int, tag: str) -> None:
    for m in range(misses):
        for t in range(tenants):
            await pool.fetch(f"/{tag}/{t}/{m}", f"t{t}")


async def measure(
    make: Callable[[], Any], workload: Any, tenants: int, misses: int, rounds: int
) -> tuple[float, float]:
    """Return (median connections opened per round, median µs per miss)."""
    pool = make()
    opened: list[int] = []
    per_miss: list[float] = []
    try:
        await workload(pool, tenants, misses, "warm")
        for r in range(rounds):
            before = pool.opened
            started = time.perf_counter()
            await workload(pool, tenants, misses, f"r{r}")
            per_miss.append((time.perf_counter() - started) / (tenants * misses) * 1e6)
            opened.append(pool.opened - before)
    finally:
        await pool.close()
    return statistics.median(opened), statistics.median(per_miss)


async def main(args: argparse.Namespace) -> None:
    proc, port = start_upstream()
    base = f"http://127.0.0.1:{port}"
    pools: dict[str, Callable[[], Any]] = {
        "twisted": lambda: TwistedPool(base),
        "shared": lambda: ApicachePool(base, shared=True),
        "per-tenant": lambda: ApicachePool(base, shared=False),
    }
    try:
        print(f"{'workload':8} {'tenants':>7} {'pool':>10} {'opened/round':>13} {'µs/miss':>9}  (misses/round)")
        for name, workload in (("burst", burst), ("serial", serial)):
            for tenants in args.tenants:
                for pool_name, make in pools.items():
                    opened, us = await measure(make, workload, tenants, args.misses, args.rounds)
                    print(
                        f"{name:8} {tenants:>7} {pool_name:>10} {opened:>13g} {us:>9.0f}  ({tenants * args.misses})",
                        flush=True,
                    )
    finally:
        proc.terminate()
        proc.wait()


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--tenants", type=lambda s: [int(x) for x in s.split(",")], default=[8, 64, 200])
    p.add_argument("--misses", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    # Twisted's readBody warns about its own transport proxy
    warnings.filterwarnings("ignore", "Using readBody with a transport")
    result: list[BaseException] = []

    def done(r: Any) -> None:
        if hasattr(r, "value"):
            result.append(r.value)
            r.printTraceback()
        reactor.stop()

    defer.Deferred.fromCoroutine(main(args)).addBoth(done)
    reactor.run()
    if result:
        sys.exit(1)


if __name__ == "__main__":
    run()
