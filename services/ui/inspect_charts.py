"""The Inspect page's interactive pieces: tokens coloured by surprisal, one attention map,
the embedding scatter and a training run's induction score, from `microgpt.interpret` reports.

The static grids (every layer × head, the logit lens, patching, head scores) are the CLI's
matplotlib figures (`microgpt.interpret.figures`), so the page and `microgpt inspect` draw
the same pictures; what needs hovering is drawn here with HTML and Altair.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from microgpt.clients.trainer import MetricPoint
from microgpt.interpret.schemas import AttentionReport, EmbeddingsReport, TokensReport
from services.ui.tokens import token_span, token_strip

MAP_HEIGHT = 380  # px of the enlarged attention map, whatever the number of tokens
MAX_BITS = 12.0  # surprisal at which the colour saturates (a 1-in-4096 token)


def surprisal_colour(bits: float | None) -> str:
    """White (expected) to red (surprising); grey for the first token, which nothing predicted."""
    if bits is None:
        return "hsl(0, 0%, 90%)"
    t = max(0.0, min(1.0, bits / MAX_BITS))
    return f"hsl(0, 80%, {round(97 - 40 * t)}%)"


def surprisal_html(report: TokensReport) -> str:
    """One span per token, coloured by how surprised the model was to read it (bits, from the
    position before); its `title` (shown on hover) gives that and what the model expected there."""
    spans = []
    for i, token in enumerate(report.tokens):
        bits = report.surprisal[i - 1] if i > 0 else None
        if i == 0:
            tip = "the first token: nothing predicts it"
        else:
            guesses = "\n".join(f"{c.token!r}: {c.prob:.1%}" for c in report.top_k[i - 1])
            tip = f"{token!r}: {bits:.2f} bits\nthe model expected:\n{guesses}"
        data_bits = "" if bits is None else f"{bits:.3f}"
        spans.append(token_span(token, tip, surprisal_colour(bits), f'data-bits="{data_bits}"'))
    return token_strip(spans)


def attention_map(report: AttentionReport, layer: int, head: int) -> alt.Chart:
    """One head's attention, query down and key across, with both tokens and the weight on hover."""
    tokens = report.tokens
    rows = [
        {"query": f"{q}:{tokens[q]!r}", "key": f"{k}:{tokens[k]!r}", "q": q, "k": k, "weight": w}
        for q, row in enumerate(report.patterns[layer][head])
        for k, w in enumerate(row)
        if k <= q
    ]
    order = [f"{i}:{t!r}" for i, t in enumerate(tokens)]
    axis = alt.Axis(labelFontSize=8 if len(tokens) > 24 else 10)
    return (
        alt.Chart(pd.DataFrame(rows), title=f"layer {layer}, head {head}", height=MAP_HEIGHT)
        .mark_rect()
        .encode(
            x=alt.X("key:N", sort=order, title="key", axis=axis),
            y=alt.Y("query:N", sort=order, title="query", axis=axis),
            color=alt.Color("weight:Q", scale=alt.Scale(scheme="blues", domain=[0, 1])),
            tooltip=["query", "key", alt.Tooltip("weight:Q", format=".3f")],
        )
    )


def embedding_scatter(report: EmbeddingsReport) -> alt.Chart:
    """The 2-D PCA of the token embeddings, each point's token on hover."""
    frame = pd.DataFrame([p.model_dump() for p in report.points])
    var = report.explained_variance
    return (
        alt.Chart(frame)
        .mark_circle(size=40, opacity=0.6)
        .encode(
            x=alt.X("x:Q", title=f"PC1 ({var[0]:.0%} of variance)"),
            y=alt.Y("y:Q", title=f"PC2 ({var[1]:.0%} of variance)"),
            tooltip=["token", "id"],
        )
        .interactive()
    )


def probe_frame(points: list[MetricPoint]) -> pd.DataFrame:
    """(step, value, metric) of the induction score and attention entropy a job recorded
    (`train.interpret_every`); empty when it recorded none."""
    rows = [
        {"step": p.step, "metric": name, "value": p.values[name]}
        for p in points
        for name in ("induction_score", "attention_entropy")
        if name in p.values
    ]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])
