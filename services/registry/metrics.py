"""The registry's own Prometheus metrics, beside the request metrics of services.common.http_metrics.

Artifact bytes are counters bumped as chunks pass; versions by status is read from the
database at scrape time (a custom collector), so it is right after a restart and with
several registry processes behind one database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.registry.repository import Repository

log = logging.getLogger(__name__)
STATUSES = ("pending", "ready", "failed")


class _VersionsByStatus(Collector):
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "microgpt_registry_versions", "model versions by status", labels=["status"]
        )
        try:
            counts = self.repo.version_counts()
        except Exception:  # a scrape must not fail because the database blinked
            log.warning("could not count versions for /metrics", exc_info=True)
            return
        for status in STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


class RegistryMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry, repo: Repository) -> None:
        self.bytes_in = prometheus_client.Counter(
            "microgpt_registry_artifact_bytes_in", "artifact bytes received", registry=registry
        )
        self.bytes_out = prometheus_client.Counter(
            "microgpt_registry_artifact_bytes_out", "artifact bytes sent", registry=registry
        )
        registry.register(_VersionsByStatus(repo))
