"""`TrainerClient`: the trainer's job API as typed Python calls (the CLI's `jobs` and the dashboard use it).

client = TrainerClient.from_settings(get_settings())
job = client.submit({"kind": "train", "preset": "micro", "dataset": "names"})
for event, data in client.events(job.id): ...
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from microgpt.clients.http import ServiceClient, ServiceUnavailable, error_of

if TYPE_CHECKING:
    from microgpt.settings import Settings

TERMINAL = ("succeeded", "failed", "cancelled")
KINDS = ("train", "finetune", "sft", "evaluate", "quantize", "export")


class Job(BaseModel):
    """A job as `GET /jobs/{id}` describes it (unknown fields are kept, so `show` prints them all)."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    state: str
    spec: dict[str, Any] = {}
    preset: str | None = None
    output_model: str | None = None
    base_model: str | None = None
    dataset: str | None = None
    step: int = 0
    total_steps: int | None = None
    progress: float | None = None
    eta_seconds: float | None = None
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    cancel_requested: bool = False
    registry_version: str | None = None
    best_version: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


class MetricPoint(BaseModel):
    step: int
    kind: str  # "train" (loss, lr, tokens_per_s, ...) or "eval" (val_loss, ...)
    values: dict[str, float]


class LogLine(BaseModel):
    id: int
    at: datetime
    level: str
    message: str


class Dataset(BaseModel):
    id: str
    name: str
    filename: str
    format: str
    size: int
    sha256: str
    created_at: datetime


class TrainerClient(ServiceClient):
    service = "trainer"

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainerClient:
        """The trainer at `MICROGPT_TRAINER_URL`, with the first `MICROGPT_API_KEY` key."""
        return cls(settings.trainer_url, settings.client_api_key())

    def submit(self, spec: dict[str, Any]) -> Job:
        """Validate and enqueue a JobSpec; a bad field is a 422 `ServiceError` naming it."""
        return Job.model_validate(self.request("POST", "/jobs", json=spec))

    def list_jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and how many match in all."""
        filters = {"state": state, "kind": kind, "model": model}
        params = {k: v for k, v in filters.items() if v} | {"limit": limit, "offset": offset}
        page = self.request("GET", "/jobs", params=params)
        return [Job.model_validate(j) for j in page["data"]], int(page["count"])

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self.request("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled now; running: the worker stops at its next step boundary."""
        return Job.model_validate(self.request("POST", f"/jobs/{job_id}/cancel"))

    def metrics(self, job_id: str, since: int | None = None, limit: int = 100_000) -> list[MetricPoint]:
        """The job's metric points after step `since` (all of them without), oldest first."""
        params: dict[str, Any] = {"limit": limit} | ({"since": since} if since is not None else {})
        data = self.request("GET", f"/jobs/{job_id}/metrics", params=params)["data"]
        return [MetricPoint.model_validate(p) for p in data]

    def logs(self, job_id: str, after: int = 0, limit: int = 1000) -> list[LogLine]:
        data = self.request("GET", f"/jobs/{job_id}/logs", params={"after": after, "limit": limit})["data"]
        return [LogLine.model_validate(line) for line in data]

    def datasets(self) -> list[Dataset]:
        return [Dataset.model_validate(d) for d in self.request("GET", "/datasets")["data"]]

    def upload_dataset(self, name: str, content: bytes | Iterable[bytes], fmt: str = "text") -> Dataset:
        """Upload a text (one document per line), JSONL (`{"text": ...}` per line) or messages
        (`{"messages": [...]}` per line, conversations for sft jobs) data set."""
        body = self.request("POST", "/datasets", params={"name": name, "format": fmt}, content=content)
        return Dataset.model_validate(body)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) pairs of the job's Server-Sent Events stream, until it ends."""
        import httpx

        try:
            with self.http.stream("GET", f"/jobs/{job_id}/events", timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(self.service, response)
                event, data = "message", list[str]()
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event, json.loads("\n".join(data))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except httpx.TransportError as e:
            raise ServiceUnavailable(
                self.service, self.base_url, f"the event stream of {job_id} broke: {e}"
            ) from None
