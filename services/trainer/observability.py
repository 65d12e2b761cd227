"""The trainer's Prometheus metrics, computed from SQL and the broker at scrape time.

Job state is in SQL, written by workers on other hosts, so the API process does not count
events: each scrape reads the current figures. Labels are bounded (job state, kind,
preset; never a job id or a worker name): jobs by state, a histogram of finished jobs'
durations, tokens/s and loss of running jobs, the queue length, and worker heartbeats as
counts of live and stale workers plus the age of the freshest heartbeat.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.trainer.models import JOB_STATES
from services.trainer.repository import TrainerRepository

DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
log = logging.getLogger("microgpt.trainer")


class TrainerCollector(Collector):
    def __init__(self, repo: TrainerRepository, queue_length: Callable[[], int], lease_s: float) -> None:
        self.repo, self.queue_length, self.lease_s = repo, queue_length, lease_s

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        try:
            from_sql = list(self._from_database())
        except Exception:  # the database is down: `microgpt_ready` says so, the queue still helps
            log.warning("cannot read the jobs for /metrics", exc_info=True)
            from_sql = []
        yield from from_sql

        try:
            waiting = self.queue_length()
        except Exception:  # the broker is down: the other figures still help
            log.warning("cannot read the queue length", exc_info=True)
        else:
            queue = GaugeMetricFamily(
                "microgpt_trainer_queue_length", "Job messages waiting in the broker queue"
            )
            queue.add_metric([], waiting)
            yield queue

    def _from_database(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        counts = self.repo.counts_by_state()
        jobs = GaugeMetricFamily("microgpt_trainer_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs

        yield self._durations()

        tokens = GaugeMetricFamily(
            "microgpt_trainer_running_tokens_per_second",
            "Training throughput of running jobs, summed by kind and preset",
            labels=["kind", "preset"],
        )
        loss = GaugeMetricFamily(
            "microgpt_trainer_running_loss",
            "Mean latest training loss of running jobs",
            labels=["kind", "preset"],
        )
        by_label: dict[tuple[str, str], list[tuple[float | None, float | None]]] = defaultdict(list)
        for job in self.repo.running_jobs():
            by_label[(job.kind, job.preset or "")].append((job.tokens_per_s, job.loss))
        for labels, rows in sorted(by_label.items()):
            tokens.add_metric(list(labels), sum(t for t, _ in rows if t is not None))
            losses = [v for _, v in rows if v is not None]
            if losses:
                loss.add_metric(list(labels), sum(losses) / len(losses))
        yield tokens
        yield loss

        now = datetime.now(UTC)
        ages = [(now - w.heartbeat_at).total_seconds() for w in self.repo.workers()]
        workers = GaugeMetricFamily(
            "microgpt_trainer_workers", "Workers by heartbeat freshness", labels=["status"]
        )
        workers.add_metric(["alive"], sum(a <= self.lease_s for a in ages))
        workers.add_metric(["stale"], sum(a > self.lease_s for a in ages))
        yield workers
        if ages:
            freshest = GaugeMetricFamily(
                "microgpt_trainer_worker_heartbeat_age_seconds", "Seconds since the freshest worker heartbeat"
            )
            freshest.add_metric([], min(ages))
            yield freshest

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "microgpt_trainer_job_duration_seconds",
            "Wall time of finished jobs, first start to end",
            labels=["kind"],
        )
        by_kind: dict[str, list[float]] = defaultdict(list)
        for kind, seconds in self.repo.durations():
            by_kind[kind].append(seconds)
        for kind, values in sorted(by_kind.items()):
            buckets = [(str(b), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            family.add_metric([kind], buckets, sum(values))
        return family
