"""
Metrics: plain counters bumped on the hot path, turned into Prometheus
families only when ``/metrics`` is scraped.

With ``--workers N`` each worker's families travel as a L{Snapshot} (plain
JSON) and L{merge_snapshots} makes one exposition of them: counters and
histograms summed, gauges kept per worker with a ``worker`` label.

A leaf module: components hand it callables that read their own counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred

__all__ = [
    "Metrics",
    "LatencyHistogram",
    "CONTENT_TYPE",
    "OTHER_TENANTS",
    "cache_families",
    "store_families",
    "tag_families",
    "auth_families",
    "client_families",
    "Snapshot",
    "merge_snapshots",
    "SUMMED_TYPES",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Source = Callable[[], Iterable[Metric]]

#: The ``tenant`` label of every tenant outside the top ones.
OTHER_TENANTS = "other"
#: Cache results that count as a tenant's hit (REVALIDATED: the body came from
#: the cache, only a 304 from the upstream); MISS and BYPASS are misses.
_HITS = frozenset({"HIT", "STALE", "REVALIDATED"})
_MISSES = frozenset({"MISS", "BYPASS"})

#: Upstream latency buckets, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """
    A histogram kept as plain bucket counts, turned into a Prometheus
    family at scrape time.
    """

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        #: one count per bound, then one for above the last bound
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """
        Count one observation.
        """
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        """
        Return the Prometheus histogram family of the counts so far.
        """
        buckets = []
        total = 0
        for bound, n in zip(self.bounds, self.counts[:-1], strict=True):
            total += n
            buckets.append((repr(float(bound)), total))
        total += self.counts[-1]
        buckets.append(("+Inf", total))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


#: One process's metric families as plain JSON: ``[name, type,
#: documentation, [[sample name, labels, value], ...]]`` per family.
Snapshot = list[list[Any]]

#: Families summed over workers; every other type (gauges: sizes, lag,
#: readiness) is kept per worker with a ``worker`` label.
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})


class Metrics(Collector):
    """
    Request counters and other components' sources, collected at scrape time.

    @ivar siblings: with ``--workers N``, returns a Deferred firing with the
        other workers' (index, L{Snapshot}) pairs: L{scrape} then answers
        for every worker (see L{merge_snapshots}); C{None} in a single
        process.
    @ivar worker: this worker's index with ``--workers N``.
    """

    siblings: Callable[[], Deferred[list[tuple[int, Snapshot]]]] | None = None
    worker: int = 0

    def __init__(self, tenant_labels: int = 20, tenants_tracked: int = 10000) -> None:
        #: (route type, status, cache result) -> count
        self.requests: dict[tuple[str, int, str], int] = {}
        #: tenant -> [hits, misses]; past ``tenants_tracked`` tenants, new
        #: ones are counted under L{OTHER_TENANTS}
        self.tenants: dict[str, list[int]] = {}
        self.tenant_labels = tenant_labels
        self.tenants_tracked = tenants_tracked
        self.upstream_latency = LatencyHistogram()
        #: kind of failure ("timeout", "unreachable", "overloaded") -> count
        self.upstream_errors: dict[str, int] = {}
        self._tenant_entries: Callable[[], Mapping[str, int]] = dict
        self._sources: list[Source] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def count_request(self, route: str, status: int, cache: str, tenant: str = "-") -> None:
        """
        Count one answered request, and ``tenant``'s hit or miss.
        """
        k = (route, status, cache)
        self.requests[k] = self.requests.get(k, 0) + 1
        if cache in _HITS:
            hit = 0
        elif cache in _MISSES:
            hit = 1
        else:
            return
        t = self.tenants.get(tenant)
        if t is None:
            if len(self.tenants) >= self.tenants_tracked:
                tenant = OTHER_TENANTS
                t = self.tenants.get(tenant)
            if t is None:
                t = self.tenants[tenant] = [0, 0]
        t[hit] += 1

    def observe_upstream(self, seconds: float) -> None:
        """
        Count an upstream answer that took ``seconds``.
        """
        self.upstream_latency.observe(seconds)

    def count_upstream_error(self, kind: str) -> None:
        """
        Count an upstream fetch that failed (``kind``: timeout, unreachable,
        overloaded).
        """
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def tenant_entries(self, read: Callable[[], Mapping[str, int]]) -> None:
        """
        Set the callable returning entries held per tenant, read at scrape
        time.
        """
        self._tenant_entries = read

    def add_source(self, source: Source) -> None:
        """
        Add a callable returning metric families, called at each scrape.
        """
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "apicache_requests",
            "Requests answered, by route type, status and cache result.",
            labels=["route", "status", "cache"],
        )
        for (route, status, cache), n in list(self.requests.items()):
            requests.add_metric([route, str(status), cache], n)
        yield requests
        yield self.upstream_latency.family(
            "apicache_upstream_latency_seconds", "Time to a complete upstream answer."
        )
        errors = CounterMetricFamily(
            "apicache_upstream_errors", "Upstream fetches without an answer, by kind.", labels=["kind"]
        )
        for kind, n in sorted(self.upstream_errors.items()):
            errors.add_metric([kind], n)
        yield errors
        hits, misses = self.totals()
        yield GaugeMetricFamily(
            "apicache_hit_ratio",
            "Hits (fresh, stale or revalidated) over hits and misses since start (0 before any).",
            value=hits / (hits + misses) if hits + misses else 0.0,
        )
        yield from self._tenant_families()
        for source in self._sources:
            yield from source()

    def _tenant_families(self) -> Iterator[Metric]:
        entries = self._tenant_entries()
        counts = self.tenants
        names = set(counts) | set(entries)
        names.discard(OTHER_TENANTS)

        def activity(t: str) -> tuple[int, str]:
            c = counts.get(t, (0, 0))
            return (c[0] + c[1] + entries.get(t, 0), t)

        top = sorted(names, key=activity, reverse=True)[: self.tenant_labels]
        shown = set(top)
        hits = CounterMetricFamily(
            "apicache_tenant_hits", "Hits (fresh or stale) per tenant: the busiest ones, then 'other'.", labels=["tenant"]
        )
        misses = CounterMetricFamily(
            "apicache_tenant_misses", "Misses per tenant: the busiest ones, then 'other'.", labels=["tenant"]
        )
        held = GaugeMetricFamily(
            "apicache_tenant_entries", "Entries held per tenant: the busiest ones, then 'other'.", labels=["tenant"]
        )
        other = [0, 0, 0]
        for t in names | {OTHER_TENANTS}:
            c = counts.get(t, (0, 0))
            e = entries.get(t, 0)
            if t in shown:
                hits.add_metric([t], c[0])
                misses.add_metric([t], c[1])
                held.add_metric([t], e)
            else:
                other[0] += c[0]
                other[1] += c[1]
                other[2] += e
        if len(names) > len(shown) or OTHER_TENANTS in counts or OTHER_TENANTS in entries:
            hits.add_metric([OTHER_TENANTS], other[0])
            misses.add_metric([OTHER_TENANTS], other[1])
            held.add_metric([OTHER_TENANTS], other[2])
        yield hits
        yield misses
        yield held

    def render(self) -> bytes:
        """
        Return the Prometheus text exposition of every metric of this
        process.
        """
        return generate_latest(self._registry)

    def totals(self) -> tuple[int, int]:
        """
        Return the hits (fresh or stale) and misses (``MISS``, ``BYPASS``)
        answered so far, every tenant together.
        """
        hits = misses = 0
        for h, m in list(self.tenants.values()):
            hits += h
            misses += m
        return hits, misses

    def snapshot(self) -> Snapshot:
        """
        Return this process's families as a L{Snapshot}.
        """
        return [
            [f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]] for f in self.collect()
        ]

    def scrape(self) -> bytes | Deferred[bytes]:
        """
        Return what ``/metrics`` answers: this process's exposition, or with
        L{siblings} set a Deferred firing with every worker's, merged.
        """
        siblings = self.siblings
        if siblings is None:
            return self.render()
        mine = self.snapshot()
        return siblings().addCallback(lambda others: merge_snapshots([(self.worker, mine), *others]))


def cache_families(
    store_stats: Mapping[str, int], cache_counters: Mapping[str, int], upstream_in_flight: int, tenant_caches: int
) -> Iterator[Metric]:
    """
    Return the store's, the cache registry's and the upstream client's
    families, from the figures they keep (read at scrape time by the
    wiring, which knows those parts: this module does not).

    @param store_stats: the store's ``stats()``: ``entries``, ``bytes``,
        ``evictions``.
    @param cache_counters: the registry's counters: ``fetches``,
        ``coalesced``, ``store_errors``, ``events_behind``.
    """
    yield GaugeMetricFamily("apicache_store_entries", "Entries held in this process.", value=store_stats["entries"])
    yield GaugeMetricFamily("apicache_store_bytes", "Bytes charged to the store's budget.", value=store_stats["bytes"])
    yield CounterMetricFamily(
        "apicache_store_evictions", "Entries evicted to stay within the budget.", value=store_stats["evictions"]
    )
    yield CounterMetricFamily("apicache_upstream_fetches", "Upstream fetches started.", value=cache_counters["fetches"])
    yield CounterMetricFamily(
        "apicache_coalesced_waiters", "Misses that waited for another caller's fetch.", value=cache_counters["coalesced"]
    )
    yield CounterMetricFamily(
        "apicache_store_errors", "Answers that could not be stored.", value=cache_counters["store_errors"]
    )
    yield GaugeMetricFamily("apicache_upstream_in_flight", "Upstream fetches running now.", value=upstream_in_flight)
    yield GaugeMetricFamily("apicache_tenant_caches", "(tenant, route type) caches held.", value=tenant_caches)
    yield CounterMetricFamily(
        "apicache_events_behind",
        "Requests for an entry held past its route's max_staleness (the events could not vouch for it): fetched again.",
        value=cache_counters.get("events_behind", 0),
    )


def tag_families(
    purges: Mapping[str, int], dropped: LatencyHistogram, index: Mapping[str, int]
) -> Iterator[Metric]:
    """
    Return the tag families (SPEC.md section 3, "Tags"): purges by source,
    entries dropped per purge, and the size of this process's tag index.

    @param purges: tag purges by source (``http``, ``event``, ``write``).
    @param dropped: entries dropped (or marked stale) per purge.
    @param index: the store's ``tag_stats()``: ``tags`` and ``pairs``.
    """
    family = CounterMetricFamily("apicache_tag_purges", "Tag purges, by where they came from.", labels=["source"])
    for source, n in sorted(purges.items()):
        family.add_metric([source], n)
    yield family
    yield dropped.family("apicache_tag_purge_entries", "Entries dropped or marked stale per tag purge.")
    yield GaugeMetricFamily("apicache_tag_index_tags", "Distinct tags in this process's tag index.", value=index["tags"])
    yield GaugeMetricFamily(
        "apicache_tag_index_pairs", "(entry, tag) pairs in this process's tag index.", value=index["pairs"]
    )
def auth_families(failures: Mapping[str, int], keys: int, refresh_failures: int) -> Iterator[Metric]:
    """
    Return the families of verified tenants (C{[auth]}, SPEC.md section 2):
    refused bearer tokens by reason, the keys of the JSON Web Key Set held
    now, and the reads of it that failed.

    @param failures: refusals by reason, every reason of the fixed set
        present (from 0), so the label values are bounded.
    """
    family = CounterMetricFamily(
        "apicache_auth_failures", "Bearer tokens refused (401 invalid_token), by reason.", labels=["reason"]
    )
    for reason, n in failures.items():
        family.add_metric([reason], n)
    yield family
    yield GaugeMetricFamily("apicache_jwks_keys", "Signature keys of the JSON Web Key Set held now.", value=keys)
    yield CounterMetricFamily(
        "apicache_jwks_refresh_failures", "Reads of the JSON Web Key Set that failed.", value=refresh_failures
    )


def client_families(sizes: Mapping[int, tuple[int, int]], name: Callable[[int], str]) -> Iterator[Metric]:
    """
    Return the bytes and entries each client holds in the memory store (or
    the in-process tier), C{store.fair_share = "client"}.

    @param sizes: ``(bytes, entries)`` by client number.
    @param name: a client's label: its api-key's fingerprint, never the key
        (the configured keys bound the label values).
    """
    held = GaugeMetricFamily("apicache_store_client_bytes", "Bytes held per client (api-key fingerprint).", labels=["client"])
    entries = GaugeMetricFamily("apicache_store_client_entries", "Entries held per client (api-key fingerprint).", labels=["client"])
    for client, (n_bytes, n_entries) in sorted(sizes.items()):
        held.add_metric([name(client)], n_bytes)
        entries.add_metric([name(client)], n_entries)
    yield held
    yield entries


def store_families(detailed: Mapping[str, int], top: Sequence[tuple[str, int, int]]) -> Iterator[Metric]:
    """
    Return the memory store's (or the in-process tier's) eviction counts by
    reason and the bytes and entries of its largest tenants: ``top`` holds
    at most ten, so the ``tenant`` label stays bounded.

    @param detailed: the store's ``detailed_stats()``.
    @param top: the store's ``top_tenants(10)``: ``(tenant, bytes, entries)``.
    """
    by_reason = CounterMetricFamily(
        "apicache_store_evictions_by_reason",
        "Entries evicted, by reason: expiry, fair_share, tenant_cap, policy.",
        labels=["reason"],
    )
    for name, value in sorted(detailed.items()):
        if name.startswith("evictions_"):
            by_reason.add_metric([name.removeprefix("evictions_")], value)
    yield by_reason
    yield GaugeMetricFamily("apicache_store_tenants", "Tenants holding entries in this process.", value=detailed.get("tenants", 0))
    held_bytes = GaugeMetricFamily("apicache_store_tenant_bytes", "Bytes held by the ten largest tenants.", labels=["tenant"])
    held_entries = GaugeMetricFamily(
        "apicache_store_tenant_entries", "Entries held by the ten largest tenants (by bytes).", labels=["tenant"]
    )
    for tenant, nbytes, entries in top:
        held_bytes.add_metric([tenant], nbytes)
        held_entries.add_metric([tenant], entries)
    yield held_bytes
    yield held_entries


def merge_snapshots(snapshots: Sequence[tuple[int, Snapshot]]) -> bytes:
    """
    Return one Prometheus text exposition of several workers' snapshots:
    the samples of counters and histograms summed (same name, same
    labels), every other family's samples kept with a ``worker`` label,
    and ``apicache_scrape_workers``, the number of workers it covers.

    @param snapshots: (worker index, L{Snapshot}) pairs.
    """
    families: dict[str, Metric] = {}
    summed: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, snapshot in sorted(snapshots, key=lambda pair: pair[0]):
        for name, type_, doc, samples in snapshot:
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(name, doc, type_)
            if type_ in SUMMED_TYPES:
                sums = summed.setdefault(name, {})
                for sample, labels, value in samples:
                    k = (sample, tuple(sorted(labels.items())))
                    sums[k] = sums.get(k, 0) + value
            else:
                label = str(worker)
                for sample, labels, value in samples:
                    family.add_sample(sample, {**labels, "worker": label}, value)
    for name, sums in summed.items():
        for (sample, labels), value in sums.items():
            families[name].add_sample(sample, dict(labels), value)
    families["apicache_scrape_workers"] = GaugeMetricFamily(
        "apicache_scrape_workers", "Workers whose figures this scrape covers.", value=len(snapshots)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    """Families made already, collected as they are."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
