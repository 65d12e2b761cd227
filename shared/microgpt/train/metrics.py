"""metrics.jsonl: a run's one record of its history, and the callbacks that see each line as written.

    {"kind": "train", "step": 1, "loss": 3.29, "lr": 0.01, "tokens_per_s": 5120.0}
    {"kind": "eval", "step": 100, "val_loss": 2.61, "best_val_loss": 2.61}
    {"kind": "interpret", "step": 100, "induction_score": 0.08, "attention_entropy": 1.9}

The checkpoint does not copy it (`microgpt.train.state`): a resumed run first drops the lines
past its checkpoint's step (`truncate`), so the file reads as if the run had never stopped, and
the history a `TrainResult` reports is read back from it (`read_history`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

METRICS_FILE = "metrics.jsonl"


class TrainCallback(Protocol):
    """Hooks the loop calls: subclass and override any of them, or pass any object that has all
    four. Records are the metrics.jsonl lines. (The bodies return, so a subclass need not
    define every hook.)"""

    def on_step(self, record: dict[str, Any]) -> None:
        return None

    def on_eval(self, record: dict[str, Any]) -> None:
        return None

    def on_interpret(self, record: dict[str, Any]) -> None:
        return None

    def on_checkpoint(self, path: Path, step: int) -> None:
        return None


class MetricsLog:
    """Appends records to metrics.jsonl (None: this rank writes nothing) and hands each to the
    callbacks; a context manager that holds the file open for the run."""

    def __init__(self, path: Path | None, hooks: Sequence[TrainCallback]) -> None:
        self.path, self.hooks = path, list(hooks)
        self._file: IO[str] | None = None

    def __enter__(self) -> MetricsLog:
        if self.path is not None:
            self._file = open(self.path, "a")  # closed by __exit__
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def step(self, record: dict[str, Any]) -> None:
        self._write(record)
        for hook in self.hooks:
            hook.on_step(record)

    def eval(self, record: dict[str, Any]) -> None:
        self._write(record)
        for hook in self.hooks:
            hook.on_eval(record)

    def interpret(self, record: dict[str, Any]) -> None:
        self._write(record)
        for hook in self.hooks:
            hook.on_interpret(record)

    def checkpoint(self, path: Path, step: int) -> None:
        for hook in self.hooks:
            hook.on_checkpoint(path, step)

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()  # a kill loses at most the line being written


@dataclass
class History:
    """The losses metrics.jsonl records: one train loss per step from step 1, and the evaluations."""

    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)


def read_history(path: Path) -> History:
    """The history in `path`; empty when there is no file (a rank other than 0 on another host)."""
    history = History()
    for record in _records(path):
        if record.get("kind") == "train":
            history.losses.append(record["loss"])
        elif record.get("kind") == "eval":
            history.val_losses.append((int(record["step"]), float(record["val_loss"])))
    return history


def truncate(path: Path, step: int) -> None:
    """Keep the log lines up to `step`: those after it are redone by the resumed run."""
    if not path.is_file():
        return
    kept = [json.dumps(record) for record in _records(path) if record["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The well-formed records of `path`, skipping a line torn by a kill mid-write."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            yield record
