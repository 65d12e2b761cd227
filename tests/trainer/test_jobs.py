"""End to end: jobs submitted over HTTP, run by real Celery worker processes, pushed to the real registry.

Server mode is PostgreSQL + Redis; `test_embedded_happy_path` repeats the happy path with
no servers (SQLite and kombu's SQLAlchemy broker). Each test starts its own workers and
stops them after, so a test that kills one controls exactly who runs the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file
from trainer_platform import Platform

from microgpt.checkpoint import read_config
from microgpt.registry import RegistryClient

MICRO = {"kind": "train", "preset": "micro", "dataset": "names", "output_model": "names-micro"}


def _events(platform: Platform, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The job's whole SSE stream, read live until the server ends it."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with platform.http.stream("GET", f"/jobs/{job_id}/events", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                seen.append((event, json.loads(line[5:])))
    return seen


def _happy_path(platform: Platform, output_model: str) -> None:
    from microgpt.loading import load_model
    from microgpt.sampling import SamplingParams
    from microgpt.textgen import complete

    platform.start_worker(f"happy-{output_model}")
    spec = {**MICRO, "output_model": output_model, "train": {"max_steps": 300}, "checkpoint_interval": 100}
    job = platform.submit(spec)
    assert job["state"] == "queued" and job["total_steps"] == 300
    events = _events(platform, job["id"])
    train_steps = [d["step"] for e, d in events if e == "metric" and d["kind"] == "train"]
    assert train_steps == list(range(1, 301)), "the live stream carries every step once, in order"
    assert any(e == "metric" and d["kind"] == "eval" for e, d in events)
    assert any(e == "job" and d["state"] == "running" for e, d in events), "progress was seen while running"
    assert events[-1] == ("end", {"state": "succeeded"})

    done = platform.job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["step"] == 300 and done["progress"] == 1.0 and done["attempts"] == 1
    assert done["registry_version"] == f"{output_model}/1"
    registry = RegistryClient(platform.registry_url, cache_dir=platform.home / "test-cache")
    version = registry.resolve(output_model)
    assert version.version == 1 and version.status == "ready"
    assert version.lineage["job_id"] == job["id"]
    assert len(version.lineage["dataset_sha256"]) == 64
    assert version.metrics["steps"] == 300 and 1.0 < version.metrics["val_loss"] < 3.3
    assert version.preset == "micro"

    ckpt = load_model(f"{output_model}/1", registry=registry)
    samples = complete(ckpt.model, ckpt.text_tokenizer(), ["", ""], SamplingParams(max_new_tokens=16, seed=1))
    assert all(s.text.strip() and s.text.isascii() for s in samples), samples

    metrics = platform.http.get(f"/jobs/{job['id']}/metrics", params={"since": 250}).json()
    assert [p["step"] for p in metrics["data"] if p["kind"] == "train"] == list(range(251, 301))
    logs = [line["message"] for line in platform.http.get(f"/jobs/{job['id']}/logs").json()["data"]]
    assert logs[-1] == "succeeded" and any("pushed the final checkpoint" in m for m in logs)
    listed = platform.http.get("/jobs", params={"state": "succeeded", "model": output_model}).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]


def test_happy_path_over_http_with_live_progress_registry_push_and_sampling(workers: Platform) -> None:
    _happy_path(workers, "names-micro")
    text = workers.http.get("/metrics").text
    assert 'microgpt_trainer_jobs{state="succeeded"}' in text
    assert 'microgpt_trainer_job_duration_seconds_count{kind="train"}' in text
    assert "microgpt_trainer_queue_length" in text and 'microgpt_trainer_workers{status="alive"}' in text
    for line in workers.worker_log("happy-names-micro").splitlines():
        record = json.loads(line) if line.startswith("{") else None
        if record and record.get("logger") == "microgpt.trainer" and "job" in record["msg"]:
            assert "job_id" in record or "nothing to do" in record["msg"], record


def test_embedded_happy_path(embedded_platform: Platform) -> None:
    try:
        _happy_path(embedded_platform, "embedded-micro")
    finally:
        embedded_platform.stop_workers()


def _reference_weights(tmp: Path, platform: Platform, steps: int, interval: int) -> dict[str, torch.Tensor]:
    """The same spec trained in this process without interruption."""
    from microgpt.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(
            "micro",
            out_dir=tmp / "reference",
            cache_dir=platform.env["MICROGPT_CACHE"],
            data="names",
            train_overrides={"max_steps": steps},
            checkpoint_interval=interval,
        )
    finally:
        torch.set_num_threads(threads)
    return load_file(result.checkpoint / "model.safetensors")


def _pushed_weights(platform: Platform, ref: str) -> dict[str, torch.Tensor]:
    registry = RegistryClient(platform.registry_url, cache_dir=platform.home / "test-cache")
    return load_file(registry.pull(ref) / "model.safetensors")


def _assert_resumed_exactly(platform: Platform, job: dict[str, Any], steps: int) -> None:
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2 and job["resumed_from_step"] > 0, job
    logs = [x["message"] for x in platform.http.get(f"/jobs/{job['id']}/logs").json()["data"]]
    assert f"resuming from the checkpoint at step {job['resumed_from_step']}" in logs
    series = platform.http.get(f"/jobs/{job['id']}/metrics").json()["data"]
    assert [p["step"] for p in series if p["kind"] == "train"] == list(range(1, steps + 1))


def test_sigkill_mid_training_resumes_from_the_checkpoint_with_identical_weights(
    workers: Platform, tmp_path: Path
) -> None:
    steps, interval = 1500, 100
    first = workers.start_worker("sigkill-a")
    job = workers.submit(
        {**MICRO, "output_model": "killed", "train": {"max_steps": steps}, "checkpoint_interval": interval}
    )
    reference = _reference_weights(tmp_path, workers, steps, interval)
    workers.wait(job["id"], lambda j: (j["checkpoint_step"] or 0) >= 200 and j["state"] == "running")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed = workers.job(job["id"])
    assert killed["state"] == "running" and killed["step"] < steps, "killed mid-training"
    workers.start_worker("sigkill-b")
    done = workers.wait_done(job["id"], timeout_s=150)
    _assert_resumed_exactly(workers, done, steps)
    assert done["resumed_from_step"] >= 200 and done["resumed_from_step"] % interval == 0
    pushed = _pushed_weights(workers, done["registry_version"])
    assert pushed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(pushed[name], tensor), f"{name} differs from the uninterrupted run"


def test_sigterm_checkpoints_and_requeues_and_another_worker_finishes(
    workers: Platform, tmp_path: Path
) -> None:
    steps, interval = 1500, 100
    first = workers.start_worker("sigterm-a")
    job = workers.submit(
        {**MICRO, "output_model": "termed", "train": {"max_steps": steps}, "checkpoint_interval": interval}
    )
    workers.wait(job["id"], lambda j: (j["checkpoint_step"] or 0) >= 100 and j["state"] == "running")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, workers.worker_log("sigterm-a")[-2000:]
    requeued = workers.job(job["id"])
    assert requeued["state"] == "queued" and requeued["worker"] is None, requeued
    assert 100 <= requeued["checkpoint_step"] < steps
    stopped_at = requeued["checkpoint_step"]
    workers.start_worker("sigterm-b")
    done = workers.wait_done(job["id"], timeout_s=150)
    _assert_resumed_exactly(workers, done, steps)
    assert done["resumed_from_step"] == stopped_at, "resumed from the checkpoint written at SIGTERM"
    reference = _reference_weights(tmp_path, workers, steps, interval)
    pushed = _pushed_weights(workers, done["registry_version"])
    assert all(torch.equal(pushed[k], v) for k, v in reference.items())


def test_cancel_stops_a_running_job_at_a_step_boundary_and_keeps_its_checkpoint(workers: Platform) -> None:
    workers.start_worker("cancel")
    job = workers.submit(
        {**MICRO, "output_model": "cancelled", "train": {"max_steps": 100_000}, "checkpoint_interval": 50}
    )
    workers.wait(job["id"], lambda j: (j["checkpoint_step"] or 0) >= 50)
    asked = time.monotonic()
    response = workers.http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    done = workers.wait_done(job["id"], timeout_s=30)
    assert time.monotonic() - asked < 5.0, "a cancel takes effect within a few seconds"
    assert done["state"] == "cancelled" and done["registry_version"] is None
    assert done["checkpoint_step"] == done["step"], "the stop checkpointed the step it ended on"
    pointer = json.loads((workers.home / "artifacts" / "jobs" / job["id"] / "latest.json").read_text())
    assert pointer["step"] == done["step"]
    again = workers.http.post(f"/jobs/{job['id']}/cancel").json()
    assert again["state"] == "cancelled"


def test_cancel_of_a_queued_job_is_immediate(platform: Platform) -> None:
    job = platform.submit({**MICRO, "output_model": "never", "train": {"max_steps": 10}})
    cancelled = platform.http.post(f"/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["attempts"] == 0


def test_redelivered_task_for_a_finished_job_does_nothing_and_pushes_once(workers: Platform) -> None:
    from sqlalchemy import create_engine, text

    from microgpt.settings import Settings
    from services.trainer.celery_app import RUN_JOB, make_celery

    workers.start_worker("idem")
    job = workers.submit({**MICRO, "output_model": "idempotent", "train": {"max_steps": 200}})
    done = workers.wait_done(job["id"])
    assert done["state"] == "succeeded"
    settings = Settings(
        broker_url=workers.env["MICROGPT_BROKER_URL"], trainer_queue=workers.env["MICROGPT_TRAINER_QUEUE"]
    )
    make_celery(settings).send_task(RUN_JOB, args=[job["id"]])  # a redelivery
    deadline = time.monotonic() + 30
    while "is finished; nothing to do" not in workers.worker_log("idem"):
        assert time.monotonic() < deadline, workers.worker_log("idem")[-2000:]
        time.sleep(0.2)
    assert workers.job(job["id"]) == done

    # A worker that died after pushing but before recording the version: the redelivered
    # task reruns the job, finds the version it pushed by job id, and pushes nothing new.
    engine = create_engine(workers.env["MICROGPT_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE trainer_jobs SET state='queued', registry_version=NULL, finished_at=NULL WHERE id=:id"
            ),
            {"id": job["id"]},
        )
    engine.dispose()
    make_celery(settings).send_task(RUN_JOB, args=[job["id"]])
    again = workers.wait_done(job["id"])
    assert again["state"] == "succeeded" and again["registry_version"] == "idempotent/1"
    registry = RegistryClient(workers.registry_url)
    assert [v.version for v in registry.list_versions("idempotent")] == [1]


@pytest.mark.parametrize(
    ("spec", "loc", "needle"),
    [
        ({"kind": "train", "preset": "nope"}, ["body", "preset"], "unknown preset"),
        ({"kind": "train", "preset": "micro", "train": {"lr": "fast"}}, ["body", "train", "lr"], "number"),
        (
            {"kind": "train", "preset": "micro", "model": {"n_layers": 2}},
            ["body", "model", "n_layers"],
            "Extra",
        ),
        ({"kind": "train", "preset": "micro", "dataset": "no-such-data"}, ["body", "dataset"], "no data set"),
        (
            {"kind": "finetune", "base_model": "missing-model", "dataset": "names"},
            ["body", "base_model"],
            "missing",
        ),
        ({"kind": "evaluate", "dataset": "names"}, ["body", "base_model"], "needs base_model"),
        (
            {"kind": "export", "base_model": "x", "export": {"format": "tflite"}},
            ["body", "export", "format"],
            "onnx",
        ),
        ({"kind": "train", "preset": "micro", "export": {}}, ["body", "export"], "applies to export jobs"),
        (
            {"kind": "export", "base_model": "x", "export": {"format": "hf", "quant": "q8_0"}},
            ["body", "export", "quant"],
            "for gguf exports",
        ),
        (
            {"kind": "export", "base_model": "x", "export": {"format": "gguf", "opset": 18}},
            ["body", "export", "opset"],
            "for onnx exports",
        ),
        ({"kind": "train", "preset": "micro", "checkpoint_interval": 0}, ["body", "checkpoint_interval"], ""),
        (
            {"kind": "train", "preset": "micro", "output_model": "bad name"},
            ["body", "output_model"],
            "model name",
        ),
        ({"kind": "dance"}, ["body", "kind"], ""),
        ({"kind": "sft", "dataset": "chat"}, ["body", "base_model"], "needs base_model"),
        (
            {"kind": "train", "preset": "micro", "evaluate": {"tasks": ["add"]}},
            ["body", "evaluate"],
            "evaluate",
        ),
        (
            {"kind": "train", "preset": "chat-tiny", "train": {"loss_on": "everything"}},
            ["body", "train", "loss_on"],
            "",
        ),
    ],
)
def test_bad_specs_are_422_naming_the_field(
    platform: Platform, spec: dict[str, Any], loc: list[str], needle: str
) -> None:
    before = platform.http.get("/jobs").json()["count"]
    response = platform.http.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["detail"][0]["loc"] == loc and needle in body["detail"][0]["msg"], body
    assert platform.http.get("/jobs").json()["count"] == before, "nothing was enqueued"


def test_dataset_upload_is_stored_with_its_sha256_and_usable_by_a_job(platform: Platform) -> None:
    import hashlib

    data = "".join(f"{name}\n" for name in ["anna", "bob", "carla", "dmitri", "eve"] * 40).encode()
    response = platform.http.post("/datasets", params={"name": "tiny-names"}, content=data)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["sha256"] == hashlib.sha256(data).hexdigest() and dataset["size"] == len(data)
    assert [d["id"] for d in platform.http.get("/datasets").json()["data"]] == [dataset["id"]]
    bad = platform.http.post("/datasets", params={"name": "x", "format": "jsonl"}, content=b'{"txt": 1}\n')
    assert bad.status_code == 422 and "text" in bad.json()["detail"][0]["msg"]
    job = platform.submit({**MICRO, "dataset": "tiny-names", "train": {"max_steps": 5}})
    assert job["dataset"] == dataset["id"] and job["dataset_sha256"] == dataset["sha256"]
    platform.http.post(f"/jobs/{job['id']}/cancel")


def test_sft_and_task_evaluation_jobs_on_a_chat_model(workers: Platform, tmp_path: Path) -> None:
    """A chat model (the chat-tiny recipe, shrunk, trained here and pushed), an sft job with LoRA on
    a messages upload, and an evaluate job with tasks whose accuracy lands in the job and the
    version's metrics."""
    from microgpt.data.tasks import generate_splits
    from microgpt.train import train

    bad = workers.http.post(
        "/datasets",
        params={"name": "x", "format": "messages"},
        content=b'{"messages": [{"role": "user", "content": "hi"}]}\n',
    )
    assert bad.status_code == 422 and "assistant" in bad.json()["detail"][0]["msg"], bad.text
    data = "".join(json.dumps(r) + "\n" for r in generate_splits(tasks=("add",))["train"][:100])
    upload = workers.http.post(
        "/datasets", params={"name": "sums", "format": "messages"}, content=data.encode()
    )
    assert upload.status_code == 201 and upload.json()["format"] == "messages", upload.text

    (tmp_path / "sums.jsonl").write_text(data)
    base = train(
        "chat-tiny",
        out_dir=tmp_path / "base",
        cache_dir=tmp_path / "cache",
        data=str(tmp_path / "sums.jsonl"),
        model_overrides={"n_layer": 1, "n_head": 2, "n_embd": 32},
        train_overrides={"max_steps": 4, "batch_size": 4, "eval_steps": 1},
        device="cpu",
        threads=1,
    )
    registry = RegistryClient(workers.registry_url)
    registry.push(base.checkpoint, "chat-base", preset="chat-tiny")

    workers.start_worker("chat")
    refused = workers.http.post(
        "/jobs", json={"kind": "sft", "base_model": "chat-base", "train": {"loss_on": "all"}}
    )
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "train", "loss_on"]
    spec = {"kind": "sft", "base_model": "chat-base", "dataset": "sums", "lora": {"rank": 2}}
    sft = workers.wait_done(
        workers.submit({**spec, "train": {"max_steps": 4, "eval_interval": 2}})["id"], 600
    )
    assert sft["state"] == "succeeded" and sft["registry_version"] == "chat-base-sft/1", sft
    state = load_checkpoint_state(registry.pull("chat-base-sft/1"))
    assert state["train"]["loss_on"] == "assistant" and state["lora"]["rank"] == 2

    spec = {"kind": "evaluate", "base_model": "chat-base-sft/1", "dataset": "sums"}
    refused = workers.http.post("/jobs", json={**spec, "evaluate": {"tasks": ["add"], "max_batches": 2}})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == [
        "body",
        "evaluate",
        "max_batches",
    ]
    scored = workers.wait_done(workers.submit({**spec, "evaluate": {"tasks": ["add"], "limit": 5}})["id"])
    assert scored["state"] == "succeeded", scored
    assert 0.0 <= scored["result"]["accuracy.add"] <= 1.0 and scored["result"]["total.add"] == 5
    assert registry.resolve("chat-base-sft/1").metrics["accuracy.add"] == scored["result"]["accuracy.add"]


