"""A training worker's own Prometheus metrics, served over HTTP by the process that runs the jobs.

The trainer API exports what SQL knows (jobs by state, the queue, heartbeat ages); this is
what only the worker sees as it happens: whether it is running a job, its heartbeats, and
the running job's throughput, loss and step. Labels stay bounded: the per-job gauges carry
only the current job's id and are cleared when it ends, so a process never exports more
than the one job it runs, however many it has run.

    MICROGPT_WORKER_METRICS_ADDRESS=0.0.0.0:9100 microgpt worker    # GET :9100/metrics

A solo-pool worker (the default: one job per process) serves on that port; with
`--concurrency N` the jobs run in pool processes, and process i serves on port+1+i.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import prometheus_client

PREFIX = "microgpt_worker"
log = logging.getLogger("microgpt.trainer")


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        self.jobs_running = prometheus_client.Gauge(
            f"{PREFIX}_jobs_running", "jobs this process is running now", registry=r
        )
        self.jobs_started = prometheus_client.Counter(
            f"{PREFIX}_jobs_started", "job attempts this process has started", registry=r
        )
        self.heartbeats = prometheus_client.Counter(
            f"{PREFIX}_heartbeats", "heartbeats written to the database, by result", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self.heartbeats.labels(result)
        self.last_heartbeat = prometheus_client.Gauge(
            f"{PREFIX}_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat written",
            registry=r,
        )
        self.tokens_per_second = prometheus_client.Gauge(
            f"{PREFIX}_job_tokens_per_second",
            "training throughput of the running job",
            ["job_id"],
            registry=r,
        )
        self.loss = prometheus_client.Gauge(
            f"{PREFIX}_job_loss",
            "latest loss of the running job, train or val",
            ["job_id", "split"],
            registry=r,
        )
        self.step = prometheus_client.Gauge(
            f"{PREFIX}_job_step", "latest step of the running job", ["job_id"], registry=r
        )
        self._job: str | None = None

    def serve(self, address: str, offset: int = 0) -> None:
        """Serve `GET /metrics` on `host:port+offset` from a daemon thread."""
        host, _, port = address.rpartition(":")
        prometheus_client.start_http_server(
            int(port) + offset, addr=host or "0.0.0.0", registry=self.registry
        )
        log.info("worker metrics on %s:%d", host or "0.0.0.0", int(port) + offset)

    def job_changed(self, job_id: str | None) -> None:
        """A job starts (its id) or ends (None): the previous job's series go."""
        for gauge in (self.tokens_per_second, self.loss, self.step):
            gauge.clear()
        self._job = job_id
        self.jobs_running.set(0 if job_id is None else 1)
        if job_id is not None:
            self.jobs_started.inc()

    def point(self, record: dict[str, Any]) -> None:
        """A training loop record: `{"kind": "train", "step", "loss", "tokens_per_s"}` or an eval's."""
        job = self._job
        if job is None:
            return
        if record.get("kind") == "train":
            self.step.labels(job).set(record["step"])
            self.loss.labels(job, "train").set(record["loss"])
            if record.get("tokens_per_s") is not None:
                self.tokens_per_second.labels(job).set(record["tokens_per_s"])
        elif record.get("kind") == "eval" and record.get("val_loss") is not None:
            self.loss.labels(job, "val").set(record["val_loss"])

    def heartbeat(self, ok: bool) -> None:
        self.heartbeats.labels("ok" if ok else "failed").inc()
        if ok:
            self.last_heartbeat.set(time.time())
