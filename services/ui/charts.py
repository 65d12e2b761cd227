"""Metric series as tables a chart draws quickly, however many points a job logged.

A browser chart slows down with the points it draws, not with the steps a job ran, so each
series is cut to at most `MAX_POINTS` by min-max bucketing: the steps are split into equal
buckets and each keeps its lowest and highest point, so spikes (a loss blow-up) stay visible
where averaging or striding would hide them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import altair as alt
import numpy as np
import pandas as pd

from microgpt.clients.trainer import MetricPoint

MAX_POINTS = 600
SERIES = {"loss": "train", "val_loss": "eval", "lr": "train", "tokens_per_s": "train"}


def downsample(
    steps: Sequence[int], values: Sequence[float], max_points: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` of (steps, values), keeping each bucket's minimum and maximum, in step order."""
    x, y = np.asarray(steps), np.asarray(values, dtype=float)
    if len(x) <= max_points:
        return x, y
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, len(x), buckets + 1).astype(int)
    keep: list[int] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            chunk = y[lo:hi]
            keep.extend(sorted({lo + int(np.nanargmin(chunk)), lo + int(np.nanargmax(chunk))}))
    index = np.asarray(keep)
    return x[index], y[index]


def metric_frame(points: Iterable[MetricPoint], metrics: Sequence[str], label: str = "") -> pd.DataFrame:
    """A long table (step, value, metric, series) of `metrics` from a job's points, downsampled."""
    rows: dict[str, tuple[list[int], list[float]]] = {m: ([], []) for m in metrics}
    for p in points:
        for m in metrics:
            if p.kind == SERIES.get(m, p.kind) and m in p.values:
                rows[m][0].append(p.step)
                rows[m][1].append(p.values[m])
    frames = []
    for m, (steps, values) in rows.items():
        if steps:
            x, y = downsample(steps, values)
            name = f"{label} {m}".strip()
            frames.append(pd.DataFrame({"step": x, "value": y, "metric": m, "series": name, "job": label}))
    if not frames:
        return pd.DataFrame({"step": [], "value": [], "metric": [], "series": [], "job": []})
    return pd.concat(frames, ignore_index=True)


def line_chart(frame: pd.DataFrame, y_title: str, height: int = 260, colour: str = "series") -> alt.Chart:
    """Lines of `metric_frame`'s table, validation dashed and train solid; coloured by `colour`

    ("series": each metric of each job its own colour; "job": one colour per job).
    """
    return (
        alt.Chart(frame, height=height)
        .mark_line(strokeWidth=1.6)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format=",.4~g")),
            color=alt.Color(
                f"{colour}:N",
                title=None,
                legend=alt.Legend(orient="bottom", labelLimit=0) if frame[colour].nunique() > 1 else None,
            ),
            # Coloured by series, the colour legend already names each line: a second legend
            # for the dash would only repeat it.
            strokeDash=alt.StrokeDash(
                "metric:N", title=None, legend=None if colour == "series" else alt.Legend(orient="bottom")
            ),
            tooltip=["series:N", "step:Q", alt.Tooltip("value:Q", format=".4g")],
        )
    )
