"""The trainer's tables: jobs, their metric series and log lines, uploaded data sets, workers.

Job state lives here, not in Celery's result backend: the API, the CLI and every worker
read one row per job, so a redelivered task, a cancel request or a dashboard all see the
same truth. Every table is prefixed `trainer_` (the registry shares the database) and the
schema is created by the Alembic revisions in `migrations/`, never by `create_all`.
Timestamps are stored as UTC and always read back timezone-aware (SQLite drops the zone).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
JOB_KINDS = ("train", "finetune", "sft", "evaluate", "quantize", "export")
# format -> file suffix the data loader reads by (a messages file is JSONL of conversations)
DATASET_SUFFIXES = {"text": "txt", "jsonl": "jsonl", "messages": "jsonl"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A datetime stored as naive UTC and read back with tzinfo=UTC, on every backend."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class TrainerBase(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Job(TrainerBase):
    __tablename__ = "trainer_jobs"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16), index=True)
    state: Mapped[str] = mapped_column(sa.String(16), index=True, default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    preset: Mapped[str | None] = mapped_column(sa.String(64))
    output_model: Mapped[str | None] = mapped_column(sa.String(128), index=True)
    base_model: Mapped[str | None] = mapped_column(sa.String(160))  # the resolved "name/3"
    dataset: Mapped[str | None] = mapped_column(sa.String(128))
    dataset_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None] = mapped_column()
    loss: Mapped[float | None] = mapped_column()
    val_loss: Mapped[float | None] = mapped_column()
    tokens_per_s: Mapped[float | None] = mapped_column()
    checkpoint_step: Mapped[int | None] = mapped_column()  # the latest checkpoint in object storage
    resumed_from_step: Mapped[int | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(sa.String(255))  # the lease holder while running
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    registry_version: Mapped[str | None] = mapped_column(sa.String(160))  # "name/3", set once
    best_version: Mapped[str | None] = mapped_column(sa.String(160))
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobMetric(TrainerBase):
    """One point of a job's series: `kind` train (loss, lr, tokens_per_s), eval (val_loss) or result."""

    __tablename__ = "trainer_job_metrics"
    __table_args__ = (sa.UniqueConstraint("job_id", "kind", "step", name="uq_trainer_job_metrics_point"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("trainer_jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column()
    kind: Mapped[str] = mapped_column(sa.String(16))
    values: Mapped[dict[str, float]] = mapped_column(sa.JSON)


class JobLog(TrainerBase):
    __tablename__ = "trainer_job_logs"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("trainer_jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(sa.String(8))
    message: Mapped[str] = mapped_column(sa.Text)


class Dataset(TrainerBase):
    """An uploaded text or JSONL file, stored in the object store under `datasets/<id>/<filename>`."""

    __tablename__ = "trainer_datasets"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), index=True)
    filename: Mapped[str] = mapped_column(sa.String(255))
    format: Mapped[str] = mapped_column(sa.String(8))  # text | jsonl | messages
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    object_key: Mapped[str] = mapped_column(sa.String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Worker(TrainerBase):
    """A worker process's heartbeat, written every few seconds while it lives."""

    __tablename__ = "trainer_workers"

    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    current_job: Mapped[str | None] = mapped_column(sa.String(32))
