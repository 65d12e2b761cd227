"""Generated tokens as HTML coloured by probability, with the top alternatives on hover; A/B divergence.

The colour runs from red (the model gave the token little probability) to green (it was
nearly certain), as the llama.cpp server UI and SillyTavern show it; the `title` of each
token lists the alternatives the service returned in `logprobs`, so hovering shows them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from microgpt.clients.inference import TokenChoice


def probability(token: TokenChoice) -> float | None:
    return None if token.logprob is None else math.exp(token.logprob)


def colour(p: float | None) -> str:
    """An HSL background: hue 0 (red) at p=0 to 120 (green) at p=1; grey when unknown."""
    if p is None:
        return "hsl(0, 0%, 88%)"
    return f"hsl({round(120 * max(0.0, min(1.0, p)))}, 70%, 80%)"


def token_span(text: str, tip: str, background: str, data: str, extra_style: str = "") -> str:
    """One token as a coloured monospace span; `tip` shows on hover, `data` is a `data-*` attribute
    (kept so browser tests can read the value the colour stands for)."""
    shown = html.escape(text).replace("\n", "↵<br>").replace(" ", "&nbsp;") or "∅"
    return (
        f'<span class="tok" title="{html.escape(tip, quote=True)}" {data} '
        f'style="background:{background};{extra_style}border-radius:3px;padding:0 1px;'
        f'font-family:monospace">{shown}</span>'
    )


def token_strip(spans: Sequence[str]) -> str:
    """Spans in one wrapping line, spaced so their backgrounds do not touch."""
    return '<div style="line-height:1.9;word-wrap:break-word">' + "".join(spans) + "</div>"


def token_html(tokens: Sequence[TokenChoice], mark: int | None = None) -> str:
    """One span per token; the token at index `mark` (the first divergence) is outlined."""
    spans = []
    for i, t in enumerate(tokens):
        p = probability(t)
        alternatives = sorted(t.top.items(), key=lambda kv: -kv[1])
        tip = "\n".join(f"{alt!r}: {math.exp(lp):.1%}" for alt, lp in alternatives)
        tip = f"p={p:.1%}\n{tip}" if p is not None else tip
        outline = "outline:2px solid #d00;outline-offset:1px;" if i == mark else ""
        data_p = "" if p is None else f"{p:.4f}"
        spans.append(token_span(t.text, tip, colour(p), f'data-p="{data_p}"', outline))
    return token_strip(spans)


def first_divergence(a: Sequence[TokenChoice], b: Sequence[TokenChoice]) -> int | None:
    """The first position where the two answers' tokens differ; None when they are identical.

    When one answer is a prefix of the other, the divergence is where the shorter one ended.
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x.text != y.text:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
