"""
Metrics: plain counters bumped on the hot path, turned into Prometheus
families only when ``/metrics`` is scraped.

A leaf module: components hand it callables that read their own counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Source = Callable[[], Iterable[Metric]]


class Metrics(Collector):
    """
    Request counters and other components' sources, collected at scrape time.
    """

    def __init__(self) -> None:
        #: (route type, status, cache result) -> count
        self.requests: dict[tuple[str, int, str], int] = {}
        self._sources: list[Source] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def count_request(self, route: str, status: int, cache: str) -> None:
        """
        Count one answered request.
        """
        k = (route, status, cache)
        self.requests[k] = self.requests.get(k, 0) + 1

    def add_source(self, source: Source) -> None:
        """
        Add a callable returning metric families, called at each scrape.
        """
        self._sources.append(source)

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """
        Add a gauge whose value ``read()`` returns at scrape time.
        """

        def source() -> Iterator[Metric]:
            yield GaugeMetricFamily(name, doc, value=read())

        self.add_source(source)

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """
        Add a counter whose value ``read()`` returns at scrape time.
        """

        def source() -> Iterator[Metric]:
            yield CounterMetricFamily(name, doc, value=read())

        self.add_source(source)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "apicache_requests",
            "Requests answered, by route type, status and cache result.",
            labels=["route", "status", "cache"],
        )
        for (route, status, cache), n in list(self.requests.items()):
            requests.add_metric([route, str(status), cache], n)
        yield requests
        for source in self._sources:
            yield from source()

    def render(self) -> bytes:
        """
        Return the Prometheus text exposition of every metric.
        """
        return generate_latest(self._registry)
