"""Best-checkpoint tracking, early stopping and the torch.compile option of the training loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from microgpt.checkpoint import load_checkpoint
from microgpt.train import train
from microgpt.train.loop import BEST_DIR, METRICS_FILE

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "dropout": 0.0}


@pytest.fixture()
def names_file(tmp_path: Path) -> Path:
    path = tmp_path / "names.txt"
    path.write_text("\n".join(["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia"] * 40) + "\n")
    return path


def evals(out: Path) -> list[dict]:
    lines = (json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines())
    return [r for r in lines if r["kind"] == "eval"]


def test_best_checkpoint_holds_the_lowest_val_loss_weights(tmp_path: Path, names_file: Path) -> None:
    # A learning rate far too high makes val loss rise after its first dip: best != last.
    out = tmp_path / "run"
    result = train(
        "names",
        out_dir=out,
        cache_dir=tmp_path / "cache",
        data=str(names_file),
        model_overrides=TINY,
        train_overrides={"max_steps": 60, "eval_interval": 5, "eval_steps": 2, "lr": 0.05, "warmup_steps": 0},
        device="cpu",
    )
    records = evals(out)
    best = min(records, key=lambda r: r["val_loss"])
    assert result.best == out / BEST_DIR
    assert (result.best_step, result.best_val_loss) == (best["step"], best["val_loss"])
    assert records[-1]["best_val_loss"] == best["val_loss"]
    saved = load_checkpoint(out / BEST_DIR)
    assert saved.trainer_state is not None and saved.trainer_state["step"] == best["step"]
    assert best["step"] != records[-1]["step"]  # the last weights moved on from the best ones
    last = load_checkpoint(out / "checkpoint").model.state_dict()
    assert any(not torch.equal(t, last[k]) for k, t in saved.model.state_dict().items())


def test_early_stopping_ends_the_run_after_patience_evals_without_a_new_best(
    tmp_path: Path, names_file: Path
) -> None:
    out = tmp_path / "run"
    result = train(
        "names",
        out_dir=out,
        cache_dir=tmp_path / "cache",
        data=str(names_file),
        model_overrides=TINY,
        train_overrides={
            "max_steps": 400,
            "eval_interval": 5,
            "eval_steps": 1,
            "lr": 0.05,
            "early_stopping_patience": 2,
            "early_stopping_min_delta": 10.0,  # no improvement ever counts: stop at the 3rd eval
        },
        device="cpu",
    )
    assert result.early_stopped and result.stopped
    assert result.step == 15
    assert [r["step"] for r in evals(out)] == [5, 10, 15]
    assert load_checkpoint(out / "checkpoint").trainer_state["step"] == 15


def test_compiled_training_follows_the_eager_loss_curve(tmp_path: Path, names_file: Path) -> None:
    runs = {}
    for compiled in (False, True):
        runs[compiled] = train(
            "names",
            out_dir=tmp_path / f"run-{compiled}",
            cache_dir=tmp_path / "cache",
            data=str(names_file),
            model_overrides=TINY,
            train_overrides={"max_steps": 8, "eval_interval": 8, "eval_steps": 1, "compile": compiled},
            device="cpu",
        )
    torch.testing.assert_close(runs[True].losses, runs[False].losses, rtol=1e-4, atol=1e-4)
