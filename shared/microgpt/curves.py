"""Training curves from runs' `metrics.jsonl`: `microgpt plot RUN_DIR... --out curves.png`.

Train loss (light, every step, with a moving average on top) and validation loss (markers
at each evaluation) of several runs on one axis, one colour per run, so runs compare at a
glance. Runs that recorded the interpretability probe (`train.interpret_every`) get a second
panel beneath, on the same steps: the best head's induction score, so an induction head's
formation lines up with the bump in the loss it causes. Figures are built without pyplot
(no GUI backend, no global state).
"""

from __future__ import annotations

import argparse
import json
import os
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from microgpt.atomic import atomic_write_bytes
from microgpt.train.metrics import METRICS_FILE

if TYPE_CHECKING:  # matplotlib loads on first figure, not with the CLI
    from matplotlib.figure import Figure

SMOOTHING = 25  # steps in the train loss's moving average


class RunCurves(NamedTuple):
    """(step, value) pairs of one run: train loss, validation loss, best head's induction score."""

    train: list[tuple[int, float]]
    evals: list[tuple[int, float]]
    induction: list[tuple[int, float]]


def read_metrics(run_dir: str | os.PathLike[str]) -> RunCurves:
    """The curves `run_dir/metrics.jsonl` holds.

    Stricter than the training loop's own reader (`train.metrics.read_history`), which skips a
    line cut off by a crash on resume: a file given on the command line that is not the log a
    run wrote is refused with the line at fault."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} has no {METRICS_FILE}")
    curves = RunCurves([], [], [])
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        kind = record.get("kind")
        if kind == "train" and "loss" in record:
            curves.train.append((int(record["step"]), float(record["loss"])))
        elif kind == "eval" and "val_loss" in record:
            curves.evals.append((int(record["step"]), float(record["val_loss"])))
        elif kind == "interpret" and "induction_score" in record:
            curves.induction.append((int(record["step"]), float(record["induction_score"])))
    if not curves.train and not curves.evals:
        raise ValueError(f"{path} holds no train or eval losses")
    return curves


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def curves_figure(run_dirs: list[str]) -> Figure:
    from matplotlib.figure import Figure

    runs = [(Path(run).resolve().name, read_metrics(run)) for run in run_dirs]
    probed = any(curves.induction for _, curves in runs)
    fig = Figure(figsize=(7.0, 6.0 if probed else 4.2), layout="constrained")
    if probed:
        ax, lower = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    else:
        ax, lower = fig.subplots(), None
    for i, (name, curves) in enumerate(runs):
        color = f"C{i % 10}"
        if curves.train:
            steps, losses = zip(*curves.train, strict=True)
            ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(
                steps,
                moving_average(list(losses), SMOOTHING),
                color=color,
                linewidth=1.4,
                label=f"{name} train",
            )
        if curves.evals:
            steps, losses = zip(*curves.evals, strict=True)
            ax.plot(steps, losses, color=color, linestyle="--", marker="o", markersize=3, label=f"{name} val")
        if lower is not None and curves.induction:
            steps, scores = zip(*curves.induction, strict=True)
            lower.plot(steps, scores, color=color, marker=".", markersize=4, linewidth=1.2, label=name)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if lower is not None:
        lower.set_ylabel("induction score\n(best head)")
        lower.set_ylim(0.0, 1.0)
        lower.grid(alpha=0.3)
    (ax if lower is None else lower).set_xlabel("step")
    return fig


def save_figure(fig: Figure, out: str | os.PathLike[str]) -> Path:
    """Write a figure as PNG (or SVG/PDF by extension), atomically."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise ValueError(f"--out must end in .png, .svg or .pdf, got {out}")
    buf = BytesIO()
    fig.savefig(buf, format=suffix, dpi=150)
    return atomic_write_bytes(out, buf.getvalue())


def cmd_plot(args: argparse.Namespace) -> None:
    path = save_figure(curves_figure(args.runs), args.out)
    print(f"wrote {path}")


def register(commands: argparse._SubParsersAction) -> None:
    plot = commands.add_parser("plot", help="training curves of one or more runs (metrics.jsonl) as a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding metrics.jsonl")
    plot.add_argument("--out", default="curves.png", help="image to write (.png, .svg or .pdf)")
    plot.set_defaults(run=cmd_plot)
