"""
``deploy/grafana-dashboard.json`` and ``deploy/prometheus-alerts.yml``
query only what the daemon exports: every metric name (and label) in their
PromQL is checked against a real ``/metrics`` scrape of the real daemon with
a Redis store (a private redis-server) and the Kafka listener (a real
Kafka-protocol broker), and the rules parse as YAML.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, KafkaBroker
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

#: Metrics the dashboard and rules query that pending work adds: delete a
#: name here when it lands (the test fails until then, to say so).
PENDING: set[str] = set()  # apicache_events_lag_seconds landed with issue 13

#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_RATE = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """
    Return the metric names a PromQL expression selects (not functions,
    keywords, labels, durations or strings).
    """
    s = _STRING.sub('""', expr)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\boffset\s+\w+", " ", s)
    names = set()
    for m in _NAME.finditer(s):
        if s[m.end():].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # an exponent or a unit of a number
        names.add(m.group())
    return names


def test_metric_names_are_read_from_promql():
    """The extractor sees metrics, not functions, labels or durations."""
    expr = (
        'sum by (cache) (rate(a_total{instance=~"$instance", cache=~"HIT|b_total"}[$__rate_interval] offset 1d))'
        " / on (instance) group_left max(b) > 0.8 * 1e3 and histogram_quantile(0.5, c_bucket)"
    )
    assert metric_names(expr) == {"a_total", "b", "c_bucket"}


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())  # type: ignore[no-any-return]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows hold their panels


def queries() -> dict[str, str]:
    """
    Return every PromQL expression of the dashboard and the rules, by where
    it is.
    """
    d = dashboard()
    found = {}
    for p in _panels(d):
        for t in p.get("targets", []):
            found[f"panel {p['title']!r} {t['refId']}"] = t["expr"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = _LABEL_VALUES.match(v["query"]["query"])
            assert m, v["query"]
            found[f"variable {v['name']}"] = f"{m.group(1)} by ({m.group(2)})"
    for r in rules():
        found[f"rule {r['alert']}"] = r["expr"]
    return found


def test_dashboard_has_the_panels_of_issue_15():
    d = dashboard()
    titles = [p["title"] for p in _panels(d)]
    assert len(titles) == len(set(titles))
    for wanted in (
        "Hit ratio", "Requests by X-Cache", "Upstream latency", "Upstream errors",
        "Store bytes", "Store evictions", "Events lag", "Redis and Kafka health",
    ):
        assert wanted in titles
    ids = [p["id"] for p in _panels(d)]
    assert len(ids) == len(set(ids))
    for p in _panels(d):
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}


def test_rules_parse_and_cover_the_four_alerts():
    """The YAML parses; each rule has an expression, a severity and a summary."""
    rs = rules()
    names = [r["alert"] for r in rs]
    assert len(names) == len(set(names))
    for wanted in ("ApicacheHitRatioFalling", "ApicacheEventsLagOverBound", "ApicacheUpstreamErrors", "ApicacheStoreDown"):
        assert wanted in names
    for r in rs:
        assert r["expr"].strip() and metric_names(r["expr"]), r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaBroker]:
    broker = KafkaBroker().start()
    yield broker
    broker.stop()


@pytest.fixture
def scrape(make_daemon: Callable[..., Daemon], upstream: UpstreamStub, redis_url: str, kafka: KafkaBroker) -> dict[str, Any]:
    """
    Return the families of one ``/metrics`` scrape of a daemon with Redis
    and Kafka ready, after a miss, a hit and an upstream failure.
    """
    topic = f"dashboard-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    d = make_daemon(
        {
            "store": {"backend": "redis", "redis_url": redis_url, "key_prefix": f"dash-{uuid.uuid4().hex[:8]}"},
            "kafka": {
                "bootstrap_servers": kafka.bootstrap,
                "topics": [topic],
                # a group join on Tansu takes ~3 s with these, ~23 s without
                "extra": {"session.timeout.ms": 6000, "max.poll.interval.ms": 7000, "heartbeat.interval.ms": 1000},
            },
            "events": [{"types": ["object.update"], "route": "object", "id_field": "objectid"}],
        }
    )
    wait_until(lambda: d.request("GET", "/readyz").status == 200, 30, 0.1, "/readyz to answer 200 (Redis up, group joined)")
    upstream.set("/api/object(2)/header", drop=True)
    assert d.get("/server/object(1)/header").cache == "MISS"
    assert d.get("/server/object(1)/header").cache == "HIT"
    assert d.get("/server/object(2)/header").status == 502
    r = d.request("GET", "/metrics")
    assert r.status == 200
    return {f.name: f for f in text_string_to_metric_families(r.body.decode())}


def test_every_metric_queried_is_in_a_real_scrape(scrape: dict[str, Any]):
    """
    Each metric the dashboard and the rules select has samples in the
    daemon's /metrics (counters as ``_total``, histograms as ``_bucket``),
    each label they match on or group by exists on it, and each metric they
    take a rate of is a counter.
    """
    samples: dict[str, set[str]] = {}
    kinds: dict[str, str] = {}
    for family in scrape.values():
        for s in family.samples:
            samples.setdefault(s.name, set()).update(s.labels)
            kinds[s.name] = family.type
    missing: dict[str, set[str]] = {}
    for where, expr in queries().items():
        names = metric_names(expr)
        assert names, where
        assert all(n.startswith("apicache_") for n in names), (where, names)
        for n in names - set(samples):
            missing.setdefault(n, set()).add(where)
        known = set(TARGET_LABELS).union(*(samples.get(n, set()) for n in names))
        if names - set(samples):
            continue  # reported below; its labels are not known
        for name, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
            labels = set(_MATCHER.findall(matchers))
            assert labels <= samples[name] | TARGET_LABELS, (where, name, labels)
        for grouping in _GROUPING.findall(_STRING.sub('""', expr)):
            labels = {g.strip() for g in grouping.split(",") if g.strip()}
            assert labels <= known, (where, labels)
        for name in _RATE.findall(expr):
            assert kinds[name] in ("counter", "histogram"), (where, name, kinds[name])
    assert set(missing) == PENDING, (
        f"queried but not exported: {missing}; when a PENDING metric lands, delete it from PENDING"
    )


def test_health_panels_read_1_while_redis_and_kafka_are_up(scrape: dict[str, Any]):
    assert scrape["apicache_redis_up"].samples[0].value == 1
    assert scrape["apicache_kafka_ready"].samples[0].value == 1
    errors = {s.labels["kind"]: s.value for s in scrape["apicache_upstream_errors"].samples}
    assert errors == {"unreachable": 1}
