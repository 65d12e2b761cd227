"""A run's state: what a checkpoint's trainer_state.json holds so that resume continues bit for bit.

    state = RunState(preset="micro", data="names", data_sha256=..., model=mc, train=tc)
    save_checkpoint(..., trainer_state=state.to_json())          # rng captured by the caller
    state = RunState.from_json(ckpt.trainer_state, where=ckpt_dir)
    state.check_resumable(now)                                    # ValueError naming what changed

Three parts: the recipe the run is a pure function of (preset, data content, model and train
configs, lineage of a finetune), where it stands (step, tokens, best evaluation, evaluations
without a new best) and every RNG state. The loss history is not here: it lives in
`metrics.jsonl` alone (`microgpt.train.metrics`), which resume truncates to `step`, so a
checkpoint's size does not grow with the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microgpt.config import GPTConfig, TrainConfig

# 2: the loss history left the state for metrics.jsonl; format 1 states (which carry it) still
# resume, the history they carry is ignored.
STATE_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Settings that may change between a run and its resumption; any other change is refused.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "eval_interval",
        "eval_steps",
        "early_stopping_patience",
        "early_stopping_min_delta",
        "compile",
        "interpret_every",
    }
)
# What a finetune records of where it came from: the base checkpoint, its weights' digest, LoRA.
LINEAGE_KEYS = ("init_from", "base_sha256", "lora")
# The lineage that must match on resume (init_from is a path, which may move between machines).
CHECKED_LINEAGE = ("lora", "base_sha256")


@dataclass
class RunState:
    """One rank's run state; rank 0 writes it into every checkpoint (the others hold the same)."""

    preset: str
    data: str  # the data source as given
    data_sha256: str  # its content's digest: resume compares content, not paths
    model: GPTConfig
    train: TrainConfig
    lineage: dict[str, Any] = field(default_factory=dict)  # LINEAGE_KEYS of a finetune
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # target tokens trained on (not padding), over all ranks and resumptions
    best_step: int | None = None  # the best evaluation so far (out_dir/best holds its weights)
    best_val_loss: float | None = None
    bad_evals: int = 0  # evaluations in a row without a new best, for early stopping
    adapters_sha256: str | None = None  # a LoRA run's adapters file as last saved
    rng: dict[str, Any] = field(default_factory=dict)  # rng_state() at the last capture

    def record_eval(self, val_loss: float) -> bool:
        """Count an evaluation toward best and early stopping; True when it is a new best.

        A new best is any lower loss; only one lower by more than `early_stopping_min_delta`
        resets the count of evaluations without improvement.
        """
        improved = (
            self.best_val_loss is None or val_loss < self.best_val_loss - self.train.early_stopping_min_delta
        )
        new_best = self.best_val_loss is None or val_loss < self.best_val_loss
        if new_best:
            self.best_step, self.best_val_loss = self.step, val_loss
        self.bad_evals = 0 if improved else self.bad_evals + 1
        return new_best

    @property
    def patience_exhausted(self) -> bool:
        return 0 < self.train.early_stopping_patience <= self.bad_evals

    def to_json(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "step": self.step,
            "preset": self.preset,
            "data": self.data,
            "data_sha256": self.data_sha256,
            "model": self.model.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json"),
            "tokens": self.tokens,
            "best": None
            if self.best_step is None
            else {"step": self.best_step, "val_loss": self.best_val_loss},
            "bad_evals": self.bad_evals,
            "rng": self.rng,
            **self.lineage,
        }
        if self.adapters_sha256 is not None:
            state["adapters_sha256"] = self.adapters_sha256
        return state

    @classmethod
    def from_json(cls, state: dict[str, Any] | None, *, where: Path) -> RunState:
        """The state a checkpoint at `where` recorded; a ValueError when it holds none we read."""
        if state is None or state.get("format") not in READABLE_FORMATS:
            raise ValueError(f"cannot resume {where}: it holds no trainer state of format {STATE_FORMAT}")
        best = state.get("best")
        return cls(
            preset=state["preset"],
            data=state["data"],
            data_sha256=state["data_sha256"],
            model=GPTConfig.model_validate(state["model"]),
            train=TrainConfig.model_validate(state["train"]),
            lineage={k: state[k] for k in LINEAGE_KEYS if k in state},
            step=int(state["step"]),
            tokens=int(state.get("tokens", 0)),
            best_step=None if best is None else int(best["step"]),
            best_val_loss=None if best is None else float(best["val_loss"]),
            bad_evals=int(state.get("bad_evals", 0)),
            adapters_sha256=state.get("adapters_sha256"),
            rng=state["rng"],
        )

    def check_resumable(self, now: RunState, *, where: Path) -> None:
        """Refuse to continue this saved state under `now`'s recipe when anything but
        RESUMABLE_CHANGES differs, or when it is already past `now`'s max_steps."""
        saved_train, now_train = self.train.model_dump(), now.train.model_dump()
        changed = {k for k in now_train if saved_train[k] != now_train[k]} - RESUMABLE_CHANGES
        if changed:
            diff = diff_settings(
                {k: saved_train[k] for k in changed}, {k: now_train[k] for k in changed}, "train"
            )
            raise ValueError(f"cannot resume {where}: {diff}")
        if self.data_sha256 != now.data_sha256:
            raise ValueError(
                f"cannot resume {where}: it trained on {self.data!r}, other content than {now.data!r}"
            )
        for key in CHECKED_LINEAGE:
            was, is_now = self.lineage.get(key), now.lineage.get(key)
            if was != is_now:
                raise ValueError(f"cannot resume {where}: its {key} was {was!r}, now {is_now!r}")
        if self.step > now.train.max_steps:
            raise ValueError(
                f"cannot resume {where}: it is at step {self.step}, past max_steps {now.train.max_steps}"
            )

    def resumed_under(self, now: RunState) -> RunState:
        """This saved progress under `now`'s recipe (its resumable settings may have changed)."""
        return replace(
            self,
            preset=now.preset,
            data=now.data,
            data_sha256=now.data_sha256,
            model=now.model,
            train=now.train,
            lineage=now.lineage,
        )


def diff_settings(saved: dict[str, Any], now: dict[str, Any], section: str) -> str:
    """`section.key was A, now B; ...` for the keys whose values differ."""
    parts = [
        f"{section}.{k} was {saved[k]!r}, now {now[k]!r}" for k in sorted(saved) if saved[k] != now.get(k)
    ]
    return "the settings differ from the checkpoint's (" + "; ".join(parts) + ")"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as JSON-safe lists."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global generator is MT19937, whose legacy state is a tuple
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *(x.item() if hasattr(x, "item") else x for x in np_state[2:]),
        ],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
