"""The training loop: microgpt's recipe reaches microgpt's published loss, a resumed run is the
uninterrupted run bit for bit (stopped by a flag, by SIGTERM, or killed with SIGKILL), and the
CLI's errors are one line with exit code 2.

The cache is seeded from ../shared/data as a download would leave it (no network).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from microgpt.checkpoint import load_checkpoint
from microgpt.config import TrainConfig
from microgpt.data.builtin import cached_path
from microgpt.model import GPT
from microgpt.train import TrainCallback, TrainResult, lr_at, train
from microgpt.train.cli import parse_overrides
from microgpt.train.loop import METRICS_FILE, build_optimizer
from microgpt.zoo import get_preset

RESUME_STEPS = 200  # the exact-resume runs: micro's recipe, its lr decaying over 200 steps
SHORT = {"max_steps": RESUME_STEPS}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    for name, filename in {"names-32k": "names.txt", "shakespeare": "tinyshakespeare.txt"}.items():
        target = cached_path(name, cache)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / filename, target)
    return cache


@pytest.fixture(scope="module")
def straight(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The uninterrupted 200-step run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    return train("micro", out_dir=out, cache_dir=cache, train_overrides=SHORT, device="cpu")


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint).model.state_dict()


def assert_same_run(result: TrainResult, reference: TrainResult) -> None:
    assert result.step == reference.step == RESUME_STEPS
    assert result.losses == reference.losses  # floats compared exactly: bit for bit
    ours, theirs = weights(result.checkpoint), weights(reference.checkpoint)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    logged = [json.loads(line) for line in (result.out_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["loss"] for r in logged if r["kind"] == "train"] == reference.losses
    assert [r["step"] for r in logged if r["kind"] == "train"] == list(range(1, RESUME_STEPS + 1))


def test_micro_reaches_microgpts_loss(cache: Path, tmp_path: Path) -> None:
    """microgpt.py's published result: loss about 2.37 after 1000 names (mean of the last 100)."""
    result = train("micro", out_dir=tmp_path / "run", cache_dir=cache, device="cpu")
    assert result.step == 1000 and not result.stopped and len(result.losses) == 1000
    last = statistics.mean(result.losses[-100:])
    print(
        f"micro: mean loss of the last 100 steps {last:.4f}, val {result.val_loss:.4f}, "
        f"{result.wall_seconds:.1f}s"
    )
    assert abs(last - 2.37) <= 0.05, last
    assert result.val_loss is not None and result.val_loss < 2.6
    assert abs(result.losses[0] - 3.30) < 0.5  # about ln(27) at initialisation


def test_resume_after_a_stop_flag_is_the_uninterrupted_run(
    cache: Path, tmp_path: Path, straight: TrainResult
) -> None:
    stop = threading.Event()
    seen: list[Path] = []

    class StopAt100(TrainCallback):
        def on_step(self, record: dict[str, Any]) -> None:
            if record["step"] == 100:
                stop.set()

        def on_checkpoint(self, path: Path, step: int) -> None:
            seen.append(step)

    out = tmp_path / "run"
    first = train(
        "micro",
        out_dir=out,
        cache_dir=cache,
        train_overrides=SHORT,
        callbacks=[StopAt100()],
        stop_flag=stop,
        checkpoint_interval=1000,  # so the only mid-run checkpoint is the stop's
        device="cpu",
    )
    assert first.stopped and first.step == 100 and seen == [100]
    assert first.losses == straight.losses[:100]
    second = train("micro", out_dir=out, cache_dir=cache, train_overrides=SHORT, resume=True, device="cpu")
    assert not second.stopped
    assert_same_run(second, straight)


def run_cli_until_checkpoint(cache: Path, out: Path, sig: int) -> subprocess.Popen[str]:
    """Start `microgpt train`, send `sig` once its first checkpoint exists, and wait for it."""
    env = {**os.environ, "MICROGPT_CACHE": str(cache)}
    args = ["--preset", "micro", "--max-steps", str(RESUME_STEPS), "--checkpoint-interval", "20"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "microgpt", "train", *args, "--out", str(out), "--device", "cpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (out / "checkpoint" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_resume_after_the_cli_is_killed_is_the_uninterrupted_run(
    cache: Path, tmp_path: Path, straight: TrainResult, sig: int
) -> None:
    out = tmp_path / "run"
    proc = run_cli_until_checkpoint(cache, out, sig)
    stdout = proc.stdout.read() if proc.stdout else ""
    at = load_checkpoint(out / "checkpoint").trainer_state["step"]
    assert 0 < at < RESUME_STEPS, "the run finished before the signal; nothing was resumed"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # SIGTERM: finish the step, checkpoint, exit cleanly
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert f"stopped at step {at}" in stdout
    result = train("micro", out_dir=out, cache_dir=cache, train_overrides=SHORT, resume=True, device="cpu")
    assert_same_run(result, straight)


