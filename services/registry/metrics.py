"""The registry's own Prometheus metrics, beside the request metrics of services.common.http_metrics.

Artifact bytes are counters bumped as chunks pass; versions by status is read from the
database at scrape time (a custom collector), so it is right after a restart and with
several registry processes behind one database. Storage errors are counted by wrapping the
object store (`MeteredStore`), so every call the routes, uploads and probes make is seen
without each call site catching: a missing object or a bad key is the caller's business,
anything else the store raises is an error of the store. Readiness (`microgpt_ready`)
runs the database and store checks of `/readyz` at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from microgpt.storage import CHUNK_BYTES, ObjectInfo, ObjectNotFound, ObjectStore, Readable
from services.common.readiness import ReadinessCollector
from services.registry.repository import Repository

log = logging.getLogger(__name__)
STATUSES = ("pending", "ready", "failed")
OPERATIONS = ("put", "get", "stat", "delete", "list", "move", "check", "cleanup")
T = TypeVar("T")


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


class _Source:
    """The body being stored: remembers whether it, not the store, raised (a client that went away)."""

    def __init__(self, source: Readable) -> None:
        self.source, self.failed = source, False

    def read(self, n: int = -1) -> bytes:
        try:
            return self.source.read(n)
        except BaseException:
            self.failed = True
            raise


class MeteredStore(ObjectStore):
    """`inner`, with every error of its own counted in `errors` by operation."""

    def __init__(self, inner: ObjectStore, errors: prometheus_client.Counter) -> None:
        self.inner, self.errors = inner, errors

    def __repr__(self) -> str:
        return repr(self.inner)

    def _call(self, operation: str, call: Callable[[], T], source: _Source | None = None) -> T:
        try:
            return call()
        except (ObjectNotFound, ValueError):  # a missing object, a bad key or a short body
            raise
        except Exception:
            if source is None or not source.failed:
                self.errors.labels(operation).inc()
            raise

    def put_stream(self, key: str, fileobj: Readable, size: int | None = None) -> tuple[int, str]:
        source = _Source(fileobj)
        return self._call("put", lambda: self.inner.put_stream(key, source, size), source)

    def get_stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        return self._each("get", self._call("get", lambda: self.inner.get_stream(key, chunk_size)))

    def _each(self, operation: str, items: Iterator[T]) -> Iterator[T]:
        """`items`, with an error raised while iterating counted too."""
        done = object()
        while (item := self._call(operation, lambda: next(items, done))) is not done:
            yield item  # type: ignore[misc]

    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", lambda: self.inner.stat(key))

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._each("list", iter(self.inner.list(prefix)))

    def move(self, src: str, dst: str) -> None:
        self._call("move", lambda: self.inner.move(src, dst))

    def check(self) -> None:
        self._call("check", self.inner.check)

    def remove_stale_partials(self, older_than_s: float) -> int:
        return self._call("cleanup", lambda: self.inner.remove_stale_partials(older_than_s))


class RegistryMetrics:
    def __init__(
        self, registry: prometheus_client.CollectorRegistry, repo: Repository, store: ObjectStore
    ) -> None:
        self.bytes_in = prometheus_client.Counter(
            "microgpt_registry_artifact_bytes_in", "artifact bytes received", registry=registry
        )
        self.bytes_out = prometheus_client.Counter(
            "microgpt_registry_artifact_bytes_out", "artifact bytes sent", registry=registry
        )
        registry.register(_VersionsByStatus(repo))
        errors = prometheus_client.Counter(
            "microgpt_registry_storage_errors",
            "object store calls that failed, by operation",
            ["operation"],
            registry=registry,
        )
        for operation in OPERATIONS:
            errors.labels(operation)
        self.store = MeteredStore(store, errors)
        checks = {"database": repo.ping, "object_store": self.store.check}
        registry.register(ReadinessCollector("registry", checks))
