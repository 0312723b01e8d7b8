"""
What ``[auth]`` costs a hit, in-process (issue 21: hits with ``[auth]`` on,
one token, ≥ 0.9× the throughput with it off): N hits rendered through a
real ``ApiSite`` (registry, memory store, the fast hit path) over a
``StringTransport``, without ``[auth]`` and with it (a key set file, one
RS256 token, ``tenant_claim = "zid"``), CPU time per request, median of
interleaved rounds.  Less noisy than ``make bench``'s wrk row on a shared
machine: no sockets, no wrk, process CPU time only.

    .venv/bin/python bench/auth_cost.py --requests 20000 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

# the checkout's apicache, not the installed one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from apicache.auth.jwks import JWKSSource
from apicache.auth.tokens import TokenVerifier
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import parse_config
from apicache.harness.signing import SigningKey
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite
from apicache.store.memory import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import UpstreamResponse

ROUTES = [{"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 3600}]
HEAD = b"GET /server/object(42)/header HTTP/1.1\r\nHost: x\r\napi-key: k1\r\norg_id: t1\r\nauthorization: Bearer %s\r\n\r\n"


def answer(path: str, headers: Any) -> UpstreamResponse:
    return UpstreamResponse(200, [(b"content-type", b"application/json")], b'{"id": 42, "name": "x"}' * 20)


def make_site(clock: Clock, jwks: str | None, issuer: str = "") -> ApiSite:
    data: dict[str, Any] = {"server": {"api_keys": ["k1"]}, "upstream": {"base_url": "http://up/api"}, "routes": ROUTES}
    verifier = None
    if jwks is not None:
        data["server"]["tenant_claim"] = "zid"
        data["auth"] = {"jwks": jwks, "issuers": [issuer], "audiences": ["apicache"]}
    config = parse_config(data, "bench.toml", {})
    if jwks is not None:
        source = JWKSSource(jwks, clock)
        source.startService()
        verifier = TokenVerifier(source, clock, issuers=config.auth.issuers, audiences=config.auth.audiences)
    registry = CacheRegistry(MemoryStore(1 << 24), FakeUpstream(auto=answer), clock, config.routes, config.upstream.keyed_headers)
    api = CacheAPI(config, registry, Router(config.routes), clock, node="n1", verifier=verifier)
    return ApiSite(api.resource(), clock, None, False, keys=api.keys, verifier=verifier)


def round_(site: ApiSite, clock: Clock, request: bytes, n: int) -> float:
    """Return CPU seconds per request for ``n`` hits on a keep-alive connection."""
    transport = StringTransport()
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    started = time.process_time()
    for i in range(n):
        protocol.dataReceived(request)
        if i % 100 == 99:
            transport.clear()
    spent = time.process_time() - started
    transport.clear()
    protocol.dataReceived(request)
    if b"x-cache: hit" not in transport.value().lower():
        raise RuntimeError(f"not a hit: {transport.value()[:300]!r}")
    protocol.connectionLost(None)  # type: ignore[arg-type]
    return spent / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    clock = Clock()
    clock.advance(time.time())
    signer = SigningKey(issuer="https://idp.example/realms/bench")
    folder = tempfile.mkdtemp(prefix="apicache-auth-cost-")
    jwks = os.path.join(folder, "jwks.json")
    signer.write_jwks(jwks)
    token = signer.token(tenant="t1", lifetime=24 * 3600).encode()
    # the same requests either way: callers send their real token with or
    # without [auth] (it is forwarded upstream on a miss)
    sites = {"off": (make_site(clock, None), HEAD % token), "on": (make_site(clock, jwks, signer.issuer), HEAD % token)}
    for site, request in sites.values():
        round_(site, clock, request, 200)  # the first request is the miss
    per: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name, (site, request) in sites.items():
            per[name].append(round_(site, clock, request, args.requests))
    off, on = statistics.median(per["off"]), statistics.median(per["on"])
    print(f"[auth] off: {off * 1e6:6.1f} µs CPU per hit (median of {args.rounds} rounds of {args.requests})")
    print(f"[auth] on:  {on * 1e6:6.1f} µs CPU per hit (one RS256 token, tenant_claim; verified once, then remembered)")
    print(f"hit throughput with [auth] on: {off / on:.2f}× with it off (target ≥ 0.9)")


if __name__ == "__main__":
    main()
