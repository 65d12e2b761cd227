"""`microgpt jobs submit|ls|show|cancel|watch`: the trainer service from the command line, over HTTP only.

    microgpt jobs submit --preset micro --dataset names --set train.max_steps=500 --watch
    microgpt jobs submit --kind finetune --base-model names@prod --dataset my-names --lora-rank 8
    microgpt jobs submit --kind quantize --base-model names/3 --quantize-mode int8
    microgpt jobs submit --preset chat-tiny --watch                    # a chat model: pretraining, then SFT
    microgpt jobs submit --kind sft --base-model chat-tiny --dataset my-chats   # SFT on your conversations
    microgpt jobs submit --kind evaluate --base-model chat-tiny --tasks add,reverse,names
    microgpt jobs submit --spec job.json             # a JobSpec as JSON (see the README)
    microgpt jobs ls --state running
    microgpt jobs show JOB_ID
    microgpt jobs cancel JOB_ID
    microgpt jobs watch JOB_ID                       # a live progress bar from the event stream

The commands talk to `MICROGPT_TRAINER_URL` (with `MICROGPT_API_KEY` as the bearer key when
set) and never touch the database or the broker, so they work from any machine. A 4xx
answer becomes one line on stderr naming the field (exit code 2), like every CLI error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from microgpt.clients.trainer import KINDS, Job, TrainerClient


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The JobSpec JSON of `jobs submit`: a --spec file, overridden by the flags given."""
    from microgpt.run_config import parse_set_overrides

    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--spec {args.spec}: {e}") from None
    spec["kind"] = args.kind or spec.get("kind", "train")
    for field in ("preset", "dataset", "base_model", "output_model", "checkpoint_interval"):
        value = getattr(args, field)
        if value is not None:
            spec[field] = value
    if args.set:
        model, train = parse_set_overrides(args.set)
        spec["model"] = {**spec.get("model", {}), **model}
        spec["train"] = {**spec.get("train", {}), **train}
    if args.max_steps is not None:
        spec.setdefault("train", {})["max_steps"] = args.max_steps
    if args.lora_rank is not None:
        spec["lora"] = {"rank": args.lora_rank}
    if args.quantize_mode is not None:
        spec["quantize"] = {"mode": args.quantize_mode}
    if args.tasks is not None:
        spec["evaluate"] = {**spec.get("evaluate", {}), "tasks": [t for t in args.tasks.split(",") if t]}
    return spec


def _line(job: Job) -> str:
    step = f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step)
    loss = f"{job.loss:.4f}" if job.loss is not None else "-"
    model = job.registry_version or job.output_model or job.base_model or "-"
    return f"{job.id}  {job.kind:<9} {job.state:<10} {step:>12}  loss {loss:<8} {model}"


def _client() -> TrainerClient:
    from microgpt.settings import get_settings

    return TrainerClient.from_settings(get_settings())


def cmd_submit(args: argparse.Namespace) -> None:
    client = _client()
    job = client.submit(spec_from_args(args))
    writes = f", writes model {job.output_model}" if job.output_model else ""
    print(f"submitted {job.kind} job {job.id} ({job.state}{writes})", flush=True)
    if args.watch:
        watch(client, job.id)


def cmd_ls(args: argparse.Namespace) -> None:
    jobs, count = _client().list_jobs(state=args.state, kind=args.kind, model=args.model, limit=args.limit)
    for job in jobs:
        print(_line(job))
    print(f"({len(jobs)} of {count} jobs)")


def cmd_show(args: argparse.Namespace) -> None:
    print(_client().job(args.job_id).model_dump_json(indent=2))


def cmd_cancel(args: argparse.Namespace) -> None:
    job = _client().cancel(args.job_id)
    status = "cancelled" if job.state == "cancelled" else f"asked to stop ({job.state})"
    print(f"job {job.id}: {status}")


def cmd_watch(args: argparse.Namespace) -> None:
    watch(_client(), args.job_id)


def watch(client: TrainerClient, job_id: str) -> None:
    """A tqdm bar of the job's steps from its event stream; an error unless it succeeded."""
    from tqdm import tqdm

    bar: tqdm[Any] | None = None
    job: dict[str, Any] = {}
    try:
        for event, data in client.events(job_id):
            if event == "job":
                job = data
                if bar is None and data.get("total_steps"):
                    bar = tqdm(total=data["total_steps"], initial=data["step"], unit="step", desc=job_id)
            elif event == "metric" and bar is not None:
                if data["kind"] == "train":
                    bar.update(max(0, data["step"] - bar.n))
                    bar.set_postfix(loss=f"{data['loss']:.4f}", refresh=False)
                elif data["kind"] == "eval":
                    bar.write(f"step {data['step']}: val loss {data['val_loss']:.4f}")
    finally:
        if bar is not None:
            bar.close()
    state = job.get("state", "unknown")
    if state != "succeeded":
        raise ValueError(f"job {job_id} {state}" + (f": {job['error']}" if job.get("error") else ""))
    pushed = job.get("registry_version")
    print(f"job {job_id} succeeded" + (f"; registry version {pushed}" if pushed else ""))


def register(commands: argparse._SubParsersAction) -> None:
    """Add `jobs` to the main parser's subcommands."""
    jobs = commands.add_parser("jobs", help="submit and follow trainer jobs (over HTTP)").add_subparsers(
        dest="jobs", required=True
    )
    submit = jobs.add_parser("submit", help="validate and enqueue a job")
    submit.add_argument("--spec", help="a JobSpec as a JSON file; the flags below override it")
    submit.add_argument("--kind", choices=KINDS)
    submit.add_argument("--preset", help="zoo preset (train; finetune: the recipe)")
    submit.add_argument("--dataset", help="built-in data set or uploaded data set id/name")
    submit.add_argument("--base-model", help="registry ref: name, name@alias or name/3")
    submit.add_argument("--output-model", help="registry model name the result is pushed to")
    submit.add_argument("--set", action="extend", nargs="+", metavar="SECTION.KEY=VALUE", help="overrides")
    submit.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=N")
    submit.add_argument("--checkpoint-interval", type=int, help="steps between checkpoints")
    submit.add_argument("--lora-rank", type=int, help="finetune, sft: train rank-R LoRA adapters only")
    submit.add_argument("--quantize-mode", choices=["int8", "int4"], help="quantize: the weight format")
    submit.add_argument("--tasks", help="evaluate: accuracy per task, e.g. add,reverse,names or all")
    submit.add_argument("--watch", action="store_true", help="then follow it with a progress bar")
    submit.set_defaults(run=cmd_submit)

    ls = jobs.add_parser("ls", help="list jobs, newest first")
    ls.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    ls.add_argument("--kind", choices=KINDS)
    ls.add_argument("--model", help="jobs that push to or start from this model")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(run=cmd_ls)

    show = jobs.add_parser("show", help="one job as JSON")
    show.add_argument("job_id")
    show.set_defaults(run=cmd_show)

    cancel = jobs.add_parser("cancel", help="cancel a job (a running one stops at a step boundary)")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=cmd_cancel)

    watch_p = jobs.add_parser("watch", help="follow a job with a live progress bar")
    watch_p.add_argument("job_id")
    watch_p.set_defaults(run=cmd_watch)
