"""The job API: submit, list, inspect, follow and cancel jobs; upload data sets.

    POST /jobs                    a JobSpec, validated completely, then enqueued (201)
    GET  /jobs                    ?state= &kind= &model= &limit= &offset=
    GET  /jobs/{id}               state, step/total, ETA, latest metrics, error
    GET  /jobs/{id}/metrics       ?since=STEP: the series after STEP, for incremental polling
    GET  /jobs/{id}/logs          ?after=ID
    GET  /jobs/{id}/events        Server-Sent Events: `metric` per point, `job` on change, `end`
    POST /jobs/{id}/cancel        queued: cancelled now; running: stops at the next step boundary
    POST /datasets                ?name= &format=text|jsonl|messages, the raw file as the body (streamed)
    GET  /datasets

Routes that touch SQL or the registry are plain `def` (FastAPI runs them in its thread
pool); the event stream is async and polls SQL from the thread pool every half second.
Mutating routes need the bearer key when one is configured.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from microgpt.registry.names import NAME_RE, anchored
from services.common.errors import ApiError, iter_limited_body
from services.common.openapi import raw_body
from services.common.schemas import MAX_BIGINT, MAX_INT, SqlText
from services.trainer.celery_app import enqueue
from services.trainer.deps import Authorized, CeleryDep, RegistryDep, RepoDep, SettingsDep, StoreDep
from services.trainer.models import DATASET_SUFFIXES, TERMINAL_STATES, Dataset, Job
from services.trainer.repository import new_id
from services.trainer.schemas import (
    DatasetPublic,
    DatasetsPublic,
    JobPublic,
    JobSpec,
    JobsPublic,
    Kind,
    LogLine,
    LogsPublic,
    MetricPoint,
    MetricsPublic,
    State,
)
from services.trainer.validation import validate_spec

MAX_DATASET_BYTES = 1 << 30
EVENT_POLL_S = 0.5
JobId = Annotated[SqlText, Path(max_length=32)]

router = APIRouter()


def to_public(job: Job) -> JobPublic:
    progress = eta = None
    if job.total_steps:
        progress = min(1.0, job.step / job.total_steps)
        if job.state == "running" and job.started_at is not None and job.step > 0:
            done_here = job.step - (job.resumed_from_step or 0)
            elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
            if done_here > 0:
                eta = max(0.0, (job.total_steps - job.step) * elapsed / max(done_here, job.step))
    return JobPublic.model_validate(job).model_copy(update={"progress": progress, "eta_seconds": eta})


def _job_or_404(repo: Any, job_id: str) -> Job:
    job = repo.get_job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


@router.post("/jobs", status_code=201, dependencies=[Authorized])
def submit_job(spec: JobSpec, repo: RepoDep, registry: RegistryDep, celery: CeleryDep) -> JobPublic:
    resolved = validate_spec(spec, repo, registry)
    job = repo.create_job(
        kind=spec.kind,
        spec=spec.model_dump(mode="json", exclude_none=True),
        preset=resolved.preset,
        output_model=resolved.output_model,
        base_model=resolved.base_model,
        dataset=resolved.dataset,
        dataset_sha256=resolved.dataset_sha256,
        total_steps=resolved.total_steps,
    )
    try:
        enqueue(celery, job.id)
    except Exception as e:  # the broker is down: the job must not sit queued forever
        message = f"the job queue is unavailable: {' '.join(str(e).split())}"
        repo.finish(job.id, None, "failed", error=message)
        raise ApiError(503, "queue_unavailable", message) from None
    return to_public(_job_or_404(repo, job.id))


@router.get("/jobs")
def list_jobs(
    repo: RepoDep,
    state: State | None = None,
    kind: Kind | None = None,
    model: Annotated[SqlText | None, Query(description="the output or base model's name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> JobsPublic:
    jobs, count = repo.list_jobs(state=state, kind=kind, model=model, limit=limit, offset=offset)
    return JobsPublic(data=[to_public(j) for j in jobs], count=count)


@router.get("/jobs/{job_id}")
def get_job(job_id: JobId, repo: RepoDep) -> JobPublic:
    return to_public(_job_or_404(repo, job_id))


@router.get("/jobs/{job_id}/metrics")
def get_metrics(
    job_id: JobId,
    repo: RepoDep,
    since: Annotated[
        int | None, Query(ge=0, le=MAX_INT, description="only points after this step (default: all)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsPublic:
    _job_or_404(repo, job_id)
    after = -1 if since is None else since  # an evaluate job's result is a point at step 0
    points = repo.metrics(job_id, since=after, limit=limit)
    data = [MetricPoint.model_validate(p) for p in points]
    return MetricsPublic(data=data, last_step=data[-1].step if data else max(after, 0))


@router.get("/jobs/{job_id}/logs")
def get_logs(
    job_id: JobId,
    repo: RepoDep,
    after: Annotated[int, Query(ge=0, le=MAX_BIGINT, description="only lines after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogsPublic:
    _job_or_404(repo, job_id)
    lines = repo.logs(job_id, after_id=after, limit=limit)
    return LogsPublic(data=[LogLine.model_validate(x) for x in lines])


@router.post("/jobs/{job_id}/cancel", status_code=202, dependencies=[Authorized])
def cancel_job(job_id: JobId, repo: RepoDep, settings: SettingsDep) -> JobPublic:
    job = repo.request_cancel(job_id, settings.job_lease_s)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return to_public(job)


EVENT = {
    "type": "object",
    "properties": {"event": {"enum": ["metric", "job", "end"]}, "data": {"type": "string"}},
    "required": ["event", "data"],
}


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `metric` per point, `job` on a change, `end` at the end",
            "content": {"text/event-stream": {"itemSchema": EVENT}},
        }
    },
)
async def job_events(
    job_id: JobId,
    repo: RepoDep,
    since: Annotated[int, Query(ge=-1, le=MAX_INT, description="only points after this step")] = -1,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    await run_in_threadpool(_job_or_404, repo, job_id)
    if last_event_id is not None and re.fullmatch(r"[0-9]{1,9}", last_event_id):
        since = int(last_event_id)  # a reconnecting EventSource continues where it stopped
    return StreamingResponse(
        _events(repo, job_id, since),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(repo: Any, job_id: str, since: int) -> AsyncIterator[bytes]:
    last_job: dict[str, Any] | None = None
    while True:
        job = await run_in_threadpool(repo.get_job, job_id)
        points = await run_in_threadpool(repo.metrics, job_id, since=since)
        for p in points:
            since = max(since, p.step)
            body = {"step": p.step, "kind": p.kind, **p.values}
            yield f"id: {p.step}\nevent: metric\ndata: {json.dumps(body)}\n\n".encode()
        public = to_public(job).model_dump(mode="json")
        if public != last_job:
            last_job = public
            yield f"event: job\ndata: {json.dumps(public)}\n\n".encode()
        if job.state in TERMINAL_STATES:
            yield f"event: end\ndata: {json.dumps({'state': job.state})}\n\n".encode()
            return
        await asyncio.sleep(EVENT_POLL_S)


@router.post(
    "/datasets",
    status_code=201,
    dependencies=[Authorized],
    openapi_extra=raw_body(
        "application/octet-stream",
        "the file, streamed: UTF-8 text, JSONL with a string `text` per line, or messages JSONL "
        "(an OpenAI-style conversation per line, ending with the assistant's reply)",
    ),
)
async def upload_dataset(
    request: Request,
    repo: RepoDep,
    store: StoreDep,
    name: Annotated[str, Query(pattern=anchored(NAME_RE), description="a name jobs can refer to")],
    format: Annotated[
        Literal["text", "jsonl", "messages"],
        Query(description="text: one document per line; messages: conversations for sft jobs"),
    ] = "text",
) -> DatasetPublic:
    dataset_id = new_id()
    key = f"datasets/{dataset_id}/data.{DATASET_SUFFIXES[format]}"
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        async for chunk in iter_limited_body(request, MAX_DATASET_BYTES):
            await run_in_threadpool(spool.write, chunk)
        await run_in_threadpool(_check_dataset, spool, format)
        spool.seek(0)
        size, sha = await run_in_threadpool(store.put_stream, key, spool)
    dataset = Dataset(
        id=dataset_id,
        name=name,
        filename=key.rsplit("/", 1)[1],
        format=format,
        size=size,
        sha256=sha,
        object_key=key,
    )
    await run_in_threadpool(repo.add_dataset, dataset)
    return DatasetPublic.model_validate(dataset)


def _check_dataset(spool: Any, format: str) -> None:
    """UTF-8 text; for JSONL, every non-empty line an object with a string `text`; for messages,
    every non-empty line a conversation training can use (`microgpt.data.conversations`)."""
    from microgpt.data.conversations import parse_conversation

    spool.seek(0)
    for number, raw in enumerate(spool, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_body(f"line {number} is not UTF-8") from None
        if format in ("jsonl", "messages") and line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                raise _bad_body(f"line {number} is not JSON") from None
            if format == "messages":
                try:
                    parse_conversation(record)
                except ValueError as e:
                    raise _bad_body(f"line {number}: {e}") from None
            elif not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise _bad_body(f'line {number} is not an object with a string "text"')
    if spool.tell() == 0:
        raise _bad_body("the data set is empty")


def _bad_body(msg: str) -> ApiError:
    return ApiError(422, "validation_error", [{"loc": ["body"], "msg": msg, "type": "value_error"}])


@router.get("/datasets")
def list_datasets(repo: RepoDep) -> DatasetsPublic:
    data = [DatasetPublic.model_validate(d) for d in repo.list_datasets()]
    return DatasetsPublic(data=data, count=len(data))