def load_checkpoint_state(path: Path) -> dict[str, Any]:
    from microgpt.checkpoint import load_checkpoint

    return load_checkpoint(path).trainer_state or {}


def test_missing_job_is_a_json_404(platform: Platform) -> None:
    response = httpx.get(f"{platform.trainer_url}/jobs/0123456789abcdef")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_finetune_evaluate_quantize_and_export_jobs_chain_through_the_registry(workers: Platform) -> None:
    workers.start_worker("chain")
    base = workers.wait_done(
        workers.submit({**MICRO, "output_model": "chain-base", "train": {"max_steps": 100}})["id"]
    )
    assert base["state"] == "succeeded", base

    spec = {
        "kind": "finetune",
        "base_model": "chain-base",
        "dataset": "names",
        "train": {"max_steps": 40, "eval_interval": 20},
        "lora": {"rank": 2},
    }
    tuned = workers.wait_done(workers.submit(spec)["id"])
    assert tuned["state"] == "succeeded" and tuned["registry_version"] == "chain-base-ft/1", tuned
    assert tuned["base_model"] == "chain-base/1" and tuned["preset"] == "micro"
    registry = RegistryClient(workers.registry_url)
    assert registry.resolve("chain-base-ft/1").lineage["parent"] == "chain-base/1"

    evaluated = workers.wait_done(
        workers.submit({"kind": "evaluate", "base_model": "chain-base-ft/1", "dataset": "names"})["id"]
    )
    assert evaluated["state"] == "succeeded", evaluated
    assert 0 < evaluated["result"]["loss"] < 3.3 and evaluated["result"]["bits_per_byte"] > 0
    points = workers.http.get(f"/jobs/{evaluated['id']}/metrics").json()["data"]
    assert points[0]["kind"] == "result" and points[0]["values"]["loss"] == evaluated["result"]["loss"]

    spec = {"kind": "quantize", "base_model": "chain-base", "quantize": {"mode": "int8"}}
    quantized = workers.wait_done(workers.submit(spec)["id"])
    assert quantized["state"] == "succeeded" and quantized["registry_version"] == "chain-base-int8/1", (
        quantized
    )
    assert registry.resolve("chain-base-int8/1").lineage["parent"] == "chain-base/1"
    # The int8 version runs wherever a float one does: an evaluate job, and the CLI by its ref.
    evaluated = workers.wait_done(
        workers.submit({"kind": "evaluate", "base_model": "chain-base-int8/1", "dataset": "names"})["id"]
    )
    assert evaluated["state"] == "succeeded", evaluated
    assert 0 < evaluated["result"]["loss"] < 3.3 and evaluated["result"]["bits_per_byte"] > 0
    for command in (
        ["sample", "chain-base-int8/1", "-n", "1", "--max-new-tokens", "8", "--seed", "1"],
        ["eval", "chain-base-int8@missing", "--data", "names"],
        ["eval", "chain-base-int8/1", "--data", "names", "--max-batches", "2"],
    ):
        cli = [sys.executable, "-m", "microgpt", *command]
        done = subprocess.run(cli, env=workers.env, capture_output=True, text=True, timeout=300)
        if "@missing" in command[1]:
            assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        else:
            assert done.returncode == 0 and done.stdout.strip(), done.stderr

    exported = workers.wait_done(workers.submit({"kind": "export", "base_model": "chain-base"})["id"])
    assert exported["state"] == "succeeded" and exported["registry_version"] == "chain-base-onnx/1", exported
    version = registry.resolve("chain-base-onnx/1")
    assert version.lineage["parent"] == "chain-base/1" and version.lineage["job_id"] == exported["id"]
    assert set(version.files) == {"config.json", "model.onnx", "tokenizer.json"}
    assert read_config(registry.pull("chain-base-onnx/1")).metadata["export"]["format"] == "onnx"


