"""
Freshness benchmark (issue 13): how stale are the answers apicache serves,
measured from outside, in the spirit of Meta's Polaris.

A versioned upstream on loopback holds N objects; a writer changes them at a
fixed rate, each change committed upstream first and then published as an
event on a real Kafka-protocol broker (Tansu).  Readers read through the real
daemon (``twistd apicache``) at a fixed rate.  Every answer names the version
it holds; compared with the upstream's history it gives the answer's
staleness: how long before the answer arrived its version had already been
superseded (0 when it was current).

Scenarios, each with ``max_staleness`` set on the route and without it:

- ``steady``: nothing goes wrong;
- ``paused``: the broker is frozen (SIGSTOP) for ``--pause`` seconds, then
  resumed (SIGCONT; Tansu's memory storage would lose the topic on a real
  restart);
- ``kill9``: ``group`` mode with Redis and two instances; readers read
  through the second while the first is killed (``kill -9``) and started
  again ``--pause`` seconds later.

The report gives the share of reads consistent within 100 ms, 1 s and 10 s
as nines (R reads show at most log10(R) nines), p50/p99/max staleness and
upstream calls per read.

    make bench-freshness    # or: .venv/bin/python bench/freshness.py --help
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import tomli_w

from apicache.harness.launchers import Daemon, KafkaBroker, RedisServer

API_KEY = "bench-key"
TENANT = "bench"
KAFKA_EXTRA = {
    "session.timeout.ms": 6000,
    "max.poll.interval.ms": 7000,
    "heartbeat.interval.ms": 1000,
    "fetch.wait.max.ms": 20,
}


class VersionedUpstream:
    """
    N objects, each with a version and the times each version was
    superseded; answers ``GET /api/object(I)/header`` with the current one.
    """

    def __init__(self, objects: int) -> None:
        self.lock = threading.Lock()
        self.versions = [0] * objects
        #: object → superseded[v] = when version v stopped being current
        self.superseded: list[list[float]] = [[] for _ in range(objects)]
        self.calls = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    i = int(self.path.split("(", 1)[1].split(")", 1)[0])
                    with upstream.lock:
                        upstream.calls += 1
                        v = upstream.versions[i]
                    body = json.dumps({"id": i, "version": v}).encode()
                    status = 200
                except (IndexError, ValueError):
                    body, status = b"{}", 404
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def change(self, i: int) -> None:
        """Commit a new version of object ``i`` (before its event is sent)."""
        with self.lock:
            self.superseded[i].append(time.time())
            self.versions[i] += 1

    def staleness(self, i: int, version: int, answered: float) -> float:
        """How long before ``answered`` this version had been superseded."""
        with self.lock:
            times = self.superseded[i]
            if version >= len(times):
                return 0.0
            return max(0.0, answered - times[version])

    def stop(self) -> None:
        self.server.shutdown()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def nines(share: float, reads: int) -> str:
    if share >= 1.0:
        return f">={math.log10(reads):.1f}"
    return f"{-math.log10(1 - share):.1f}"


def run(args: argparse.Namespace, scenario: str, max_staleness: float) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="apicache-bench-freshness-")
    broker = KafkaBroker().start()
    upstream = VersionedUpstream(args.objects)
    topic = "freshness"
    broker.create_topic(topic, partitions=2)
    route: dict[str, Any] = {
        "type": "object",
        "path": "/server/object(<id>)/header",
        "upstream": "/object({id})/header",
        "ttl": args.ttl,
    }
    if max_staleness:
        route["max_staleness"] = max_staleness
    config: dict[str, Any] = {
        "server": {"api_keys": [API_KEY], "access_log": False},
        "upstream": {"base_url": upstream.url + "/api"},
        "routes": [route],
        "kafka": {"bootstrap_servers": broker.bootstrap, "topics": [topic], "extra": KAFKA_EXTRA},
        "events": [{"types": ["object.update"], "route": "object", "id_field": "objectid"}],
    }
    redis: RedisServer | None = None
    if scenario == "kill9":
        redis = RedisServer(work).start()
        config["store"] = {"backend": "redis", "redis_url": redis.url, "key_prefix": "bench"}
        config["kafka"].update(mode="group", group_id="bench")
    path = os.path.join(work, "apicache.toml")
    with open(path, "w") as f:
        f.write(tomli_w.dumps(config))
    daemons = [Daemon(path, api_key=API_KEY) for _ in range(2 if scenario == "kill9" else 1)]
    # the readers' daemon: the survivor in kill9
    daemon = daemons[-1]
    stop = threading.Event()
    results: list[float] = []
    results_lock = threading.Lock()
    errors = [0]
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            deadline = time.monotonic() + 60
            while d.request("GET", "/readyz").status != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon's listener did not get ready")
                time.sleep(0.1)
        if scenario == "kill9":
            # both hold partitions before the fault
            deadline = time.monotonic() + 60
            while not all(d.request("GET", "/").json()["events"]["partitions"] for d in daemons):
                if time.monotonic() > deadline:
                    raise RuntimeError("the partitions were not shared out")
                time.sleep(0.2)
        producer = broker.producer()

        def writer(producer: Any) -> None:
            rng = random.Random(1)
            interval = 1.0 / args.write_rate
            next_at = time.monotonic()
            while not stop.is_set():
                i = rng.randrange(args.objects)
                upstream.change(i)
                producer.produce(topic, json.dumps({"type": "object.update", "objectid": i}).encode())
                producer.poll(0)
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))

        def reader(seed: int, rate: float) -> None:
            rng = random.Random(seed)
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            interval = 1.0 / rate
            next_at = time.monotonic()
            while not stop.is_set():
                i = rng.randrange(args.objects)
                try:
                    conn.request("GET", f"/server/object({i})/header", headers={"api-key": API_KEY, "org_id": TENANT})
                    r = conn.getresponse()
                    body = r.read()
                    answered = time.time()
                    version = json.loads(body)["version"] if r.status == 200 else None
                except (OSError, http.client.HTTPException, ValueError, KeyError):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
                    version = None
                if version is None:
                    errors[0] += 1
                else:
                    s = upstream.staleness(i, version, answered)
                    with results_lock:
                        results.append(s)
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))
            conn.close()

        # warm the cache first: every object read once
        for i in range(args.objects):
            daemon.get(f"/server/object({i})/header", TENANT)
        calls_before = upstream.calls
        threads = [threading.Thread(target=writer, args=(producer,), daemon=True)]
        threads += [threading.Thread(target=reader, args=(n, args.read_rate / args.readers), daemon=True) for n in range(args.readers)]
        for t in threads:
            t.start()
        if scenario == "paused":
            time.sleep(args.before)
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)
            time.sleep(args.pause)
            os.kill(broker.proc.pid, signal.SIGCONT)
            time.sleep(max(0.0, args.duration - args.before - args.pause))
        elif scenario == "kill9":
            time.sleep(args.before)
            victim = daemons[0]
            assert victim.proc is not None
            victim.proc.kill()
            victim.proc.wait()
            time.sleep(args.pause)
            daemons[0] = Daemon(path, port=victim.port, api_key=API_KEY).start()
            time.sleep(max(0.0, args.duration - args.before - args.pause))
        else:
            time.sleep(args.duration)
        stop.set()
        for t in threads:
            t.join(15)
        producer.flush(10)
        # destroyed now, before the broker goes: it would keep reconnecting
        del producer
        calls = upstream.calls - calls_before
    finally:
        stop.set()
        for d in daemons:
            d.stop()
        if redis is not None:
            redis.stop()
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        broker.stop()
        upstream.stop()
    reads = len(results)
    out: dict[str, Any] = {
        "scenario": scenario,
        "max_staleness": max_staleness,
        "reads": reads,
        "errors": errors[0],
        "upstream_calls_per_read": round(calls / reads, 4) if reads else None,
    }
    for label, bound in (("100ms", 0.1), ("1s", 1.0), ("10s", 10.0)):
        share = sum(1 for s in results if s <= bound) / reads if reads else 0.0
        out[f"within_{label}"] = share
        out[f"nines_{label}"] = nines(share, reads) if reads else "-"
    if reads:
        out["p50_s"] = round(percentile(results, 50), 4)
        out["p99_s"] = round(percentile(results, 99), 4)
        out["max_s"] = round(max(results), 4)
        if max_staleness:
            out["over_bound_plus_1s"] = sum(1 for s in results if s > max_staleness + 1.0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--write-rate", type=float, default=20.0, help="changes per second, all objects together")
    p.add_argument("--read-rate", type=float, default=200.0, help="reads per second, all readers together")
    p.add_argument("--readers", type=int, default=4)
    p.add_argument("--ttl", type=float, default=3600.0, help="the route's ttl")
    p.add_argument("--duration", type=float, default=45.0, help="seconds of reading per run")
    p.add_argument("--pause", type=float, default=30.0, help="seconds the broker is frozen (paused), or the instance dead (kill9)")
    p.add_argument("--before", type=float, default=5.0, help="seconds of reading before the pause")
    p.add_argument("--scenarios", default="steady,paused,kill9")
    p.add_argument("--max-staleness", default="0,5", help="comma-separated: 0 = not set")
    p.add_argument("--json", action="store_true", help="one JSON line per run instead of the table")
    args = p.parse_args()

    rows = []
    for scenario in args.scenarios.split(","):
        for ms in args.max_staleness.split(","):
            row = run(args, scenario, float(ms))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(
        f"{args.objects} objects, {args.write_rate:g} changes/s, {args.read_rate:g} reads/s, "
        f"{args.duration:g} s per run, ttl {args.ttl:g} s"
    )
    print("| scenario | max_staleness | reads | nines ≤100 ms | nines ≤1 s | nines ≤10 s | p50 | p99 | max | upstream calls/read |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['max_staleness'] or '-'} | {r['reads']} | {r['nines_100ms']} | {r['nines_1s']} "
            f"| {r['nines_10s']} | {r.get('p50_s', '-')} s | {r.get('p99_s', '-')} s | {r.get('max_s', '-')} s "
            f"| {r['upstream_calls_per_read']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
