"""Structured logs: one JSON object per line, with the job id on every line logged while a job runs.

The job id travels in a context variable set by the task (`job_context`), so library code
that logs through the standard `logging` module gets it without knowing about jobs. Lines
a user should see in `GET /jobs/{id}/logs` go through `JobLogger`, which writes them to
SQL as well.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

from services.trainer.repository import TrainerRepository

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("microgpt_job_id", default=None)
log = logging.getLogger("microgpt.trainer")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = current_job.get()
        if job_id is not None:
            line["job_id"] = job_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the whole process (the entry points call this, never an import)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per registry request is noise


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JobLogger:
    """Log lines of one job: to the process log (JSON, with job_id) and to the job's SQL log."""

    def __init__(self, repo: TrainerRepository, job_id: str) -> None:
        self.repo, self.job_id = repo, job_id

    def __call__(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, message)
        self.repo.add_log(self.job_id, logging.getLevelName(level).lower(), message)
