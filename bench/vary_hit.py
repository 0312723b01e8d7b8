"""
A hit's cost in-process, with and without ``Vary`` (issue 20: variants must
not slow a hit whose key has no ``Vary``): N hits rendered through a real
``ApiSite`` (registry, memory store, the fast hit path) over a
``StringTransport``, CPU time per request, median of interleaved rounds.

    .venv/bin/python bench/vary_hit.py --requests 20000 --rounds 7

``plain`` is an answer without ``Vary`` (one entry under its key, no
selector computed), ``vary`` one with ``Vary: accept-language`` (a variant
picked by its selector), ``gzip`` a gzip answer with
``Vary: accept-encoding`` asked for with ``Accept-Encoding: gzip``.
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

from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamResponse

ROUTES = [{"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 3600}]
HEAD = b"Host: x\r\napi-key: k1\r\norg_id: t1\r\nauthorization: Bearer bench-token\r\naccept-language: de\r\n"
REQUESTS = {
    "plain": b"GET /server/object(1)/header HTTP/1.1\r\n" + HEAD + b"\r\n",
    "vary": b"GET /server/object(2)/header HTTP/1.1\r\n" + HEAD + b"\r\n",
    "gzip": b"GET /server/object(3)/header HTTP/1.1\r\n" + HEAD + b"accept-encoding: gzip\r\n\r\n",
}
BODY = b'{"id": 42, "name": "x"}' * 20


def answer(path: str, headers: Any) -> UpstreamResponse:
    extra: list[tuple[bytes, bytes]] = []
    if path.startswith("/object(2)"):
        extra = [(b"vary", b"accept-language")]
    elif path.startswith("/object(3)"):
        extra = [(b"vary", b"accept-encoding"), (b"content-encoding", b"gzip")]
    return UpstreamResponse(200, [(b"content-type", b"application/json"), *extra], BODY)


def make_site(clock: Clock) -> ApiSite:
    config = parse_config(
        {"server": {"api_keys": ["k1"], "access_log": False}, "upstream": {"base_url": "http://up/api"}, "routes": ROUTES},
        "bench.toml",
        {},
    )
    registry = CacheRegistry(MemoryStore(1 << 24), FakeUpstream(auto=answer), clock, config.routes, config.upstream.keyed_headers)
    api = CacheAPI(config, registry, Router(config.routes), clock, node="n1")
    return ApiSite(api.resource(), clock, None, False)


def round_(site: ApiSite, clock: Clock, request: bytes, n: int) -> tuple[float, bytes]:
    """Return CPU seconds per request for ``n`` requests on one keep-alive connection, and the last answer."""
    transport = StringTransport()
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    started = time.process_time()
    for i in range(n):
        if i % 100 == 99:
            transport.clear()
        protocol.dataReceived(request)
    spent = time.process_time() - started
    last = transport.value()
    protocol.connectionLost(None)  # type: ignore[arg-type]
    return spent / n, last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--kinds", default="plain,vary,gzip")
    args = p.parse_args()
    clock = Clock()
    clock.advance(1_000_000)
    site = make_site(clock)
    kinds = args.kinds.split(",")
    for kind in kinds:
        round_(site, clock, REQUESTS[kind], 2)  # the first request is the miss
        _, last = round_(site, clock, REQUESTS[kind], 1)
        if b"x-cache: HIT" not in last.lower().replace(b"x-cache: hit", b"x-cache: HIT"):
            print(f"{kind}: not a hit: {last[:300]!r}")
    per: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            per[kind].append(round_(site, clock, REQUESTS[kind], args.requests)[0])
    for kind in kinds:
        print(f"{kind:6s} {statistics.median(per[kind]) * 1e6:6.2f} µs CPU per hit (median of {args.rounds} rounds of {args.requests})")


if __name__ == "__main__":
    main()
