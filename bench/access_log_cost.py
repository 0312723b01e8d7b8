"""
The access log's cost per hit, in-process: N hits rendered through a real
``ApiSite`` (registry, memory store, the fast hit path) over a
``StringTransport``, with the access log on and off, CPU time per request,
median of interleaved rounds.  Less noisy than ``make bench`` on a shared
machine: no sockets, no wrk, process CPU time only.

    .venv/bin/python bench/access_log_cost.py --requests 20000 --rounds 7

The log lines go to ``/dev/null``, written the way the daemon writes them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

# the checkout's apicache, not the installed one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner

from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite
from apicache.ops.logs import json_log_observer
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamResponse

ROUTES = [{"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 3600}]
REQUEST = (
    b"GET /server/object(42)/header?page=2&token=abc HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\n"
    b"authorization: Bearer bench-token\r\n\r\n"
)


def answer(path: str, headers: Any) -> UpstreamResponse:
    return UpstreamResponse(200, [(b"content-type", b"application/json")], b'{"id": 42, "name": "x"}' * 20)


def make_site(access_log: bool, devnull: int, clock: Clock, fast_path: bool = True) -> ApiSite:
    config = parse_config(
        {"server": {"api_keys": ["k1"]}, "upstream": {"base_url": "http://up/api"}, "routes": ROUTES}, "bench.toml", {}
    )
    registry = CacheRegistry(MemoryStore(1 << 24), FakeUpstream(auto=answer), clock, config.routes, config.upstream.keyed_headers)
    api = CacheAPI(config, registry, Router(config.routes), clock, node="n1")
    log: Any = access_log
    if access_log:
        try:
            from apicache.ops.logs import AccessLog
        except ImportError:  # before the buffered access log: twisted.logger lines
            pass
        else:
            log = AccessLog(clock, fd=devnull)
            log.startService()
    if not fast_path:
        # twisted.web's path for every request (issue 23's "before")
        return ApiSite(api.resource(), clock, None, log, fast_path=False)
    return ApiSite(api.resource(), clock, None, log)


def round_(site: ApiSite, clock: Clock, n: int) -> float:
    """Return CPU seconds per request for ``n`` hits on keep-alive connections."""
    transport = StringTransport()
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    started = time.process_time()
    for i in range(n):
        protocol.dataReceived(REQUEST)
        if i % 100 == 99:
            transport.clear()
            clock.advance(0.01)  # the access log's flush timer runs on this clock
    spent = time.process_time() - started
    protocol.connectionLost(None)  # type: ignore[arg-type]
    return spent / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--slow-path", action="store_true", help="every hit through twisted.web's Request, not the fast path")
    args = p.parse_args()
    devnull = os.open(os.devnull, os.O_WRONLY)
    # non-access lines (and, before the buffered log, access lines) as the daemon writes them
    globalLogBeginner.beginLoggingTo([json_log_observer("info", os.fdopen(os.dup(devnull), "w"))], redirectStandardIO=False)
    clock = Clock()
    clock.advance(1_000_000)
    fast = not args.slow_path
    sites = {"off": make_site(False, devnull, clock, fast), "on": make_site(True, devnull, clock, fast)}
    for site in sites.values():
        round_(site, clock, 200)  # the first request is the miss
    per: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name, site in sites.items():
            per[name].append(round_(site, clock, args.requests))
    off, on = statistics.median(per["off"]), statistics.median(per["on"])
    print(f"access log off: {off * 1e6:6.1f} µs CPU per hit (median of {args.rounds} rounds of {args.requests})")
    print(f"access log on:  {on * 1e6:6.1f} µs CPU per hit")
    print(f"the access log costs {on / off - 1:.0%} more CPU per hit: {1 - off / on:.0%} of the hit throughput")


if __name__ == "__main__":
    main()
