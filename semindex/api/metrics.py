"""Prometheus metrics of one app, in a registry of its own (two apps in one process never mix)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core import query_cache_stats

__all__ = ["CONTENT_TYPE", "Metrics"]

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "semindex_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "semindex_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.indexed = Counter(
            "semindex_documents_indexed",
            "Documents added or updated through the API, by collection.",
            ["collection"],
            registry=self.registry,
        )
        self.sizes = Gauge(
            "semindex_collection_documents",
            "Documents per collection (read when /metrics is scraped).",
            ["collection"],
            registry=self.registry,
        )

        self.live_recall = Gauge(
            "semindex_index_live_recall",
            "recall@10 of the ANN index on sampled real queries, checked exactly in the background.",
            ["collection"],
            registry=self.registry,
        )
        self.registry.register(_QueryCacheCollector())

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def documents_indexed(self, collection: str, n: int) -> None:
        if n > 0:
            self.indexed.labels(collection).inc(n)

    def render(self, sizes: Iterable[tuple[str, int]],
               live_recall: Iterable[tuple[str, float]] = ()) -> bytes:
        self.sizes.clear()
        for name, count in sizes:
            self.sizes.labels(name).set(count)
        self.live_recall.clear()
        for name, rec in live_recall:
            self.live_recall.labels(name).set(rec)
        return generate_latest(self.registry)


class _QueryCacheCollector(Collector):
    """The query-embedding cache's process-wide counters, read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        st = query_cache_stats()
        hits = CounterMetricFamily("semindex_query_cache_hits", "Query embeddings answered from the cache.")
        hits.add_metric([], st.hits)
        misses = CounterMetricFamily("semindex_query_cache_misses", "Query embeddings the model had to compute.")
        misses.add_metric([], st.misses)
        entries = GaugeMetricFamily("semindex_query_cache_entries", "Query embeddings held in the cache now.")
        entries.add_metric([], st.entries)
        size = GaugeMetricFamily("semindex_query_cache_max_entries", "Entries the cache keeps per model (0: off).")
        size.add_metric([], st.max_entries)
        yield from (hits, misses, entries, size)