def test_adamw_stream_recipe_with_dropout_and_accumulation_resumes_exactly(
    cache: Path, tmp_path: Path
) -> None:
    """The other path through the loop: AdamW groups, warmup + cosine, clipping, grad
    accumulation, stream batches, and dropout, whose torch RNG state the checkpoint restores."""
    kwargs: dict[str, Any] = dict(
        cache_dir=cache,
        model_overrides={"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32, "dropout": 0.2},
        train_overrides={
            "max_steps": 24,
            "batch_size": 4,
            "grad_accum": 2,
            "warmup_steps": 4,
            "eval_steps": 2,
        },
        checkpoint_interval=1000,
        device="cpu",
    )
    whole = train("shakespeare-cpu", out_dir=tmp_path / "whole", **kwargs)
    assert whole.step == 24 and whole.losses[-1] < whole.losses[0]
    stop = threading.Event()

    class StopAt(TrainCallback):
        def on_step(self, record: dict[str, Any]) -> None:
            if record["step"] == 9:
                stop.set()

    part = train("shakespeare-cpu", out_dir=tmp_path / "part", callbacks=[StopAt()], stop_flag=stop, **kwargs)
    assert part.stopped and part.step == 9
    torch.manual_seed(0)  # whatever the caller does to the global RNG meanwhile, resume restores it
    rest = train("shakespeare-cpu", out_dir=tmp_path / "part", resume=True, **kwargs)
    assert rest.losses == whole.losses
    assert rest.val_losses == whole.val_losses
    ours, theirs = weights(rest.checkpoint), weights(whole.checkpoint)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_resume_refuses_a_changed_recipe_and_a_fresh_run_refuses_to_overwrite(
    cache: Path, straight: TrainResult
) -> None:
    with pytest.raises(ValueError, match=r"train\.lr was 0\.01, now 0\.02"):
        train(
            "micro",
            out_dir=straight.out_dir,
            cache_dir=cache,
            train_overrides={**SHORT, "lr": 0.02},
            resume=True,
        )
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train("micro", out_dir=straight.out_dir, cache_dir=cache, train_overrides=SHORT)
    with pytest.raises(ValueError, match="nothing to resume"):
        train("micro", out_dir=straight.out_dir / "elsewhere", cache_dir=cache, resume=True)


def test_learning_rate_schedules() -> None:
    micro = get_preset("micro").train
    assert [lr_at(s, micro) for s in (0, 500, 999)] == [0.01 * (1 - s / 1000) for s in (0, 500, 999)]
    tc = TrainConfig(max_steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10, lr_schedule="cosine")
    assert lr_at(0, tc) == pytest.approx(1e-4) and lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(10, tc) == pytest.approx(1e-3) and lr_at(60, tc) == pytest.approx(5.5e-4)
    assert lr_at(110, tc) == pytest.approx(1e-4)


def test_adamw_decays_only_matrices_that_are_not_embeddings() -> None:
    preset = get_preset("names", model={"bias": True})
    model = GPT(preset.model)
    decay, no_decay = build_optimizer(model, preset.train).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == preset.train.weight_decay > 0 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(".weight") and "norm" not in names[id(p)] for p in decay["params"])
    assert {"wte.weight", "wpe.weight"} <= {names[id(p)] for p in no_decay["params"]}
    assert any(names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert isinstance(
        build_optimizer(GPT(get_preset("micro").model), get_preset("micro").train), torch.optim.Adam
    )


def test_set_overrides_parse_as_json_and_name_unknown_keys() -> None:
    assert parse_overrides(["model.n_layer=2", "train.lr=3e-4", "train.lr_schedule=linear"]) == {
        "model": {"n_layer": 2},
        "train": {"lr": 3e-4, "lr_schedule": "linear"},
    }
    with pytest.raises(ValueError, match="unknown setting 'model.n_layers'"):
        parse_overrides(["model.n_layers=2"])
    with pytest.raises(ValueError, match="section must be model or train"):
        parse_overrides(["optim.lr=1"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "micro", "--set", "train.learning_rate=1"], "unknown setting 'train.learning_rate'"),
        (["--preset", "gpt-5"], "unknown preset 'gpt-5'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "MICROGPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "microgpt", "train", *args, "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("microgpt train: error:") and message in lines[0], (
        proc.stderr
    )
    assert not (tmp_path / "run").exists()
