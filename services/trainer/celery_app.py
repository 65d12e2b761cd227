"""The Celery app of the trainer, configured for long jobs that must survive a dead worker.

    app = make_celery(settings)      # the API enqueues with it, workers consume with it

Celery's own guidance for long tasks is the configuration: a message is acknowledged
only after its task returns (`task_acks_late`), and a worker process that dies mid-task
gives its message back (`task_reject_on_worker_lost`); each worker reserves one message at
a time (`worker_prefetch_multiplier=1`), so a queued job is never stuck behind a running
one. On Redis an unacknowledged message is redelivered after the visibility timeout
(`broker_visibility_timeout_s`), which must be longer than the time between two
checkpoints: the job then resumes from its last checkpoint in object storage. JSON is the
only accepted serializer (no pickle). There is no result backend: job state lives in SQL.

The broker is Redis (`MICROGPT_BROKER_URL=redis://...`) in production and tests; the
embedded default is kombu's SQLAlchemy transport over SQLite (`sqla+sqlite:///...`).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from microgpt.settings import Settings

RUN_JOB = "microgpt.trainer.run_job"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`; nothing connects until a task is sent or a worker starts."""
    broker = settings.resolved_broker_url()
    if broker.startswith("sqla+sqlite:///"):
        from pathlib import Path

        Path(broker.removeprefix("sqla+sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    app = Celery("microgpt-trainer", broker=broker, set_as_current=False)
    visibility = int(settings.broker_visibility_timeout_s)
    transport_options: dict[str, object] = {}
    if broker.startswith(("redis://", "rediss://")):
        # Sweep for abandoned messages often enough that a short visibility timeout means something.
        sweep = max(1, min(10, visibility // 4))
        transport_options = {
            "visibility_timeout": visibility,
            "unacked_restore_interval": sweep,
            "unacked_restore_throttle": 1,
        }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        task_default_queue=settings.trainer_queue,
        task_queues=[Queue(settings.trainer_queue)],
        task_routes={RUN_JOB: {"queue": settings.trainer_queue}},
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=None if settings.job_time_limit_s is None else settings.job_time_limit_s * 0.95,
        enable_utc=True,
    )
    return app


def enqueue(app: Celery, job_id: str) -> None:
    """Send `run_job(job_id)`; the job's row must be committed first (the worker reads it)."""
    app.send_task(RUN_JOB, args=[job_id])


def queue_length(app: Celery, queue: str) -> int:
    """Messages waiting in `queue` (reserved and running ones are not counted)."""
    with app.connection_for_read() as conn:
        # Not passive: Redis has no key for an empty queue, and declaring ours is harmless.
        return int(conn.default_channel.queue_declare(queue=queue).message_count)
