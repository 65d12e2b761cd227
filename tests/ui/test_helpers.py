"""The dashboard's pure helpers: chart downsampling, the token view, A/B divergence, precision refs."""

from __future__ import annotations

import math
import time

import numpy as np

from microgpt.clients.inference import TokenChoice
from microgpt.clients.trainer import MetricPoint
from services.ui.charts import MAX_POINTS, downsample, metric_frame
from services.ui.tokens import first_divergence, token_html


def test_downsampling_caps_the_points_and_keeps_every_spike() -> None:
    steps = np.arange(20_000)
    values = np.exp(-steps / 5000.0)
    values[12_345] = 50.0  # a loss blow-up at one step
    values[777] = -1.0
    x, y = downsample(steps, values)
    assert len(x) <= MAX_POINTS and 12_345 in x and 777 in x
    assert y.max() == 50.0 and y.min() == -1.0
    assert list(x) == sorted(x)
    few_x, few_y = downsample(steps[:10], values[:10])
    assert list(few_x) == list(range(10))


def test_a_job_with_20000_points_becomes_a_small_chart_table_quickly() -> None:
    points = [
        MetricPoint(step=s, kind="train", values={"loss": 3.0 / (1 + s), "lr": 1e-3, "tokens_per_s": 1000.0})
        for s in range(20_000)
    ] + [MetricPoint(step=s, kind="eval", values={"val_loss": 2.0}) for s in range(0, 20_000, 100)]
    started = time.perf_counter()
    frame = metric_frame(points, ["loss", "val_loss"], label="job")
    elapsed = time.perf_counter() - started
    assert set(frame["series"]) == {"job loss", "job val_loss"}
    assert len(frame) <= 2 * MAX_POINTS and frame["step"].max() >= 19_900
    print(f"20,000 points -> {len(frame)} rows in {elapsed * 1000:.0f} ms")


def tok(text: str, p: float, **top: float) -> TokenChoice:
    return TokenChoice(text=text, logprob=math.log(p), top={k: math.log(v) for k, v in top.items()})


def test_token_view_colours_by_probability_and_lists_the_alternatives_on_hover() -> None:
    html = token_html([tok("Ro", 0.9, Ro=0.9, Ra=0.05), tok("<&>", 0.01, x=0.5)], mark=1)
    assert html.count('class="tok"') == 2
    assert "hsl(108, 70%, 80%)" in html and "hsl(1, 70%, 80%)" in html  # green-ish, then red-ish
    assert "&#x27;Ra&#x27;: 5.0%" in html and "p=90.0%" in html  # the hover text
    assert "&lt;&amp;&gt;" in html and html.count("outline:2px") == 1


def test_first_divergence_is_the_first_differing_token_or_where_the_shorter_ends() -> None:
    a = [tok("a", 0.5), tok("b", 0.5), tok("c", 0.5)]
    assert first_divergence(a, a) is None
    assert first_divergence(a, [tok("a", 0.1), tok("x", 0.1), tok("c", 0.1)]) == 1
    assert first_divergence(a, a[:2]) == 2
