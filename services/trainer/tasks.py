"""The Celery task `run_job(job_id)` and the per-process state of a worker (SQL, store, registry, heartbeat).

The task is a thin shell over `JobRunner.run`: it turns SIGTERM into the runner's
shutdown event (the loop checkpoints at the next step boundary) and the runner's outcome
into Celery's vocabulary: `requeue` rejects the message back onto the queue (acks_late
keeps it ours until then), `busy` (another live worker holds the job) retries after one
lease, so a duplicate delivery keeps watching a job in case its worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from microgpt.settings import Settings
from services.trainer.celery_app import RUN_JOB
from services.trainer.runner import JobRunner
from services.trainer.worker_metrics import WorkerMetrics

JOB_ID = re.compile(r"[0-9a-f]{16}")
log = logging.getLogger("microgpt.trainer")


class WorkerState:
    """A worker process's connections, made on first use (never at import), and its heartbeat."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.current_job: str | None = None
        self.metrics = WorkerMetrics()
        self._runner: JobRunner | None = None
        self._beating = threading.Event()
        self._lock = threading.Lock()

    def runner(self) -> JobRunner:
        with self._lock:
            if self._runner is None:
                from sqlalchemy.orm import sessionmaker

                from microgpt.registry import RegistryClient
                from microgpt.storage import object_store_from_settings
                from services.common.database import create_db_engine, wait_for_database
                from services.trainer.repository import TrainerRepository

                engine = create_db_engine(self.settings.resolved_database_url())
                wait_for_database(engine)
                repo = TrainerRepository(sessionmaker(engine, expire_on_commit=False))
                self._runner = JobRunner(
                    self.settings,
                    repo,
                    object_store_from_settings(self.settings),
                    RegistryClient.from_settings(self.settings),
                    self.name,
                    on_job=self._set_job,
                    on_point=self.metrics.point,
                )
            return self._runner

    def _set_job(self, job_id: str | None) -> None:
        self.current_job = job_id
        self.metrics.job_changed(job_id)
        if job_id is not None:
            self.beat()

    def beat(self) -> None:
        try:
            self.runner().repo.worker_heartbeat(self.name, self.current_job)
        except Exception:  # a missed beat is retried; it must never kill the worker
            log.warning("heartbeat failed", exc_info=True)
            self.metrics.heartbeat(ok=False)
        else:
            self.metrics.heartbeat(ok=True)

    def serve_metrics(self, offset: int) -> None:
        """Serve this process's metrics if an address is configured (see services.trainer.worker_metrics)."""
        if self.settings.worker_metrics_address:
            self.metrics.serve(self.settings.worker_metrics_address, offset)

    def start_heartbeat(self) -> None:
        """Beat every third of a lease from a daemon thread: a busy step never starves the lease."""
        if self._beating.is_set():
            return
        self._beating.set()
        interval = max(0.5, min(10.0, self.settings.job_lease_s / 3))

        def loop() -> None:
            while True:
                self.beat()
                time.sleep(interval)

        threading.Thread(target=loop, name="microgpt-heartbeat", daemon=True).start()

    def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                self._runner.repo.forget_worker(self.name)


@contextlib.contextmanager
def sigterm_sets(event: threading.Event) -> Iterator[None]:
    """While the block runs, SIGTERM sets `event` and then does what it did before (Celery's warm
    shutdown: finish the task, then exit). Outside the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: Any) -> None:
        event.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register_tasks(app: Celery, settings: Settings) -> WorkerState:
    """Add `run_job` to `app`; return the worker state the task uses."""
    from celery import signals

    state = WorkerState(settings)

    @app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def run_job(self: Any, job_id: str) -> str:
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            log.error("refusing a task for the malformed job id %r", job_id)
            return "skipped"
        state.start_heartbeat()
        shutdown = threading.Event()
        with sigterm_sets(shutdown):
            outcome = state.runner().run(job_id, shutdown)
        if outcome == "busy":
            log.info(
                "job %s runs on another live worker; checking again in %.0f s", job_id, settings.job_lease_s
            )
            raise self.retry(countdown=settings.job_lease_s, max_retries=None)
        if outcome == "requeue":
            raise Reject("the worker is shutting down; the job goes back to the queue", requeue=True)
        return outcome

    @signals.worker_ready.connect(weak=False)
    def _ready(**kwargs: Any) -> None:
        state.serve_metrics(0)
        state.start_heartbeat()

    @signals.worker_process_init.connect(weak=False)
    def _pool_process(**kwargs: Any) -> None:  # prefork: the jobs run here, so their metrics do too
        from billiard.process import current_process

        state.serve_metrics(1 + getattr(current_process(), "index", 0))

    @signals.worker_shutdown.connect(weak=False)
    def _gone(**kwargs: Any) -> None:
        state.stop()

    return state
