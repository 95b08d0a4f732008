"""The service's Prometheus metrics, one registry per app.

A registry of its own (not prometheus_client's global one) lets a process build many apps, as
the tests do, without clashing metric names, and keeps ``/metrics`` to what this app counts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Request latency buckets in seconds: a forward pass on a CPU takes milliseconds to a second.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batch-size buckets: powers of two up to the largest batch a MicroBatcher forms by default.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Request counts and latency by route, batch sizes, index size and reloads."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, index_size: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_http_request_duration_seconds",
            "Time from request to the end of the response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "recsys_batch_size",
            "Recommendation queries scored together in one forward pass.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.index_items = Gauge(
            "recsys_index_items",
            "Items in the served run's item index (grows as items are added).",
            registry=self.registry,
        )
        self.index_items.set_function(index_size)
        self.reloads = Counter(
            "recsys_reloads",
            "Run reloads through /v1/admin/reload, by outcome (ok or failed).",
            ["outcome"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric above."""
        return generate_latest(self.registry)
