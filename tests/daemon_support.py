"""
What the tests of the real daemon (``twistd -n apicache``) share: the
configuration ``make_daemon`` (tests/conftest.py) starts it with, its
readiness and metrics, the settings that make a consumer-group join on the
test broker take seconds, and the ``GET /`` figures of ``--workers``.

Not a test module: test modules import from here, never from each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, KafkaBroker, Reply
from apicache.harness.polling import wait_until

# -- the configuration ---------------------------------------------------------------

API_KEY = "test-key"

ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 300},
    {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}", "ttl": 300},
]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """
    Return ``base`` updated with ``extra``, tables merged key by key.
    """
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def daemon_config(upstream_url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Return a configuration (as a dict) for a daemon in front of ``upstream_url``.
    """
    base: dict[str, Any] = {
        "server": {"api_keys": [API_KEY], "shutdown_grace": 3.0},
        "upstream": {"base_url": upstream_url + "/api", "timeout": 2.0},
        "routes": ROUTES,
    }
    return merge(base, extra or {})


# -- readiness and metrics -----------------------------------------------------------


def ready(d: Daemon, timeout: float = 5.0, interval: float = 0.02) -> Daemon:
    """
    Wait until ``d`` answers ``/readyz`` with 200 (every dependency up);
    return it.
    """
    wait_until(lambda: d.request("GET", "/readyz").status == 200, timeout, interval, "/readyz to answer 200")
    return d


def metric(d: Daemon, name: str) -> float:
    """
    Return the value of the unlabelled metric ``name`` (or ``name_total``)
    in ``d``'s ``/metrics``.
    """
    for line in d.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


# -- Kafka events ----------------------------------------------------------------------

#: Consumer settings for the test broker: with librdkafka's defaults a group
#: join on Tansu takes ~23 s, with these ~3 s.  Tansu does not end a waiting
#: fetch early when data arrives, so the fetch wait bounds event latency.
KAFKA_EXTRA = {
    "session.timeout.ms": 6000,
    "max.poll.interval.ms": 7000,
    "heartbeat.interval.ms": 1000,
    "fetch.wait.max.ms": 20,
}

OBJECT_EVENTS = [
    {
        "types": ["object.update", "object.publish", "object.revision", "object.delete"],
        "route": "object",
        "id_field": "objectid",
        "tenant_field": "org_id",
    }
]

#: How long a readiness wait that includes a consumer-group join may take.
JOIN_SECONDS = 20.0


def kafka_config(
    broker: KafkaBroker,
    topic: str,
    events: list[dict[str, Any]] | None = None,
    mode: str = "broadcast",
    group_id: str = "apicache",
    **more: Any,
) -> dict[str, Any]:
    """
    Return the configuration tables (``[kafka]``, ``[[events]]`` and
    ``more``) of a daemon listening to ``topic`` on ``broker``.
    """
    return {
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "topics": [topic],
            "mode": mode,
            "group_id": group_id,
            "extra": KAFKA_EXTRA,
        },
        "events": OBJECT_EVENTS if events is None else events,
        **more,
    }


def events_info(d: Daemon) -> dict[str, Any]:
    """
    Return the ``events`` part of ``d``'s ``GET /``.
    """
    r = d.request("GET", "/")
    assert r.status == 200
    return r.json()["events"]  # type: ignore[no-any-return]


def readyz(d: Daemon) -> Reply:
    """
    Return ``d``'s answer to ``GET /readyz``.
    """
    return d.request("GET", "/readyz")


def wait_ready(d: Daemon, timeout: float = JOIN_SECONDS) -> None:
    """
    Wait until ``d`` answers ``/readyz`` with 200, a consumer-group join
    included.
    """
    wait_until(lambda: readyz(d).status == 200, timeout, 0.1, "/readyz to answer 200 (the consumer group joined)")


# -- --workers --------------------------------------------------------------------------

PATH = "/server/object(7)/header"
UPSTREAM_PATH = "/api/object(7)/header"


def own(info: dict[str, Any]) -> dict[str, Any]:
    """
    The figures of the worker that answered ``GET /`` (the top level sums every worker's).
    """
    return next(w for w in info["per_worker"] if w["worker"] == info["worker"])


def workers_info(
    d: Daemon, want: Callable[[dict[str, Any]], bool] = lambda info: True, timeout: float = 30.0
) -> dict[int, dict[str, Any]]:
    """
    GET / until every worker answered with an info that ``want`` accepts;
    return each worker's last, by worker index.
    """
    seen: dict[int, dict[str, Any]] = {}

    def every_worker_answered() -> bool:
        info = d.get("/").json()
        assert info["workers"] == 2
        if want(info):
            seen[info["worker"]] = info
        else:
            seen.pop(info["worker"], None)
        return len(seen) == 2

    # no pause between tries: each is a round trip to a worker
    wait_until(every_worker_answered, timeout, 0, lambda: f"every worker to answer as wanted: {seen}")
    return seen


def fill_both(d: Daemon, upstream: UpstreamStub, path: str = PATH, upstream_path: str = UPSTREAM_PATH) -> None:
    """
    GET ``path`` until each worker fetched it once, then until each says it
    holds it.
    """
    before = upstream.calls(upstream_path)

    # which worker accepts a new connection is up to the kernel: ask until
    # both have fetched (each fetches once, then serves its own copy)
    def both_fetched() -> bool:
        d.get(path)
        return upstream.calls(upstream_path) - before == 2

    wait_until(both_fetched, 30, 0, "both workers to fetch")
    workers_info(d, lambda info: own(info)["entries"] == 1)
