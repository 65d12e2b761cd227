"""`train.interpret_every`: the loop records the interpretability probe in metrics.jsonl without
changing the run, and the run state a checkpoint holds (RunState) round-trips through JSON with the
loss history left to metrics.jsonl."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from microgpt.checkpoint import load_checkpoint
from microgpt.train import TrainCallback, train
from microgpt.train.loop import METRICS_FILE
from microgpt.train.state import RunState

TINY = {"n_layer": 2, "n_embd": 16, "n_head": 2, "block_size": 16, "dropout": 0.1}  # dropout draws torch RNG
STEPS = {"max_steps": 6, "eval_interval": 3, "eval_steps": 1, "warmup_steps": 0}


@pytest.fixture()
def names_file(tmp_path: Path) -> Path:
    path = tmp_path / "names.txt"
    path.write_text("\n".join(["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia"] * 40) + "\n")
    return path


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def run(tmp_path: Path, names_file: Path, name: str, **kwargs: Any) -> Any:
    overrides = {**STEPS, **kwargs.pop("train_overrides", {})}
    return train(
        "names",
        out_dir=tmp_path / name,
        cache_dir=tmp_path / "cache",
        data=str(names_file),
        model_overrides=TINY,
        train_overrides=overrides,
        device="cpu",
        **kwargs,
    )


def test_interpret_every_records_the_probe_and_leaves_the_run_unchanged(
    tmp_path: Path, names_file: Path
) -> None:
    seen: list[dict[str, Any]] = []

    class Probes(TrainCallback):
        def on_interpret(self, record: dict[str, Any]) -> None:
            seen.append(record)

    plain = run(tmp_path, names_file, "plain")
    probed = run(tmp_path, names_file, "probed", train_overrides={"interpret_every": 2}, callbacks=[Probes()])

    rows = [r for r in records(probed.out_dir) if r["kind"] == "interpret"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert seen == rows
    for r in rows:
        assert set(r) == {"kind", "step", "induction_score", "attention_entropy"}
        assert 0.0 <= r["induction_score"] <= 1.0
        # Each attention row spans at most the 16 positions of the probe's repeated tokens.
        assert 0.0 < r["attention_entropy"] <= math.log(16)
    assert not any(r["kind"] == "interpret" for r in records(plain.out_dir))
    assert probed.losses == plain.losses  # the probe draws from its own generator: bit for bit
    assert probed.val_losses == plain.val_losses


def test_a_resumed_run_keeps_one_history_in_metrics_and_none_in_its_checkpoint(
    tmp_path: Path, names_file: Path
) -> None:
    straight = run(tmp_path, names_file, "straight", train_overrides={"interpret_every": 2})
    stop = threading.Event()

    class StopAt(TrainCallback):
        def on_step(self, record: dict[str, Any]) -> None:
            if record["step"] == 3:
                stop.set()

    kwargs: dict[str, Any] = {"train_overrides": {"interpret_every": 2}, "checkpoint_interval": 100}
    part = run(tmp_path, names_file, "part", callbacks=[StopAt()], stop_flag=stop, **kwargs)
    assert part.stopped and part.step == 3
    # A line past the checkpoint, as a kill after a step and before the next checkpoint leaves.
    with open(part.out_dir / METRICS_FILE, "a") as log:
        log.write(json.dumps({"kind": "train", "step": 99, "loss": 0.0}) + "\n")
    state = load_checkpoint(part.checkpoint).trainer_state
    assert state is not None and "losses" not in state and "val_losses" not in state

    rest = run(tmp_path, names_file, "part", resume=True, **kwargs)
    assert rest.losses == straight.losses and rest.val_losses == straight.val_losses
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records(rest.out_dir)]
    assert strip == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records(straight.out_dir)]

    saved = RunState.from_json(load_checkpoint(rest.checkpoint).trainer_state, where=rest.checkpoint)
    assert saved.step == 6 and saved.tokens > 0 and saved.best_step == straight.best_step
    assert RunState.from_json(saved.to_json(), where=rest.checkpoint) == saved


def test_a_format_1_state_with_its_loss_history_still_reads(tmp_path: Path, names_file: Path) -> None:
    result = run(tmp_path, names_file, "old")
    state = load_checkpoint(result.checkpoint).trainer_state
    assert state is not None
    old = {**state, "format": 1, "losses": result.losses, "val_losses": result.val_losses}
    del old["tokens"]
    read = RunState.from_json(old, where=result.checkpoint)
    assert read.step == 6 and read.tokens == 0 and read.best_val_loss == result.best_val_loss
    with pytest.raises(ValueError, match="no trainer state of format 2"):
        RunState.from_json({**state, "format": 3}, where=result.checkpoint)


def test_interpret_every_must_not_be_negative(tmp_path: Path, names_file: Path) -> None:
    with pytest.raises(ValueError, match="interpret_every must be >= 0, got -1"):
        run(tmp_path, names_file, "bad", train_overrides={"interpret_every": -1})
