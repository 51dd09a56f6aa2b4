"""Prometheus metrics, served as text on `/metrics` of their own port.

With several workers each process writes its samples to a shared directory (prometheus_client's
multiprocess mode, set up by the supervisor through PROMETHEUS_MULTIPROC_DIR), and the port is
served by the supervisor, so one scrape covers every worker.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from ..runtime.runner import counted

if TYPE_CHECKING:
    from ..runtime.runner import ModelRunner

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class PrometheusMetrics:
    requests: Counter
    duration: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    in_flight: Gauge
    queue_wait: Histogram
    batch_duration: Histogram


@functools.cache
def prometheus_metrics() -> PrometheusMetrics:
    """The process's metric objects, created once (Prometheus refuses duplicates)."""
    return PrometheusMetrics(
        requests=Counter(
            "blazerpc_requests", "Model calls by method and final status", ["method", "status"]
        ),
        duration=Histogram(
            "blazerpc_request_duration_seconds",
            "Model call duration, from arrival to status",
            ["method"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_size=Histogram(
            "blazerpc_batch_size", "Requests per model call", ["model"], buckets=BATCH_BUCKETS
        ),
        queue_depth=Gauge(
            "blazerpc_queue_depth",
            "Requests waiting for a batch",
            ["model"],
            multiprocess_mode="livesum",
        ),
        in_flight=Gauge(
            "blazerpc_in_flight",
            "Model calls admitted and not yet answered: queued, running or streaming",
            ["model"],
            multiprocess_mode="livesum",
        ),
        queue_wait=Histogram(
            "blazerpc_queue_wait_seconds",
            "Time a request waited before its batch ran",
            ["model"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_duration=Histogram(
            "blazerpc_batch_duration_seconds",
            "Time in the model per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
        ),
    )


@dataclass(frozen=True)
class TransportMetrics:
    requests: Counter
    duration: Histogram


@functools.cache
def transport_metrics() -> TransportMetrics:
    """TransportMetricsMiddleware's two metrics, with 2.2.1's names and a transport label."""
    return TransportMetrics(
        requests=Counter(
            "blazerpc_transport_requests",
            "Model calls by method, status code and transport",
            ["method", "status", "transport"],
        ),
        duration=Histogram(
            "blazerpc_transport_request_duration_seconds",
            "Model call duration by transport",
            ["method", "transport"],
            buckets=LATENCY_BUCKETS,
        ),
    )


class BatchMetrics:
    """Feeds one model's batcher events into the Prometheus metrics."""

    def __init__(self, model: str) -> None:
        metrics = prometheus_metrics()
        self._depth = metrics.queue_depth.labels(model)
        self._size = metrics.batch_size.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._seconds = metrics.batch_duration.labels(model)

    def queued(self, depth: int) -> None:
        self._depth.set(depth)

    def batch(self, size: int, waits: list[float], seconds: float) -> None:
        self._size.observe(size)
        self._seconds.observe(seconds)
        for wait in waits:
            self._wait.observe(wait)


def count_in_flight(runner: ModelRunner) -> None:
    """Count `runner`'s calls in `blazerpc_in_flight`, the load signal an autoscaler reads:
    unlike CPU it rises with waiting calls too. Done once at start-up by wrapping the runner's
    entry point, so servers without metrics pay nothing."""
    gauge = prometheus_metrics().in_flight.labels(runner.entry.name)
    if runner.entry.streaming:
        runner.stream = counted(runner.stream, gauge.inc, gauge.dec)
        return
    predict = runner.predict

    async def counted_call(kwargs: dict[str, Any], timeout: float | None = None) -> Any:
        gauge.inc()
        try:
            return await predict(kwargs, timeout)
        finally:
            gauge.dec()

    runner.predict = counted_call


_serving: set[tuple[str, int]] = set()


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serve `/metrics` from a daemon thread: this process's metrics, or, in multiprocess
    mode, those of every worker. The metrics belong to the process, so an app started again
    in the same process keeps the endpoint it already has."""
    if (host, port) in _serving:
        return
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
    _serving.add((host, port))