def test_export_jobs_push_each_format_as_a_child_version_with_its_parity_report(
    workers: Platform, tmp_path: Path
) -> None:
    """A Llama-shaped model (the shape every format takes) exported to hf, gguf q8_0 and onnx:
    each export is a version of its own model whose lineage names the source, and whose metrics
    are the parity report its runtime gave (transformers and onnxruntime within 1e-4)."""
    from microgpt.checkpoint import save_checkpoint
    from microgpt.config import GPTConfig
    from microgpt.model import GPT
    from microgpt.tokenizers import ByteTokenizer

    cfg = GPTConfig(
        vocab_size=259, block_size=32, n_layer=1, n_head=4, n_kv_head=2, n_embd=32, position="rope",
        norm="rmsnorm", mlp="swiglu", tie_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    src = save_checkpoint(tmp_path / "src", GPT(cfg), tokenizer=ByteTokenizer())
    registry = RegistryClient(workers.registry_url)
    registry.push(src, "export-src")
    workers.start_worker("export")
    expected = {
        ("hf", None): ("export-src-hf/1", {"model.safetensors", "microgpt_export.json"}, 1e-4),
        ("gguf", "q8_0"): ("export-src-gguf-q8_0/1", {"model.gguf"}, None),
        ("onnx", None): ("export-src-onnx/1", {"model.onnx"}, 1e-4),
    }
    for (fmt, quant), (ref, files, atol) in expected.items():
        options = {"format": fmt, **({"quant": quant} if quant else {})}
        job = workers.wait_done(
            workers.submit({"kind": "export", "base_model": "export-src", "export": options})["id"]
        )
        assert job["state"] == "succeeded" and job["registry_version"] == ref, job
        version = registry.resolve(ref)
        assert version.lineage["parent"] == "export-src/1" and version.lineage["job_id"] == job["id"]
        assert files | {"config.json", "tokenizer.json"} <= set(version.files)
        metrics = version.metrics
        assert metrics["parity_top1_agreement"] >= (1.0 if atol else 0.9), metrics
        assert abs(metrics["parity_perplexity_change_pct"]) <= 1.0, metrics
        if atol is not None:
            assert metrics["parity_max_abs_logit_diff"] <= atol, metrics
        assert (
            job["result"]["format"] == fmt
            and job["result"]["parity_top1_agreement"] == metrics["parity_top1_agreement"]
        )


def test_mutating_routes_need_the_bearer_key_when_one_is_configured(platform: Platform) -> None:
    from fastapi.testclient import TestClient

    from microgpt.settings import Settings
    from services.trainer.app import create_app

    settings = Settings(
        home=platform.home,
        database_url=platform.env["MICROGPT_DATABASE_URL"],
        broker_url=platform.env["MICROGPT_BROKER_URL"],
        registry_url=platform.registry_url,
        api_key="sekrit",
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/jobs", json=MICRO).status_code == 401
        assert client.post("/jobs", json=MICRO, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.post("/datasets?name=x", content=b"a\n").status_code == 401
        assert client.get("/jobs").status_code == 200, "reads stay open"
        assert client.get("/readyz").json() == {"status": "ready"}
