"""
Metrics: plain counters rendered in the Prometheus text format at scrape time.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from apicache.ops.instrument import TimedUpstream
from apicache.ops.metrics import OTHER_TENANTS, Metrics
from apicache.store import MemoryStore
from apicache.testing import FakeUpstream
from apicache.upstream.client import Overloaded, UpstreamTimeout


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_by_route_status_and_cache():
    m = Metrics()
    m.count_request("object", 200, "MISS", "t1")
    m.count_request("object", 200, "HIT", "t1")
    m.count_request("object", 200, "HIT", "t1")
    s = samples(m)
    assert s[("apicache_requests_total", (("cache", "HIT"), ("route", "object"), ("status", "200")))] == 2
    assert s[("apicache_tenant_hits_total", (("tenant", "t1"),))] == 2
    assert s[("apicache_tenant_misses_total", (("tenant", "t1"),))] == 1


def test_stale_counts_as_hit_and_bypass_as_miss():
    m = Metrics()
    m.count_request("object", 200, "STALE", "t1")
    m.count_request("object", 200, "BYPASS", "t1")
    m.count_request("-", 404, "-", "t1")
    s = samples(m)
    assert s[("apicache_tenant_hits_total", (("tenant", "t1"),))] == 1
    assert s[("apicache_tenant_misses_total", (("tenant", "t1"),))] == 1


def test_tenant_labels_are_capped_with_other():
    m = Metrics(tenant_labels=2)
    for i, n in enumerate([5, 4, 3, 2, 1]):
        for _ in range(n):
            m.count_request("object", 200, "HIT", f"t{i}")
    s = samples(m)
    tenants = {dict(k[1])["tenant"] for k in s if k[0] == "apicache_tenant_hits_total"}
    assert tenants == {"t0", "t1", OTHER_TENANTS}
    assert s[("apicache_tenant_hits_total", (("tenant", OTHER_TENANTS),))] == 3 + 2 + 1


def test_tracked_tenants_are_bounded():
    m = Metrics(tenants_tracked=3)
    for i in range(10):
        m.count_request("object", 200, "MISS", f"t{i}")
    assert len(m.tenants) <= 4
    assert sum(h + mi for h, mi in m.tenants.values()) == 10


def test_a_tenant_called_other_is_not_a_duplicate_label():
    m = Metrics(tenant_labels=1)
    m.count_request("object", 200, "HIT", "other")
    m.count_request("object", 200, "HIT", "a")
    m.count_request("object", 200, "HIT", "a")
    s = samples(m)
    assert s[("apicache_tenant_hits_total", (("tenant", "a"),))] == 2
    assert s[("apicache_tenant_hits_total", (("tenant", "other"),))] == 1


def test_tenant_entries_come_from_the_store():
    from apicache.cache.keys import CacheKey
    from apicache.store.interface import CachedResponse

    store = MemoryStore(1 << 20)
    for tenant, ident in [("a", "1"), ("a", "2"), ("b", "1")]:
        store.put_now(CacheKey(tenant, "object", (ident,), "v"), CachedResponse(200, (), b"x", 0, 10, 10), 0)
    m = Metrics()
    m.tenant_entries(store.tenant_entries)
    s = samples(m)
    assert s[("apicache_tenant_entries", (("tenant", "a"),))] == 2
    assert s[("apicache_tenant_entries", (("tenant", "b"),))] == 1


def test_upstream_latency_lands_in_its_bucket():
    clock = Clock()
    upstream = FakeUpstream()
    m = Metrics()
    timed = TimedUpstream(upstream, m, clock)
    result = timed.fetch("/x", [], tenant="acme")
    clock.advance(0.03)
    upstream.pending[0].respond(200, b"", [])
    assert result.called
    s = samples(m)
    assert s[("apicache_upstream_latency_seconds_bucket", (("le", "0.025"),))] == 0
    assert s[("apicache_upstream_latency_seconds_bucket", (("le", "0.05"),))] == 1
    assert s[("apicache_upstream_latency_seconds_bucket", (("le", "+Inf"),))] == 1
    assert s[("apicache_upstream_latency_seconds_sum", ())] == 0.03


def test_upstream_failures_are_counted_by_kind():
    clock = Clock()
    m = Metrics()
    upstream = FakeUpstream()
    TimedUpstream(upstream, m, clock).fetch("/x", [], tenant="acme").addErrback(lambda f: None)
    upstream.pending[0].fail(UpstreamTimeout("slow"))
    full = FakeUpstream(max_in_flight=0)
    TimedUpstream(full, m, clock).fetch("/x", [], tenant="acme").addErrback(lambda f: f.trap(Overloaded))
    s = samples(m)
    assert s[("apicache_upstream_errors_total", (("kind", "timeout"),))] == 1
    assert s[("apicache_upstream_errors_total", (("kind", "overloaded"),))] == 1


def test_other_components_add_sources():
    from prometheus_client.core import CounterMetricFamily

    m = Metrics()
    m.add_source(lambda: [CounterMetricFamily("apicache_events_received", "Events.", value=7)])
    assert samples(m)[("apicache_events_received_total", ())] == 7


def test_cache_families_read_the_store_registry_and_upstream():
    from apicache.ops.metrics import cache_families

    m = Metrics()
    m.add_source(
        lambda: cache_families(
            {"entries": 3, "bytes": 300, "evictions": 1},
            {"fetches": 5, "coalesced": 2, "store_errors": 0},
            upstream_in_flight=4,
            tenant_caches=6,
        )
    )
    s = samples(m)
    assert s[("apicache_store_entries", ())] == 3
    assert s[("apicache_store_bytes", ())] == 300
    assert s[("apicache_store_evictions_total", ())] == 1
    assert s[("apicache_upstream_fetches_total", ())] == 5
    assert s[("apicache_coalesced_waiters_total", ())] == 2
    assert s[("apicache_store_errors_total", ())] == 0
    assert s[("apicache_upstream_in_flight", ())] == 4
    assert s[("apicache_tenant_caches", ())] == 6


def test_store_families_count_evictions_by_reason_and_the_largest_tenants_only():
    from apicache.ops.metrics import store_families

    detailed = {"entries": 3, "bytes": 30, "evictions": 5, "tenants": 12, "evictions_expiry": 2, "evictions_fair_share": 3}
    top = [(f"t{i}", 100 - i, 1) for i in range(10)]
    families = {f.name: f for f in store_families(detailed, top)}
    reasons = {s.labels["reason"]: s.value for s in families["apicache_store_evictions_by_reason"].samples}
    assert reasons == {"expiry": 2, "fair_share": 3}
    assert len(families["apicache_store_tenant_bytes"].samples) == 10
    assert families["apicache_store_tenants"].samples[0].value == 12


def test_the_hit_ratio_is_a_gauge():
    m = Metrics()
    assert samples(m)[("apicache_hit_ratio", ())] == 0.0
    m.count_request("object", 200, "HIT", "acme")
    m.count_request("object", 200, "HIT", "acme")
    m.count_request("object", 200, "HIT", "acme")
    m.count_request("object", 200, "MISS", "acme")
    assert samples(m)[("apicache_hit_ratio", ())] == 0.75
