"""
``GET /`` and ``/metrics`` (SPEC.md section 4, issue 15): ``hits``,
``misses`` and ``hit_ratio``; with ``--workers N`` whichever worker takes
the request answers for all of them: counters and histograms summed, gauges
per worker (a ``worker`` label), ``GET /`` summing ``hits``, ``misses``,
``entries`` and ``bytes`` with each worker's own in ``per_worker``.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from apicache.daemon.workers import WorkerLink, WorkerSupervisor, _Worker
from apicache.harness.polling import wait_until
from apicache.ops.metrics import Metrics, merge_snapshots
from apicache.testing import InMemoryAPI as Wire
from apicache.testing import linked_control_links as linked
from apicache.testing import parse_response as parse

PATH = "/server/object(7)/header"


def parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- in-process ----------------------------------------------------------------


def test_get_root_has_hits_misses_and_hit_ratio():
    w = Wire(count_requests=True)
    assert parse(w.raw(b"GET / HTTP/1.1\r\nHost: x\r\napi-key: k1\r\n\r\n")[0])[0] == 200
    for _ in range(4):
        assert w.get()[0] == 200  # a miss, then three hits
    status, _, body = parse(w.raw(b"GET / HTTP/1.1\r\nHost: x\r\napi-key: k1\r\n\r\n")[0])
    info = json.loads(body)
    assert (info["hits"], info["misses"], info["hit_ratio"]) == (3, 1, 0.75)
    assert (info["entries"], info["tenants"]) == (1, 1)
    assert "per_worker" not in info


def test_hit_ratio_is_zero_before_any_request():
    w = Wire(count_requests=True)
    status, _, body = parse(w.raw(b"GET / HTTP/1.1\r\nHost: x\r\napi-key: k1\r\n\r\n")[0])
    assert json.loads(body)["hit_ratio"] == 0.0


def _worker_metrics(requests: int, entries: int, latency: float) -> Metrics:
    m = Metrics()
    for _ in range(requests):
        m.count_request("object", 200, "HIT", "t1")
    m.observe_upstream(latency)
    m.add_source(lambda: [GaugeMetricFamily("apicache_store_entries", "Entries.", value=entries)])
    m.add_source(lambda: [GaugeMetricFamily("apicache_events_lag_seconds", "Lag.", value=entries / 10)])
    m.add_source(lambda: [CounterMetricFamily("apicache_store_evictions", "Evictions.", value=entries * 2)])
    return m


def test_merged_snapshots_sum_counters_and_histograms_and_label_gauges():
    a, b = _worker_metrics(3, 10, 0.02), _worker_metrics(4, 20, 7.0)
    # through JSON, as the control link carries them
    snapshots = [(1, json.loads(json.dumps(b.snapshot()))), (0, json.loads(json.dumps(a.snapshot())))]
    s = parsed(merge_snapshots(snapshots))
    assert s[("apicache_requests_total", (("cache", "HIT"), ("route", "object"), ("status", "200")))] == 7
    assert s[("apicache_tenant_hits_total", (("tenant", "t1"),))] == 7
    assert s[("apicache_store_evictions_total", ())] == 60
    assert s[("apicache_upstream_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("apicache_upstream_latency_seconds_bucket", (("le", "+Inf"),))] == 2
    assert s[("apicache_upstream_latency_seconds_count", ())] == 2
    assert s[("apicache_upstream_latency_seconds_sum", ())] == 7.02
    # gauges, lag included, are each worker's
    assert s[("apicache_store_entries", (("worker", "0"),))] == 10
    assert s[("apicache_store_entries", (("worker", "1"),))] == 20
    assert s[("apicache_events_lag_seconds", (("worker", "1"),))] == 2
    assert ("apicache_store_entries", ()) not in s
    assert s[("apicache_tenant_entries", (("tenant", "t1"), ("worker", "0")))] == 0
    assert s[("apicache_scrape_workers", ())] == 2


def test_a_single_process_scrape_is_its_own_exposition():
    m = _worker_metrics(2, 5, 0.1)
    assert m.scrape() == m.render()


def test_a_worker_scrape_merges_what_its_siblings_report():
    mine, theirs = _worker_metrics(2, 5, 0.1), _worker_metrics(5, 6, 0.1)
    mine.worker = 1
    mine.siblings = lambda: succeed([(0, theirs.snapshot())])
    d = mine.scrape()
    assert isinstance(d, Deferred)
    s = parsed(d.result)
    assert s[("apicache_requests_total", (("cache", "HIT"), ("route", "object"), ("status", "200")))] == 7
    assert s[("apicache_store_entries", (("worker", "1"),))] == 5


def test_a_query_is_answered_with_the_other_ends_report():
    clock = Clock()
    a, b, pump = linked(clock)
    b._report = lambda what: succeed({"asked": what, "n": [1, 2]})
    d = a.query("info", 5.0)
    pump.flush()
    assert d.result == {"asked": "info", "n": [1, 2]}


def test_the_supervisor_gathers_every_sibling_report_and_leaves_out_a_silent_one():
    reactor = MemoryReactorClock()
    supervisor = WorkerSupervisor(reactor, TCP4ServerEndpoint(reactor, 0), 3, ["twistd"], {}, 1.0)
    pumps = []
    workers = [_Worker(supervisor, i) for i in range(3)]
    for w in workers:
        # worker 2 never answers
        report = (lambda what, i=w.index: succeed({"worker": i, "what": what})) if w.index != 2 else (lambda what: Deferred())
        sup_end, worker_end, pump = linked(reactor)
        worker_end._report = report
        w.control = sup_end
        pumps.append(pump)
        supervisor.workers[w.index] = w
    d = supervisor._gather(workers[0], "siblings:info")
    for pump in pumps:
        pump.flush()
    assert not d.called
    reactor.advance(2.0)
    for pump in pumps:
        pump.flush()
    assert d.result == [[1, {"worker": 1, "what": "info"}]]


def test_a_worker_alone_when_its_supervisor_is_gone_reports_no_siblings():
    link = WorkerLink(MemoryReactorClock(), Clock(), -1, None, lambda: None)  # type: ignore[arg-type]
    assert link.siblings("metrics").result == []


# -- the real daemon with --workers 2 -----------------------------------------


def _object_requests(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "apicache_requests_total" and s.labels.get("route") == "object":
                total += s.value
    return total


@pytest.mark.integration
def test_every_worker_answers_the_same_summed_totals(make_daemon):
    d = make_daemon(extra_args=["--workers", "2"])
    # each request is a new connection: the kernel spreads them over the
    # workers; go on until both have served some
    served: dict[int, int] = {}
    sent = 0

    def both_served() -> bool:
        nonlocal served, sent
        assert d.get(PATH).status == 200
        sent += 1
        info = d.get("/").json()
        served = {w["worker"]: w["hits"] + w["misses"] for w in info["per_worker"] if w["hits"] + w["misses"]}
        return len(served) == 2 and sent >= 40

    wait_until(both_served, 60, 0, lambda: f"both workers to serve (one took every request: {served})")

    scraped_by: dict[int, int] = {}
    totals, infos = [], []

    def both_scraped() -> bool:
        info = d.get("/").json()
        infos.append(info)
        scraped_by[info["worker"]] = scraped_by.get(info["worker"], 0) + 1
        r = d.get("/metrics")
        assert r.status == 200
        text = r.body.decode()
        totals.append(_object_requests(text))
        # gauges stay per worker
        assert 'apicache_store_entries{worker="0"}' in text and 'apicache_store_entries{worker="1"}' in text
        assert "apicache_scrape_workers 2.0" in text
        return len(scraped_by) == 2 and len(totals) >= 10

    wait_until(both_scraped, 60, 0, lambda: f"ten scrapes from both workers: {scraped_by}")
    assert totals == [sent] * len(totals), "a scrape did not count every request exactly once"
    for info in infos:
        assert info["hits"] + info["misses"] == sent
        assert info["misses"] == 2  # each worker fetched once
        assert info["hit_ratio"] == info["hits"] / sent
        assert info["entries"] == 2 and info["entries"] == sum(w["entries"] for w in info["per_worker"])
        assert info["bytes"] == sum(w["bytes"] for w in info["per_worker"])
        assert [w["worker"] for w in info["per_worker"]] == [0, 1]
    assert set(scraped_by) == {0, 1}, "every answer came from one worker"
    assert d.stop() in (0, -15)
