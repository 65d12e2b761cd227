"""What a worker does with one job: claim it, run its kind, hand the result to the registry.

    outcome = JobRunner(settings, repo, store, registry, worker="host:pid").run(job_id, stop)

The runner is the Celery task's body, kept free of Celery so it reads as a plain
sequence. Its guarantees:

- Idempotent by id: a job that is finished (or held by another live worker) is not run
  again; `claim` in SQL decides, not the broker.
- Resumable anywhere: each checkpoint the loop writes is uploaded to object storage
  (`job_checkpoints`), and every attempt starts in a fresh directory from the latest one
  there, so the worker that resumes need not be the one that started.
- One registry version per result: the version is looked up by job id in the registry
  before pushing and recorded in the job row after, so a crash between push and record
  cannot push twice on redelivery.
- Cooperative stops: the loop's stop flag is the worker's SIGTERM event (checkpoint and
  requeue) or the job's cancel request in SQL (checkpoint and cancel), polled between steps.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from microgpt.errors import NotFound
from microgpt.settings import Settings
from microgpt.storage import ObjectStore
from services.trainer.job_checkpoints import delete_checkpoints, download_checkpoint, upload_checkpoint
from services.trainer.logs import JobLogger, job_context
from services.trainer.models import DATASET_SUFFIXES, Job
from services.trainer.repository import Claim, TrainerRepository
from services.trainer.schemas import EvaluateSpec, ExportSpec, JobSpec
from services.trainer.validation import CHAT_DATASET, lora_config, train_overrides

Outcome = Literal["done", "requeue", "skipped", "busy"]
CANCEL_POLL_S = 0.5
METRICS_FLUSH_S = 0.5
MAX_ERROR_CHARS = 1000  # the job row keeps the gist; the worker log has the traceback
ROLES = {"final": "registry_version", "best": "best_version"}


class Requeue(Exception):
    """The worker is shutting down: the job was checkpointed and goes back to the queue."""


class Cancelled(Exception):
    """The job's cancel request stopped it."""


