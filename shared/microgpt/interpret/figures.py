"""Matplotlib figures of the interpret reports, for `microgpt inspect --out FILE.png`.

Each function takes a report (the JSON the API returns, so a figure can be drawn from a
saved result too) and returns a `matplotlib.figure.Figure`. Figures are built without
pyplot: no global state, no GUI backend, safe in a server thread.
"""

from __future__ import annotations

import math

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from microgpt.interpret.schemas import (
    AttentionReport,
    EmbeddingsReport,
    HeadsReport,
    LensReport,
    PatchReport,
    TokensReport,
)

MAX_LABELS = 48  # beyond this many tokens, axis labels overlap; ticks are left off


def shown(token: str) -> str:
    """A token as a tick label: whitespace made visible."""
    return token.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥") or "∅"


def _label_axes(ax: Axes, rows: list[str] | None, cols: list[str] | None, size: float = 7) -> None:
    for labels, set_ticks, set_labels in (
        (cols, ax.set_xticks, ax.set_xticklabels),
        (rows, ax.set_yticks, ax.set_yticklabels),
    ):
        if labels is None or len(labels) > MAX_LABELS:
            set_ticks([])
        else:
            set_ticks(range(len(labels)))
            set_labels([shown(t) for t in labels], fontsize=size)


def attention_figure(report: AttentionReport) -> Figure:
    """A layer × head grid of attention maps (query down, key across)."""
    n_layer, n_head = len(report.patterns), len(report.patterns[0])
    cell = 1.6 if len(report.tokens) <= 24 else 2.2
    fig = Figure(figsize=(cell * n_head + 0.6, cell * n_layer + 0.6), layout="constrained")
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    labels = report.tokens if len(report.tokens) <= 24 else None
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(report.patterns[layer][head], cmap="Blues", vmin=0.0, vmax=1.0)
            _label_axes(ax, labels if head == 0 else None, labels if layer == n_layer - 1 else None, 5)
            ax.set_title(f"L{layer} H{head}", fontsize=7)
    fig.suptitle("attention (query ↓, key →)", fontsize=9)
    return fig


def lens_figure(report: LensReport) -> Figure:
    """Layers × positions, coloured by p(true next token), each cell labelled with its top-1 guess."""
    T = len(report.tokens)
    fig = Figure(figsize=(max(4.0, 0.45 * T + 1.5), 0.42 * len(report.layers) + 1.6), layout="constrained")
    ax = fig.subplots()
    grid = [[p if p is not None else math.nan for p in row] for row in report.true_prob]
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    if T <= MAX_LABELS:
        for layer, row in enumerate(report.top_token):
            for pos, token in enumerate(row):
                light = grid[layer][pos] > 0.6  # viridis turns yellow: dark text there
                color = "black" if light else "white"
                ax.text(pos, layer, shown(token), ha="center", va="center", fontsize=6, color=color)
    _label_axes(ax, report.layers, report.tokens)
    ax.set_xlabel("position (input token)")
    ax.set_ylabel("residual stream after layer")
    fig.colorbar(image, ax=ax, label="p(true next token)")
    ax.set_title("logit lens: top-1 guess per layer", fontsize=9)
    return fig


def tokens_figure(report: TokensReport) -> Figure:
    """Surprisal (bits) of each next token, labelled with the token and the model's top guess."""
    T = len(report.tokens)
    fig = Figure(figsize=(min(16.0, max(4.0, 0.35 * T + 1.5)), 3.2), layout="constrained")
    ax = fig.subplots()
    bits = [s if s is not None else 0.0 for s in report.surprisal[:-1]]
    nxt = report.tokens[1:]
    ax.bar(range(len(bits)), bits, color=[_heat(b, max(bits, default=1.0)) for b in bits])
    _label_axes(ax, None, nxt)
    ax.set_xlabel("next token")
    ax.set_ylabel("surprisal (bits)")
    if report.mean_loss is not None:
        ax.set_title(f"per-token surprisal (mean loss {report.mean_loss:.3f} nats)", fontsize=9)
    return fig


def _heat(value: float, top: float) -> tuple[float, float, float]:
    t = 0.0 if top <= 0 else min(1.0, value / top)
    return (0.95, 0.95 - 0.7 * t, 0.95 - 0.8 * t)


def patch_figure(report: PatchReport) -> Figure:
    """Recovered fraction per (layer, position) of the residual stream, and per head."""
    T, n_layer = len(report.clean_tokens), len(report.residual)
    n_head = len(report.heads[0])
    fig = Figure(figsize=(max(5.0, 0.4 * T + 0.4 * n_head + 3), 0.45 * n_layer + 2.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[max(T, 1), max(n_head, 1) + 1])
    kwargs = {"cmap": "RdBu", "vmin": -1.0, "vmax": 1.0, "aspect": "auto", "origin": "lower"}
    left.imshow(report.residual, **kwargs)
    labels = [
        c if c == d else f"{c}/{d}" for c, d in zip(report.clean_tokens, report.corrupted_tokens, strict=True)
    ]
    _label_axes(left, [str(i) for i in range(n_layer)], labels)
    left.set_xlabel("position (clean/corrupted)")
    left.set_ylabel("residual stream entering layer")
    image = right.imshow(report.heads, **kwargs)
    _label_axes(right, None, [str(h) for h in range(n_head)])
    right.set_xlabel("head (all positions)")
    fig.colorbar(image, ax=right, label="logit difference recovered")
    fig.suptitle(f"activation patching: {shown(report.answer)!r} vs {shown(report.foil)!r}", fontsize=9)
    return fig


def heads_figure(report: HeadsReport) -> Figure:
    """Previous-token, duplicate-token and induction scores, layer × head."""
    fig = Figure(figsize=(9.0, 0.4 * len(report.induction) + 2.0), layout="constrained")
    axes = fig.subplots(1, 3)
    grids = (report.previous_token, report.duplicate_token, report.induction)
    for ax, name, grid in zip(axes, ("previous token", "duplicate token", "induction"), grids, strict=True):
        image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
        ax.set_title(f"{name} (best {max(max(r) for r in grid):.2f})", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(grid[0])))
        ax.set_yticks(range(len(grid)))
    fig.colorbar(image, ax=axes[-1], label="mean attention")
    title = f"head detectors on {report.batch} × repeated {report.seq_len} random tokens"
    fig.suptitle(f"{title} (chance {report.chance:.3f})", fontsize=9)
    return fig


def embeddings_figure(report: EmbeddingsReport) -> Figure:
    """The token embeddings on their first two principal components, each point labelled."""
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.subplots()
    xs = [p.x for p in report.points]
    ys = [p.y for p in report.points]
    ax.scatter(xs, ys, s=6, alpha=0.5)
    if len(report.points) <= 300:
        for p in report.points:
            ax.annotate(shown(p.token), (p.x, p.y), fontsize=7)
    var = report.explained_variance
    ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({var[1]:.0%} of variance)")
    ax.set_title("token embeddings, 2-D PCA", fontsize=9)
    return fig
