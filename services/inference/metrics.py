"""Prometheus metrics of generation, labelled by model id only (never by request, so series stay bounded).

Latencies are histograms in seconds: request duration (until the last token), time to first token
and inter-token latency (as the service hands tokens to the client). Running and queued requests
and the last decode step's batch size are read from each engine's stats when Prometheus scrapes,
so they are never stale. They live in the app's own registry beside `services.common.http_metrics`.
Readiness (`microgpt_ready`, as `/readyz`) is whether any model is loaded and serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.readiness import ReadinessCollector

if TYPE_CHECKING:
    from microgpt.serving.engine import EngineStats

PREFIX = "microgpt_inference"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _EngineCollector(Collector):
    """Running/queued requests and batch size of every loaded engine, read at scrape time."""

    def __init__(self, engines: Callable[[], Iterable[tuple[str, EngineStats]]]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(f"{PREFIX}_requests_running", "sequences decoding now", labels=["model"])
        queued = GaugeMetricFamily(
            f"{PREFIX}_requests_queued", "requests waiting for a slot", labels=["model"]
        )
        batch = GaugeMetricFamily(
            f"{PREFIX}_batch_size", "sequences in the last decode step", labels=["model"]
        )
        for model, stats in self.engines():
            running.add_metric([model], stats.running)
            queued.add_metric([model], stats.queued)
            batch.add_metric([model], stats.last_batch_size)
        yield from (running, queued, batch)


class InferenceMetrics:
    """The generation metrics of one app, registered in its registry."""

    def __init__(
        self,
        registry: prometheus_client.CollectorRegistry,
        engines: Callable[[], Iterable[tuple[str, EngineStats]]],
    ) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> prometheus_client.Histogram:
            return prometheus_client.Histogram(
                f"{PREFIX}_{name}", doc, ["model"], buckets=buckets, registry=registry
            )

        def counter(name: str, doc: str) -> prometheus_client.Counter:
            return prometheus_client.Counter(f"{PREFIX}_{name}", doc, ["model"], registry=registry)

        self.request_duration = histogram(
            "request_duration_seconds", "generation requests, from arrival to the last token", REQUEST_BUCKETS
        )
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "from submission to the first generated token", LATENCY_BUCKETS
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds", "between consecutive tokens of one sequence", TOKEN_BUCKETS
        )
        self.prompt_tokens = counter("prompt_tokens", "prompt tokens of admitted requests")
        self.generation_tokens = counter("generation_tokens", "generated tokens")
        self.model_load = histogram(
            "model_load_seconds", "pull, load, quantize and warm up one model", LOAD_BUCKETS
        )
        registry.register(_EngineCollector(engines))
        registry.register(ReadinessCollector("inference", {"models": lambda: any(True for _ in engines())}))