class _Progress:
    """A TrainCallback: metrics to SQL in small batches, each checkpoint to object storage."""

    def __init__(self, runner: JobRunner, job_id: str, out_dir: Path, say: JobLogger) -> None:
        self.runner, self.job_id, self.out_dir, self.say = runner, job_id, out_dir, say
        self.pending: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()

    def on_step(self, record: dict[str, Any]) -> None:
        self.runner.on_point(record)
        self.pending.append(record)
        if time.monotonic() - self.flushed_at >= METRICS_FLUSH_S:
            self.flush()

    def on_eval(self, record: dict[str, Any]) -> None:
        self.runner.on_point(record)
        self.pending.append(record)
        self.flush()
        self.say(f"step {record['step']}: val loss {record['val_loss']:.4f}")

    def on_interpret(self, record: dict[str, Any]) -> None:
        self.pending.append(record)  # the job's series gains the induction score, for the dashboard

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.flush()
        upload_checkpoint(self.runner.store, self.job_id, self.out_dir, step)
        self.runner.repo.update_job(self.job_id, checkpoint_step=step)
        logging.getLogger("microgpt.trainer").info("checkpoint at step %d uploaded", step)

    def flush(self) -> None:
        self.runner.repo.add_metrics(self.job_id, self.pending)
        self.pending = []
        self.flushed_at = time.monotonic()


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        repo: TrainerRepository,
        store: ObjectStore,
        registry: Any,
        worker: str,
        on_job: Callable[[str | None], None] | None = None,
        on_point: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings, self.repo, self.store, self.registry, self.worker = (
            settings,
            repo,
            store,
            registry,
            worker,
        )
        self.on_job = on_job or (lambda job_id: None)
        self.on_point = on_point or (lambda record: None)  # each training metric point, as it comes

    def run(self, job_id: str, shutdown: Any) -> Outcome:
        """Run the job unless it is finished or held elsewhere; `shutdown` is an Event (SIGTERM)."""
        try:
            claim: Claim | None = self.repo.claim(job_id, self.worker, self.settings.job_lease_s)
        except NotFound:
            claim = None  # deleted after its task was queued
        if claim is None or claim == "finished":
            state = claim or "missing"
            logging.getLogger("microgpt.trainer").info("job %s is %s; nothing to do", job_id, state)
            return "skipped"
        if claim == "busy":
            return "busy"
        job = self.repo.get_job(job_id)
        assert job is not None
        with job_context(job_id):
            say = JobLogger(self.repo, job_id)
            self.on_job(job_id)
            work = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._work_root()))
            try:
                if job.cancel_requested:
                    raise Cancelled
                say(f"attempt {job.attempts} of {job.kind} job on {self.worker}")
                handler = getattr(self, f"_run_{job.kind}")
                handler(job, JobSpec.model_validate(job.spec), work, say, shutdown)
                self.repo.finish(job_id, self.worker, "succeeded")
                say("succeeded")
                return "done"
            except Requeue:
                self.repo.requeue(job_id, self.worker)
                say("worker shutting down: checkpointed, back in the queue")
                return "requeue"
            except Cancelled:
                self.repo.finish(job_id, self.worker, "cancelled")
                say("cancelled; its last checkpoint stays in object storage")
                return "done"
            except Exception as e:  # any failure ends the job with its message, never a retry loop
                message = " ".join(str(e).split())[:MAX_ERROR_CHARS] or type(e).__name__
                if not isinstance(e, ValueError | OSError):
                    message = f"{type(e).__name__}: {message}"
                    logging.getLogger("microgpt.trainer").exception("job failed")
                say(f"failed: {message}", logging.ERROR)
                self.repo.finish(job_id, self.worker, "failed", error=message)
                return "done"
            finally:
                self.on_job(None)
                shutil.rmtree(work, ignore_errors=True)

    def _work_root(self) -> Path:
        root = self.settings.home / "trainer-work"
        root.mkdir(parents=True, exist_ok=True)
        return root

    # --- kinds ------------------------------------------------------------------------------

    def _run_train(self, job: Job, spec: JobSpec, work: Path, say: JobLogger, shutdown: Any) -> None:
        from microgpt.cpp import TRAINING_KERNELS, build_all
        from microgpt.train.loop import default_device, train

        out = work / "run"
        resumed = download_checkpoint(self.store, job.id, out)
        # Points past the checkpoint (all of them without one) are redone by this attempt.
        self.repo.truncate_metrics(job.id, resumed or 0)
        if resumed is not None:
            self.repo.update_job(job.id, resumed_from_step=resumed, step=resumed)
            say(f"resuming from the checkpoint at step {resumed}")
        data, dataset_sha = self._dataset(job)
        init_from = None
        if job.kind in ("finetune", "sft"):
            assert job.base_model is not None
            init_from = self.registry.pull(job.base_model)
        progress = _Progress(self, job.id, out, say)
        cancel = self._cancel_poll(job.id)

        def stop() -> bool:
            return shutdown.is_set() or cancel()

        if default_device() == "cpu":  # a first build takes a minute: before step 0, and in the log
            build_all(TRAINING_KERNELS, say)
        result = train(
            job.preset or "",
            out_dir=out,
            cache_dir=self.settings.cache,
            data=data,
            model_overrides=spec.model or None,
            train_overrides=train_overrides(spec) or None,
            checkpoint_interval=spec.checkpoint_interval,
            resume=resumed is not None,
            callbacks=[progress],
            stop_flag=stop,
            init_from=init_from,
            lora=lora_config(spec),
        )
        progress.flush()
        if result.stopped and not result.early_stopped:
            if shutdown.is_set():
                raise Requeue
            raise Cancelled
        metrics = {"steps": result.step, "train_loss": result.losses[-1] if result.losses else None}
        if result.val_loss is not None:
            metrics["val_loss"] = result.val_loss
        lineage = {"job_id": job.id, "dataset_sha256": dataset_sha, "parent": job.base_model}
        final = self._push_once(job, "final", result.checkpoint, metrics, lineage)
        say(f"pushed the final checkpoint as {final}")
        if result.best is not None and result.best_step != result.step:  # else the same weights
            best_metrics = {"steps": result.best_step, "val_loss": result.best_val_loss}
            best = self._push_once(job, "best", result.best, best_metrics, lineage)
            say(f"pushed the best-validation checkpoint (step {result.best_step}) as {best}")
        self.repo.update_job(
            job.id, dataset_sha256=dataset_sha, result={k: v for k, v in metrics.items() if v is not None}
        )
        delete_checkpoints(self.store, job.id)

    _run_finetune = _run_train
    _run_sft = _run_train

    def _run_evaluate(self, job: Job, spec: JobSpec, work: Path, say: JobLogger, shutdown: Any) -> None:
        from microgpt.evaluate import evaluate_checkpoint

        assert job.base_model is not None
        options = spec.evaluate or EvaluateSpec()
        if options.tasks is not None:
            self._evaluate_tasks(job, options, say)
            return
        data, dataset_sha = self._dataset(job)
        path = self.registry.pull(job.base_model)
        split = options.split or "val"
        say(f"evaluating {job.base_model} on {job.dataset} ({split} split)")
        result = evaluate_checkpoint(
            path,
            data,
            cache_dir=self.settings.cache,
            split=split,
            batch_size=options.batch_size,
            max_batches=options.max_batches,
        )
        figures = {
            "loss": result.loss,
            "perplexity": result.perplexity,
            "bits_per_byte": result.bits_per_byte,
            "tokens": float(result.tokens),
        }
        self.repo.add_metrics(job.id, [{"kind": "result", "step": 0, **figures}])
        self.repo.update_job(job.id, result=figures, dataset_sha256=dataset_sha)
        say(result.summary())

    def _evaluate_tasks(self, job: Job, options: EvaluateSpec, say: JobLogger) -> None:
        """Accuracy per task of greedy replies; the figures go to the job and to the version's metrics."""
        from microgpt.task_eval import evaluate_checkpoint_tasks, metrics_of, report

        assert job.base_model is not None
        data, dataset_sha = (None, None) if job.dataset in (None, CHAT_DATASET) else self._dataset(job)
        split = options.split or "test"
        where = f"the built-in chat tasks' {split} split" if data is None else job.dataset
        say(f"scoring {job.base_model} on {', '.join(options.tasks or [])} ({where})")
        scores = evaluate_checkpoint_tasks(
            self.registry.pull(job.base_model),
            options.tasks,
            cache_dir=self.settings.cache,
            data=data,
            split=split,
            limit=options.limit,
        )
        figures = metrics_of(scores)
        self.repo.add_metrics(job.id, [{"kind": "result", "step": 0, **figures}])
        self.registry.update_version(job.base_model, metrics=figures)
        counts = {f"total.{task}": s.total for task, s in scores.items()}
        self.repo.update_job(job.id, result={**figures, **counts}, dataset_sha256=dataset_sha)
        for line in report(scores).splitlines():
            say(line)

    def _run_quantize(self, job: Job, spec: JobSpec, work: Path, say: JobLogger, shutdown: Any) -> None:
        from microgpt.quantize import quantize_checkpoint

        assert job.base_model is not None
        mode = spec.quantize.mode if spec.quantize else "int8"
        group_size = spec.quantize.group_size if spec.quantize else 32
        src = self.registry.pull(job.base_model)
        say(f"quantizing {job.base_model} to {mode} (group size {group_size})")
        dst = quantize_checkpoint(Path(src), work / "quantized", mode, group_size)
        size = sum(p.stat().st_size for p in Path(dst).iterdir() if p.is_file())
        metrics = {"bytes": float(size)}
        lineage = {"job_id": job.id, "parent": job.base_model}
        ref = self._push_once(job, "final", Path(dst), metrics, lineage)
        self.repo.update_job(job.id, result={"mode": mode, "group_size": group_size, "bytes": size})
        say(f"pushed the {mode} checkpoint as {ref}")

    def _run_export(self, job: Job, spec: JobSpec, work: Path, say: JobLogger, shutdown: Any) -> None:
        from microgpt.export import export_checkpoint

        assert job.base_model is not None
        options = spec.export or ExportSpec()
        src = self.registry.pull(job.base_model)
        kind = options.format + (f" {options.quant}" if options.quant else "")
        say(f"exporting {job.base_model} to {kind}")
        done = export_checkpoint(
            Path(src), work / "exported", options.format, quant=options.quant, opset=options.opset
        )
        for note in done.notes:
            say(note)
        # The parity report (the export's own runtime against the float model) travels as metrics,
        # so the registry and the dashboard show how far the export is from its source.
        size = sum(p.stat().st_size for p in done.path.iterdir() if p.is_file())
        metrics = {"bytes": float(size), **(done.parity.metrics() if done.parity else {})}
        say(f"parity: {done.parity.summary()}" if done.parity else "parity: runtime not installed here")
        lineage = {"job_id": job.id, "parent": job.base_model}
        ref = self._push_once(job, "final", done.path, metrics, lineage)
        result = {"format": options.format, "quant": options.quant, **metrics}
        self.repo.update_job(job.id, result={k: v for k, v in result.items() if v is not None})
        say(f"pushed the {kind} export as {ref}")

    # --- pieces -----------------------------------------------------------------------------

    def _cancel_poll(self, job_id: str) -> Callable[[], bool]:
        """Is a cancel requested? Read from SQL at most every CANCEL_POLL_S, between steps."""
        state = {"at": 0.0, "set": False}

        def poll() -> bool:
            now = time.monotonic()
            if not state["set"] and now - state["at"] >= CANCEL_POLL_S:
                state["at"], state["set"] = now, self.repo.cancel_requested(job_id)
            return bool(state["set"])

        return poll

    def _dataset(self, job: Job) -> tuple[str, str | None]:
        """What the loop reads (a built-in name or a local file) and the data's sha256."""
        from microgpt.data.builtin import DATASETS
        from microgpt.data.sources import resolve, source_sha256

        assert job.dataset is not None
        if job.dataset in DATASETS:
            return job.dataset, source_sha256(resolve(job.dataset, cache_dir=self.settings.cache))
        dataset = self.repo.find_dataset(job.dataset)
        if dataset is None:
            raise ValueError(f"the uploaded data set {job.dataset} no longer exists")
        # Named by content, so every worker and every attempt passes the loop the same path.
        target = (
            self.settings.cache / "trainer-datasets" / f"{dataset.sha256}.{DATASET_SUFFIXES[dataset.format]}"
        )
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{self.worker.replace(':', '-')}.part")
            digest = hashlib.sha256()
            with open(partial, "wb") as f:
                for chunk in self.store.get_stream(dataset.object_key):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != dataset.sha256:
                partial.unlink()
                raise ValueError(f"the stored data set {dataset.id} does not match its sha256")
            partial.replace(target)
        return str(target), dataset.sha256

    def _push_once(
        self, job: Job, role: str, ckpt_dir: Path, metrics: dict[str, Any], lineage: dict[str, Any]
    ) -> str:
        """Push `ckpt_dir` as this job's `role` version unless it is already in the registry."""
        field = ROLES[role]
        recorded = getattr(self.repo.get_job(job.id), field)
        if recorded:
            return str(recorded)
        assert job.output_model is not None
        ref = self._find_pushed(job.output_model, job.id, role)
        if ref is None:
            info = self.registry.push(
                ckpt_dir,
                job.output_model,
                metrics={k: v for k, v in metrics.items() if v is not None},
                lineage={k: v for k, v in lineage.items() if v is not None},
                preset=job.preset,
                description=f"{job.kind} job {job.id} ({role})",
                tags=[f"job={job.id}", f"role={role}"],
                created_by=f"trainer job {job.id}",
            )
            ref = f"{info.name}/{info.version}"
        self.repo.update_job(job.id, **{field: ref})
        return ref

    def _find_pushed(self, name: str, job_id: str, role: str) -> str | None:
        """A ready version of `name` this job already pushed for `role` (a crash before recording it)."""
        from microgpt.registry import RegistryError

        try:
            versions = self.registry.list_versions(
                name, status="ready", tag=[f"job={job_id}", f"role={role}"]
            )
        except RegistryError as e:
            if e.status == 404:  # the model does not exist yet
                return None
            raise
        for v in versions:
            if v.lineage.get("job_id") == job_id and f"role={role}" in v.tags:
                return v.ref
        return None
