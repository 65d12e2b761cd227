"""Every SQL read and write of the trainer, in one place: the API and the workers call only this.

Each method is one short transaction. The ones that decide who runs a job are single
conditional UPDATEs (`claim`, `requeue`, `finish`), so two workers that receive the same
job (a redelivered message) cannot both run it: the row, not the broker, is the lock. A
claim is a lease renewed by the worker's heartbeat; a job whose worker stopped beating
for `lease_s` (killed) can be claimed by the next worker the message reaches.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeGuard

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from microgpt.errors import NotFound
from services.trainer.models import TERMINAL_STATES, Dataset, Job, JobLog, JobMetric, Worker, utcnow

Claim = Literal["claimed", "finished", "busy"]


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)


@dataclass(frozen=True)
class RunningJob:
    kind: str
    preset: str | None
    loss: float | None
    tokens_per_s: float | None


class TrainerRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # --- jobs -------------------------------------------------------------------------------

    def create_job(self, **fields: Any) -> Job:
        job = Job(id=new_id(), state="queued", step=0, attempts=0, cancel_requested=False, **fields)
        with self.sessions.begin() as s:
            s.add(job)
        return job

    def get_job(self, job_id: str) -> Job | None:
        with self.sessions() as s:
            return s.get(Job, job_id)

    def list_jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        query = sa.select(Job)
        if state is not None:
            query = query.where(Job.state == state)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if model is not None:
            query = query.where(sa.or_(Job.output_model == model, Job.base_model.startswith(f"{model}/")))
        with self.sessions() as s:
            count = s.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
            return list(rows), count

    def claim(self, job_id: str, worker: str, lease_s: float) -> Claim:
        """Take the job for `worker`: a queued one, or a running one whose lease ran out.

        NotFound when no job has that id (deleted after its task was queued)."""
        now = utcnow()
        with self.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound("job_not_found", f"no job {job_id}")
            if job.state in TERMINAL_STATES:
                return "finished"
            stale = now - timedelta(seconds=lease_s)
            taken = _rowcount(
                s.execute(
                    sa.update(Job)
                    .where(
                        Job.id == job_id,
                        sa.or_(
                            Job.state == "queued",
                            sa.and_(
                                Job.state == "running",
                                sa.or_(Job.worker == worker, Job.worker.is_(None), Job.heartbeat_at < stale),
                            ),
                        ),
                    )
                    .values(
                        state="running",
                        worker=worker,
                        heartbeat_at=now,
                        attempts=Job.attempts + 1,
                        started_at=sa.func.coalesce(Job.started_at, now),
                    )
                    .execution_options(synchronize_session=False)
                )
            )
            return "claimed" if taken else "busy"

    def heartbeat(self, job_id: str, worker: str) -> None:
        with self.sessions.begin() as s:
            s.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
                .values(heartbeat_at=utcnow())
            )

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(sa.update(Job).where(Job.id == job_id).values(**values))

    def finish(self, job_id: str, worker: str | None, state: str, **values: Any) -> bool:
        """Move a job this worker holds (or any, with worker None) to a terminal state, once."""
        assert state in TERMINAL_STATES
        where = [Job.id == job_id, Job.state.not_in(TERMINAL_STATES)]
        if worker is not None:
            where.append(Job.worker == worker)
        with self.sessions.begin() as s:
            done = _rowcount(
                s.execute(
                    sa.update(Job)
                    .where(*where)
                    .values(state=state, finished_at=utcnow(), worker=None, **values)
                )
            )
        return bool(done)

    def requeue(self, job_id: str, worker: str) -> None:
        """Give the job back (SIGTERM): queued again, free for the next worker."""
        with self.sessions.begin() as s:
            s.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.state == "running")
                .values(state="queued", worker=None, heartbeat_at=None)
            )

    def request_cancel(self, job_id: str, lease_s: float) -> Job | None:
        """Queued (or orphaned running) jobs are cancelled at once; a live running job is asked to stop."""
        now = utcnow()
        with self.sessions.begin() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                return None
            if job.state in TERMINAL_STATES:
                return job
            job.cancel_requested = True
            orphaned = job.heartbeat_at is None or job.heartbeat_at < now - timedelta(seconds=lease_s)
            if job.state == "queued" or orphaned:
                job.state, job.finished_at, job.worker = "cancelled", now, None
            return job

    def cancel_requested(self, job_id: str) -> bool:
        with self.sessions() as s:
            return bool(s.scalar(sa.select(Job.cancel_requested).where(Job.id == job_id)))

    # --- metrics and logs ---------------------------------------------------------------------

    def add_metrics(self, job_id: str, points: Sequence[dict[str, Any]]) -> None:
        """Append points `{"kind", "step", ...values}`; the job row gets the newest figures."""
        if not points:
            return
        latest: dict[str, Any] = {}
        for p in points:
            if p["kind"] == "train":
                latest.update(step=p["step"], loss=p["loss"], tokens_per_s=p.get("tokens_per_s"))
            elif p["kind"] == "eval":
                latest["val_loss"] = p["val_loss"]
        with self.sessions.begin() as s:
            s.execute(
                sa.insert(JobMetric),
                [
                    {
                        "job_id": job_id,
                        "kind": p["kind"],
                        "step": p["step"],
                        "values": {k: v for k, v in p.items() if k not in ("kind", "step")},
                    }
                    for p in points
                ],
            )
            if latest:
                s.execute(sa.update(Job).where(Job.id == job_id).values(**latest))

    def truncate_metrics(self, job_id: str, after_step: int) -> None:
        """Drop points past `after_step`: a resumed attempt redoes those steps."""
        with self.sessions.begin() as s:
            s.execute(sa.delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > after_step))

    def metrics(self, job_id: str, *, since: int = -1, limit: int = 10_000) -> list[JobMetric]:
        with self.sessions() as s:
            rows = s.scalars(
                sa.select(JobMetric)
                .where(JobMetric.job_id == job_id, JobMetric.step > since)
                .order_by(JobMetric.step, JobMetric.kind)
                .limit(limit)
            )
            return list(rows)

    def add_log(self, job_id: str, level: str, message: str) -> None:
        with self.sessions.begin() as s:
            s.add(JobLog(job_id=job_id, level=level, message=message))

    def logs(self, job_id: str, *, after_id: int = 0, limit: int = 1000) -> list[JobLog]:
        with self.sessions() as s:
            rows = s.scalars(
                sa.select(JobLog)
                .where(JobLog.job_id == job_id, JobLog.id > after_id)
                .order_by(JobLog.id)
                .limit(limit)
            )
            return list(rows)

    # --- data sets ----------------------------------------------------------------------------

    def add_dataset(self, dataset: Dataset) -> Dataset:
        with self.sessions.begin() as s:
            s.add(dataset)
        return dataset

    def find_dataset(self, ref: str) -> Dataset | None:
        """An uploaded data set by id, else the newest one with that name."""
        with self.sessions() as s:
            found = s.get(Dataset, ref)
            if found is not None:
                return found
            return s.scalars(
                sa.select(Dataset).where(Dataset.name == ref).order_by(Dataset.created_at.desc()).limit(1)
            ).first()

    def list_datasets(self) -> list[Dataset]:
        with self.sessions() as s:
            return list(s.scalars(sa.select(Dataset).order_by(Dataset.created_at.desc())))

    # --- workers and observability -----------------------------------------------------------

    def worker_heartbeat(self, name: str, current_job: str | None) -> None:
        now = utcnow()
        with self.sessions.begin() as s:
            worker = s.get(Worker, name)
            if worker is None:
                s.add(Worker(name=name, started_at=now, heartbeat_at=now, current_job=current_job))
            else:
                worker.heartbeat_at, worker.current_job = now, current_job
            if current_job is not None:
                s.execute(
                    sa.update(Job)
                    .where(Job.id == current_job, Job.worker == name, Job.state == "running")
                    .values(heartbeat_at=now)
                )

    def forget_worker(self, name: str) -> None:
        with self.sessions.begin() as s:
            s.execute(sa.delete(Worker).where(Worker.name == name))

    def workers(self) -> list[Worker]:
        with self.sessions() as s:
            return list(s.scalars(sa.select(Worker).order_by(Worker.name)))

    def counts_by_state(self) -> dict[str, int]:
        with self.sessions() as s:
            rows = s.execute(sa.select(Job.state, sa.func.count()).group_by(Job.state)).all()
            return {state: int(n) for state, n in rows}

    def running_jobs(self) -> list[RunningJob]:
        with self.sessions() as s:
            rows = s.execute(
                sa.select(Job.kind, Job.preset, Job.loss, Job.tokens_per_s).where(Job.state == "running")
            ).all()
            return [RunningJob(*row) for row in rows]

    def durations(self) -> Iterable[tuple[str, float]]:
        """(kind, seconds) of every finished job that started."""
        with self.sessions() as s:
            rows = s.execute(
                sa.select(Job.kind, Job.started_at, Job.finished_at).where(
                    Job.finished_at.is_not(None), Job.started_at.is_not(None)
                )
            ).all()
        return [
            (kind, (end - start).total_seconds())
            for kind, start, end in rows
            if _aware(end) and _aware(start)
        ]


def _rowcount(result: sa.Result[Any]) -> int:
    """Rows an UPDATE changed: its result is a CursorResult, which `Session.execute`'s type does not say."""
    assert isinstance(result, sa.CursorResult)
    return result.rowcount


def _aware(value: datetime | None) -> TypeGuard[datetime]:
    return value is not None and value.tzinfo is not None
