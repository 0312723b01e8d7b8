"""
``make dashboard-preview``: the panels of ``deploy/grafana-dashboard.json``
drawn with matplotlib from real ``/metrics`` scrapes, for readers without a
Grafana (README: Dashboard and alerts).

It starts the real daemon (``twistd apicache``) in front of the demo
upstream, with a private ``redis-server`` as its store and a Kafka-protocol
broker for events when they are installed, drives it with ``wrk`` (a mix of
hot keys, which hit, and fresh keys, which miss; Python threads without
wrk), sends a few invalidation events a second, pauses Redis and then the
upstream for a few seconds each (SIGSTOP) so that the health and error
panels have something to show, scrapes ``/metrics`` every second, and draws
each panel the way its PromQL computes it (rates from counter deltas).

``python bench/dashboard_preview.py [--duration 40] [--out deploy/dashboard-preview.png]``
``--save-scrapes F`` keeps the scrapes; ``--from-scrapes F`` redraws from them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from apicache.harness.launchers import Daemon, KafkaBroker, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
#: The demo upstream, run as ``python -m DEMO_MODULE --port N``.
DEMO_MODULE = "apicache.harness.demo"
API_KEY = "preview-key"
TOPIC = "object-events"
HOT_KEYS = 300
HOT_SHARE = 0.9
#: Seconds of counter history each rate is taken over (PromQL's range).
RATE_WINDOW = 3.0

HITS = ("HIT", "STALE", "REVALIDATED")
LOOKUPS = (*HITS, "MISS", "BYPASS")

Sample = tuple[str, dict[str, str], float]


class Scrapes:
    """
    A series of ``/metrics`` scrapes: ``times[i]`` (seconds from the start)
    and ``samples[i]``.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.samples: list[list[Sample]] = []
        self.notes: dict[str, Any] = {"incidents": []}

    def add(self, t: float, text: str) -> None:
        """
        Add the scrape ``text`` taken at ``t``.
        """
        found = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                found.append((s.name, dict(s.labels), float(s.value)))
        self.times.append(t)
        self.samples.append(found)

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps({"times": self.times, "samples": self.samples, "notes": self.notes}))

    @classmethod
    def load(cls, path: str) -> Scrapes:
        """
        Return the scrapes saved by L{dump}.
        """
        doc = json.loads(Path(path).read_text())
        s = cls()
        s.times, s.notes = doc["times"], doc["notes"]
        s.samples = [[(n, labels, v) for n, labels, v in scrape] for scrape in doc["samples"]]
        return s

    def has(self, name: str) -> bool:
        """
        Return whether any scrape holds a sample of ``name``.
        """
        return any(n == name for scrape in self.samples for n, _, _ in scrape)

    def value(self, name: str, where: Callable[[dict[str, str]], bool] = lambda labels: True) -> list[float]:
        """
        Return, per scrape, the sum of ``name``'s samples whose labels pass
        ``where`` (``sum(name{...})``).
        """
        return [sum(v for n, labels, v in scrape if n == name and where(labels)) for scrape in self.samples]

    def by(self, name: str, label: str, where: Callable[[dict[str, str]], bool] = lambda labels: True) -> dict[str, list[float]]:
        """
        Return ``sum by (label) (name{...})``: one list of values per label value.
        """
        values = sorted({labels[label] for scrape in self.samples for n, labels, _ in scrape if n == name and label in labels and where(labels)})
        return {v: self.value(name, lambda labels, v=v: labels.get(label) == v and where(labels)) for v in values}

    def rate(self, series: list[float]) -> list[float]:
        """
        Return the per-second rate of a counter ``series`` over the last
        L{RATE_WINDOW} seconds at each scrape (NaN until there is one).
        """
        out = []
        first = 0
        for i, t in enumerate(self.times):
            while self.times[first] < t - RATE_WINDOW:
                first += 1
            j = first if first < i else i - 1
            if j < 0 or self.times[i] == self.times[j]:
                out.append(float("nan"))
            else:
                # a counter never decreases: a drop is a restart (as PromQL assumes)
                delta = series[i] - series[j] if series[i] >= series[j] else series[i]
                out.append(delta / (self.times[i] - self.times[j]))
        return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """
    Return the ``q`` quantile of cumulative ``buckets`` (upper bound ->
    count), interpolated within a bucket as PromQL's histogram_quantile does.
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return lower
            return lower + (b - lower) * (rank - below) / max(buckets[b] - below, 1e-12)
        lower, below = b, buckets[b]
    return lower


# -- the panels, computed as their PromQL does --------------------------------

Lines = dict[str, list[float]]


def _ratio(a: list[float], b: list[float]) -> list[float]:
    return [x / y if y else float("nan") for x, y in zip(a, b, strict=True)]


def hit_ratio(s: Scrapes) -> Lines:
    hits = s.rate(s.value("apicache_requests_total", lambda labels: labels["cache"] in HITS))
    lookups = s.rate(s.value("apicache_requests_total", lambda labels: labels["cache"] in LOOKUPS))
    return {"hit ratio": _ratio(hits, lookups)}


def requests_by_cache(s: Scrapes) -> Lines:
    return {cache: s.rate(v) for cache, v in s.by("apicache_requests_total", "cache").items()}


def upstream_latency(s: Scrapes) -> Lines:
    out: Lines = {"p50": [], "p99": []}
    by_le = s.by("apicache_upstream_latency_seconds_bucket", "le")
    rates = {float(le): s.rate(v) for le, v in by_le.items()}
    for i in range(len(s.times)):
        buckets = {le: r[i] for le, r in rates.items()}
        if not buckets or any(v != v for v in buckets.values()):
            out["p50"].append(float("nan"))
            out["p99"].append(float("nan"))
            continue
        out["p50"].append(histogram_quantile(0.5, buckets))
        out["p99"].append(histogram_quantile(0.99, buckets))
    return out


def upstream_errors(s: Scrapes) -> Lines:
    out = {f"no answer: {k}": s.rate(v) for k, v in s.by("apicache_upstream_errors_total", "kind").items()}
    five = s.by("apicache_requests_total", "status", lambda labels: labels["status"].startswith("5"))
    out.update({f"answered {k}": s.rate(v) for k, v in five.items()})
    return out


def store_bytes(s: Scrapes) -> Lines:
    return {"bytes": s.value("apicache_store_bytes")}


def store_evictions(s: Scrapes) -> Lines:
    return {
        "evicted": s.rate(s.value("apicache_store_evictions_total")),
        "not stored (store error)": s.rate(s.value("apicache_store_errors_total")),
    }


def events_lag(s: Scrapes) -> Lines:
    if not s.has("apicache_events_lag_seconds"):
        return {}
    return {"lag": s.value("apicache_events_lag_seconds")}


def events(s: Scrapes) -> Lines:
    if not s.has("apicache_events_received_total"):
        return {}
    return {k: s.rate(s.value(f"apicache_events_{k}_total")) for k in ("received", "applied", "skipped", "failed")}


def health(s: Scrapes) -> Lines:
    out = {}
    if s.has("apicache_redis_up"):
        out["redis up"] = s.value("apicache_redis_up")
    if s.has("apicache_kafka_ready"):
        out["kafka ready"] = s.value("apicache_kafka_ready")
    return out


def redis_errors(s: Scrapes) -> Lines:
    if not s.has("apicache_redis_errors_total"):
        return {}
    return {
        "errors": s.rate(s.value("apicache_redis_errors_total")),
        "timeouts": s.rate(s.value("apicache_redis_timeouts_total")),
    }


#: dashboard panel title -> (how to compute it, unit, stacked)
PANELS: dict[str, tuple[Callable[[Scrapes], Lines], str, bool]] = {
    "Hit ratio": (hit_ratio, "ratio", False),
    "Requests by X-Cache": (requests_by_cache, "req/s", True),
    "Upstream latency": (upstream_latency, "seconds", False),
    "Upstream errors": (upstream_errors, "per second", False),
    "Store bytes": (store_bytes, "bytes", False),
    "Store evictions": (store_evictions, "per second", False),
    "Events lag": (events_lag, "seconds", False),
    "Events": (events, "per second", False),
    "Redis and Kafka health": (health, "1 = up", False),
    "Redis errors": (redis_errors, "per second", False),
}

#: what a panel without series says, and why
EMPTY = {
    "Events lag": "apicache_events_lag_seconds is not exported yet",
    "Events": "Kafka is off in this run",
    "Redis errors": "memory store in this run",
    "Redis and Kafka health": "neither Redis nor Kafka in this run",
}


def draw(s: Scrapes, out: str) -> None:
    """
    Draw every panel of the dashboard, in its grid order, into ``out`` (PNG).

    @raise SystemExit: the dashboard's panels and L{PANELS} differ.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.loads(DASHBOARD.read_text())
    panels = sorted(dash["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    titles = [p["title"] for p in panels]
    if set(titles) != set(PANELS):
        raise SystemExit(f"the dashboard's panels {titles} are not the preview's {list(PANELS)}")
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.1 * rows + 0.9), sharex=True)
    notes = s.notes
    t0 = s.times[0] if s.times else 0.0
    shaded = ", ".join(f"{name} {start - t0:.0f}-{end - t0:.0f} s" for name, start, end in notes.get("incidents", []))
    fig.suptitle(
        f"apicache dashboard preview: {notes.get('load', '')}\n{notes.get('setup', '')}"
        + (f"\nshaded: {shaded} (SIGSTOP)" if shaded else ""),
        fontsize=11,
    )
    x = [t - t0 for t in s.times]
    for ax, title in zip(axes.flat, titles, strict=False):
        compute, unit, stacked = PANELS[title]
        lines = compute(s)
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_ylabel(unit, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        for _name, start, end in notes.get("incidents", []):
            ax.axvspan(start - t0, end - t0, color="orange", alpha=0.15, lw=0)
        if not lines:
            ax.text(0.5, 0.5, f"no data: {EMPTY.get(title, 'no series')}", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        if stacked:
            names = sorted(lines, key=lambda n: (n == "-", n))
            ax.stackplot(x, *[[0.0 if v != v else v for v in lines[n]] for n in names], labels=names, alpha=0.8)
        else:
            for name, values in lines.items():
                ax.plot(x, values, label=name, lw=1.4)
        if unit == "ratio":
            ax.set_ylim(0, 1.05)
        elif unit == "1 = up":
            ax.set_ylim(-0.05, 1.15)
        elif unit == "bytes":
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e6:.2f} MB"))
        else:
            ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left", ncol=3)
    for ax in axes.flat[len(titles):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


# -- the run -----------------------------------------------------------------


def _config(directory: str, upstream_url: str, redis: RedisServer | None, kafka: KafkaBroker | None) -> str:
    lines = [
        "[server]",
        f'api_keys = ["{API_KEY}"]',
        "access_log = false",
        "shutdown_grace = 2.0",
        "[store]",
    ]
    if redis is not None:
        # a small in-process tier in front of Redis: its bytes level off and it evicts
        lines += ['backend = "redis"', f'redis_url = "{redis.url}"', "local_max_bytes = 1000000"]
    else:
        lines += ['backend = "memory"', "max_bytes = 1000000"]
    lines += [
        "[upstream]",
        f'base_url = "{upstream_url}"',
        "timeout = 1.0",
        "[[routes]]",
        'type = "object"',
        'path = "/server/object(<id>)/header"',
        'upstream = "/object({id})/header"',
        "ttl = 300",
    ]
    if kafka is not None:
        lines += [
            "[kafka]",
            f'bootstrap_servers = "{kafka.bootstrap}"',
            f'topics = ["{TOPIC}"]',
            'extra = { "session.timeout.ms" = 6000, "heartbeat.interval.ms" = 1000, "fetch.wait.max.ms" = 50 }',
            "[[events]]",
            'types = ["object.update"]',
            'route = "object"',
            'id_field = "objectid"',
            'tenant_field = "org_id"',
        ]
    path = os.path.join(directory, "preview.toml")
    Path(path).write_text("\n".join(lines) + "\n")
    return path


WRK_SCRIPT = """
math.randomseed(os.time())
local headers = {["api-key"] = "%(key)s", ["org_id"] = "acme", ["authorization"] = "Bearer preview"}
request = function()
  local id
  if math.random() < %(hot_share)s then id = math.random(1, %(hot)d) else id = math.random(1, 100000000) end
  return wrk.format("GET", "/server/object(" .. id .. ")/header", headers)
end
"""


def _path_for(rng: random.Random) -> str:
    n = rng.randint(1, HOT_KEYS) if rng.random() < HOT_SHARE else rng.randint(1, 100_000_000)
    return f"/server/object({n})/header"


def _load(port: int, duration: float, directory: str) -> subprocess.Popen[bytes] | list[threading.Thread]:
    """
    Start the load: wrk when installed, else four Python threads.
    """
    wrk = shutil.which("wrk")
    if wrk:
        script = os.path.join(directory, "mix.lua")
        Path(script).write_text(WRK_SCRIPT % {"key": API_KEY, "hot_share": HOT_SHARE, "hot": HOT_KEYS})
        return subprocess.Popen(
            [wrk, "-t", "1", "-c", "8", "-d", f"{int(duration)}s", "-s", script, f"http://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + duration

    def run(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while time.monotonic() < deadline:
            try:
                conn.request("GET", _path_for(rng), headers={"api-key": API_KEY, "org_id": "acme", "authorization": "Bearer preview"})
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(4)]
    for th in threads:
        th.start()
    return threads


def _pause(proc: subprocess.Popen[bytes] | None, seconds: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    proc.send_signal(signal.SIGCONT)


def _events(kafka: KafkaBroker, stop: threading.Event) -> None:
    producer = kafka.producer()
    rng = random.Random(7)
    while not stop.wait(0.2):
        event = {"type": "object.update", "objectid": rng.randint(1, HOT_KEYS), "org_id": "acme"}
        producer.produce(TOPIC, json.dumps(event).encode())
        producer.poll(0)
    producer.flush(5)


def run(duration: float, use_redis: bool, use_kafka: bool) -> Scrapes:
    """
    Run the daemon under load for ``duration`` seconds; return the scrapes.
    """
    directory = tempfile.mkdtemp(prefix="apicache-preview-")
    redis = kafka = None
    demo = daemon = None
    stop = threading.Event()
    scrapes = Scrapes()
    try:
        if use_redis and shutil.which("redis-server"):
            redis = RedisServer(directory).start()
        if use_kafka:
            try:
                kafka = KafkaBroker().start()
                kafka.create_topic(TOPIC, partitions=2)
            except (ImportError, RuntimeError) as e:
                print(f"no Kafka in this preview: {e}", file=sys.stderr)
                kafka = None
        port = free_port()
        demo = subprocess.Popen([sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--latency", "0.02"], stdout=subprocess.DEVNULL)
        daemon = Daemon(_config(directory, f"http://127.0.0.1:{port}", redis, kafka), cwd=directory, api_key=API_KEY).start()
        if kafka is not None:
            deadline = time.monotonic() + 30
            while daemon.request("GET", "/readyz").status != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
        scrapes.notes["setup"] = (
            f"twistd apicache, {'Redis store (1 MB in-process tier)' if redis else 'memory store (1 MB)'}, "
            f"{'Kafka events (5/s, object.update of hot keys)' if kafka else 'no Kafka'}, demo upstream (20 ms), one scrape a second"
        )
        scrapes.notes["load"] = (
            f"{int(duration)} s of {'wrk -c 8' if shutil.which('wrk') else 'Python load'}, "
            f"{HOT_SHARE:.0%} of requests on {HOT_KEYS} hot keys, the rest on fresh keys"
        )
        start = time.monotonic()

        def scrape() -> None:
            scrapes.add(time.monotonic() - start, daemon.request("GET", "/metrics").body.decode())

        scrape()
        load = _load(daemon.port, duration, directory)
        if kafka is not None:
            threading.Thread(target=_events, args=(kafka, stop), daemon=True).start()
        plan: list[tuple[float, str, subprocess.Popen[bytes] | None, float]] = []
        if redis is not None:
            plan.append((0.3 * duration, "Redis paused", redis.proc, 4.0))
        plan.append((0.6 * duration, "upstream paused", demo, 4.0))

        def incidents() -> None:
            for at, name, proc, seconds in plan:
                time.sleep(max(0.0, start + at - time.monotonic()))
                scrapes.notes["incidents"].append((name, time.monotonic() - start, time.monotonic() - start + seconds))
                _pause(proc, seconds)

        chaos = threading.Thread(target=incidents, daemon=True)
        chaos.start()
        while time.monotonic() - start < duration + 3:
            time.sleep(max(0.0, start + len(scrapes.times) - time.monotonic()))
            scrape()
        chaos.join()
        if isinstance(load, subprocess.Popen):
            load.wait(30)
        stop.set()
        return scrapes
    finally:
        stop.set()
        if daemon is not None:
            daemon.stop()
        if demo is not None:
            demo.send_signal(signal.SIGCONT)
            demo.terminate()
            demo.wait()
        for server in (redis, kafka):
            if server is not None:
                if server.proc is not None and server.proc.poll() is None:
                    server.proc.send_signal(signal.SIGCONT)
                server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Iterable[str] | None = None) -> int:
    """
    Run (or reload) the scrapes and draw the preview; return the exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    p.add_argument("--out", default=str(ROOT / "deploy" / "dashboard-preview.png"))
    p.add_argument("--no-redis", action="store_true", help="the memory store instead of a private redis-server")
    p.add_argument("--no-kafka", action="store_true", help="no broker, no events")
    p.add_argument("--save-scrapes", metavar="FILE", help="keep the scrapes (JSON)")
    p.add_argument("--from-scrapes", metavar="FILE", help="draw from saved scrapes instead of running")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.from_scrapes:
        scrapes = Scrapes.load(args.from_scrapes)
    else:
        scrapes = run(args.duration, not args.no_redis, not args.no_kafka)
        if args.save_scrapes:
            scrapes.dump(args.save_scrapes)
    draw(scrapes, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
