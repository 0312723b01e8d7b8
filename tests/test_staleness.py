"""
Bounded staleness (SPEC.md section 5) against the real daemon
(``twistd apicache``) and a real Kafka-protocol broker of its own (Tansu),
paused with SIGSTOP and resumed with SIGCONT as a frozen broker would be.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from daemon_support import JOIN_SECONDS, KAFKA_EXTRA, ROUTES, kafka_config, wait_ready

from apicache.harness.launchers import Daemon, KafkaBroker
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[KafkaBroker]:
    """A broker of this test's own: pausing the shared one would stall other tests."""
    b = KafkaBroker().start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        os.kill(b.proc.pid, signal.SIGCONT)
    b.stop()


def pause(broker: KafkaBroker) -> None:
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)


def resume(broker: KafkaBroker) -> None:
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGCONT)


def lag(d: Daemon) -> float | None:
    r = d.request("GET", "/")
    assert r.status == 200
    body = r.json()
    assert body["events_lag_s"] == body["events"]["events_lag_s"]
    return body["events_lag_s"]  # type: ignore[no-any-return]


def lag_gauge(d: Daemon) -> float:
    text = d.request("GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("apicache_events_lag_seconds"):
            return float(line.split()[-1])
    raise AssertionError("no apicache_events_lag_seconds in /metrics")


def counter(d: Daemon, name: str) -> float:
    for line in d.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def routes(max_staleness: float) -> list[dict[str, Any]]:
    return [dict(r, max_staleness=max_staleness) if r["type"] == "object" else r for r in ROUTES]


@pytest.fixture
def staleness_daemon(make_daemon: Callable[..., Daemon], broker: KafkaBroker) -> Callable[..., Daemon]:
    def make(max_staleness: float = 2.0, topic: str = "bounded", **more: Any) -> Daemon:
        broker.create_topic(topic, partitions=2)
        cfg = kafka_config(broker, topic, routes=routes(max_staleness), **more)
        cfg["kafka"]["extra"] = KAFKA_EXTRA
        d = make_daemon(cfg)
        wait_ready(d)
        return d

    return make


@pytest.mark.slow
def test_the_event_lag_grows_while_the_broker_is_paused_and_recovers(staleness_daemon, broker):
    d = staleness_daemon(max_staleness=2.0)
    # W exists once both partitions answered their first end-offset query
    first = wait_until(lambda: (lambda v: v is not None and v < 1.5)(lag(d)), 10.0, 0.1, "the lag to fall under 1.5 s")
    assert first
    assert lag_gauge(d) < 1.5
    pause(broker)
    paused = time.monotonic()
    try:
        wait_until(lambda: (lag(d) or 0) > 3.0, 8.0, 0.2, "the lag to grow over 3 s")
        # W was vouched for by a query sent before the pause: the lag is at
        # least the time paused, less the query interval (wall clock: the
        # real broker is paused, the real daemon measures its lag)
        assert (lag(d) or 0) >= time.monotonic() - paused - 1.0
        assert lag_gauge(d) > 3.0
        assert d.request("GET", "/healthz").status == 200, "serving on"
    finally:
        resume(broker)
    wait_until(lambda: (lambda v: v is not None and v < 1.5)(lag(d)), JOIN_SECONDS, 0.2, "the lag to fall under 1.5 s again")
    wait_until(lambda: outage_logged(d), 2.0, 0.1, "the outage to be logged")


def outage_logged(d: Daemon) -> bool:
    """
    Whether the log holds a line saying the lag went over the object
    route's bound (with a measured lag, not the start-up's unknown one),
    then one saying it came back.
    """
    lines = [line for line in d.log_lines() if line.get("routes") == "object" and line.get("bound") == 2.0]
    over = [i for i, line in enumerate(lines) if "behind" in line["message"] and isinstance(line["lag"], float) and line["lag"] > 2.0]
    back = [i for i, line in enumerate(lines) if "caught up" in line["message"]]
    return bool(over) and any(i > over[0] for i in back)

def test_the_event_lag_is_null_before_any_end_offset_was_confirmed(make_daemon):
    broker = KafkaBroker()  # never started: nothing answers
    d = make_daemon(kafka_config(broker, "nowhere", routes=routes(2.0)))
    time.sleep(1.0)
    assert lag(d) is None
    assert lag_gauge(d) == float("inf")


# --- the serving rule ------------------------------------------------------------------

OBJ = "/server/object(7)/header"
UP = "/api/object(7)/header"


def served_from_cache_until(d: Daemon, deadline: float, statuses: list[str] | None = None) -> list[str]:
    """
    GET the object every 0.1 s until ``deadline``; return the X-Cache
    values (and add the Cache-Status values to ``statuses``).
    """
    seen = []
    while time.monotonic() < deadline:
        r = d.get(OBJ)
        seen.append(r.cache or "")
        if statuses is not None:
            statuses.append(r.headers.get("cache-status", ""))
        time.sleep(0.1)
    return seen


# Redis only: each case takes about 40 s, and the serving rule is the
# cache core's whatever the store (tests/test_cache_staleness.py runs it
# in-process); Redis adds the in-process tier in front of the shared store.
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis"])
def test_with_the_broker_paused_an_entry_is_served_for_max_staleness_then_fetched_again(
    staleness_daemon, broker, upstream, redis_url, backend
):
    store = {"backend": "redis", "redis_url": redis_url, "key_prefix": f"st-{uuid.uuid4().hex[:8]}"} if backend == "redis" else {}
    # a bound well above the lag a loaded machine shows (the end-offset
    # query every 0.5 s, the broker's fetch wait): only the pause crosses it
    bound = 4.0
    d = staleness_daemon(max_staleness=bound, topic=f"serving-{backend}", store=store)
    wait_until(lambda: (lambda v: v is not None and v < 1.0)(lag(d)), 10.0, 0.1, "the lag to fall under 1 s")
    assert d.get(OBJ).cache == "MISS"
    # the events vouch for it: a hit well past max_staleness
    first = time.monotonic()
    assert set(served_from_cache_until(d, first + bound + 1.0)) == {"HIT"}
    assert upstream.calls(UP) == 1

    pause(broker)
    paused = time.monotonic()
    window = 2 * bound + 1.0
    try:
        assert d.get(OBJ).cache == "HIT", "within max_staleness of the last W"
        # W stopped before the pause: the entry is fetched again within the
        # bound of it (sooner by up to a fifth: the spread), and from then
        # on once a bound at most: a cache with a TTL of max_staleness
        statuses: list[str] = []
        seen = served_from_cache_until(d, paused + window, statuses)
        assert "MISS" in seen
        assert any("fwd=stale" in c and "detail=events-behind" in c for c in statuses), statuses
        assert upstream.calls(UP) >= 3, seen
        assert upstream.calls(UP) <= 1 + window / (0.8 * bound) + 1, seen
        head = d.request("HEAD", OBJ, [("org_id", "t1")])
        assert head.status == 200
        time.sleep(bound + 0.1)
        head = d.request("HEAD", OBJ, [("org_id", "t1")])
        assert head.cache == "MISS", "HEAD too is bounded"
        assert "detail=events-behind" in head.headers.get("cache-status", "")
        assert counter(d, "apicache_events_behind_total") >= 3
    finally:
        resume(broker)
    wait_until(lambda: (lambda v: v is not None and v < 1.0)(lag(d)), JOIN_SECONDS, 0.1, "the lag to fall under 1 s")
    d.get(OBJ)
    calls = upstream.calls(UP)
    # caught up: served from the cache again, past max_staleness
    assert set(served_from_cache_until(d, time.monotonic() + bound + 1.0)) == {"HIT"}
    assert upstream.calls(UP) == calls


# --- group mode ------------------------------------------------------------------------


def partitions_held(d: Daemon) -> int:
    return int(d.request("GET", "/").json()["events"]["partitions"])


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_in_group_mode_the_other_instances_partitions_count_through_redis(make_daemon, broker, redis_url, backend):
    """
    Two instances share a group and a topic of two partitions, one each.
    With Redis, each instance's W covers the other's partition through the
    marks it publishes; with stores of their own, the other's partition
    counts as −∞ and no W exists.
    """
    topic = f"grouped-{backend}"
    broker.create_topic(topic, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    store = {"backend": "redis", "redis_url": redis_url, "key_prefix": f"gw-{uuid.uuid4().hex[:8]}"} if backend == "redis" else {}
    cfg = kafka_config(broker, topic, mode="group", group_id=group, routes=routes(2.0), store=store)
    a = make_daemon(cfg)
    b = make_daemon(cfg)
    wait_until(lambda: partitions_held(a) == 1 and partitions_held(b) == 1, 3 * JOIN_SECONDS, 0.2, "each daemon to hold one partition")
    if backend == "redis":
        wait_until(lambda: all((lambda v: v is not None and v < 1.5)(lag(d)) for d in (a, b)), 10.0, 0.1, "both daemons' lag to fall under 1.5 s")
    else:
        time.sleep(2.0)  # several end-offset queries and ticks
        assert partitions_held(a) == 1 and partitions_held(b) == 1
        assert (lag(a), lag(b)) == (None, None)
