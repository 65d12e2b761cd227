"""`microgpt inspect KIND CKPT_OR_REF --text ...`: the interpret reports as figures or JSON.

    microgpt inspect attention runs/shakespeare-cpu/checkpoint --text "ROMEO: " --out attn.png
    microgpt inspect lens names@production --text "emma" --out lens.html
    microgpt inspect patch CKPT --text "the cat sat" --corrupted "the dog sat" --out patch.json
    microgpt inspect heads CKPT --out heads.png

--out FILE.png draws the figure, FILE.html the figure with the JSON beside it, FILE.json
the report alone; without --out the JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import base64
import html
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from microgpt.atomic import atomic_write_bytes
from microgpt.model_source import add_model_arguments

KINDS = ("attention", "lens", "tokens", "patch", "heads", "embeddings")
NEEDS_TEXT = ("attention", "lens", "tokens", "patch")


def build_report(args: argparse.Namespace) -> tuple[BaseModel, Callable[[Any], Any]]:
    """The report for args.kind, and the function that draws it."""
    from microgpt import interpret
    from microgpt.interpret import figures
    from microgpt.loading import load_model

    if args.kind in NEEDS_TEXT and not args.text:
        raise ValueError(f"inspect {args.kind} needs --text")
    if args.kind == "patch" and not args.corrupted:
        raise ValueError("inspect patch needs --corrupted (a text as long in tokens as --text)")
    ckpt = load_model(args.checkpoint, precision=args.precision)
    model = ckpt.model
    if args.kind == "heads":
        return interpret.head_scores(
            model, seq_len=args.seq_len, batch=args.batch, seed=args.seed
        ), figures.heads_figure
    tokenizer = ckpt.text_tokenizer()
    if args.kind == "attention":
        return interpret.attention(model, tokenizer, args.text), figures.attention_figure
    if args.kind == "lens":
        return interpret.logit_lens(model, tokenizer, args.text), figures.lens_figure
    if args.kind == "tokens":
        return interpret.tokens(model, tokenizer, args.text, top_k=args.top_k), figures.tokens_figure
    if args.kind == "patch":
        report = interpret.patch(
            model, tokenizer, args.text, args.corrupted, answer=args.answer, foil=args.foil
        )
        return report, figures.patch_figure
    return interpret.embeddings(model, tokenizer, limit=args.limit), figures.embeddings_figure


def png_bytes(figure: Any) -> bytes:
    buf = BytesIO()
    figure.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


def cmd_inspect(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else None
    suffix = out.suffix.lower() if out else ".json"
    if suffix not in (".png", ".html", ".json"):
        raise ValueError(f"--out must end in .png, .html or .json, got {args.out}")
    report, draw = build_report(args)
    text = report.model_dump_json(indent=1)
    if out is None:
        print(text)
        return
    if suffix == ".json":
        data = text.encode()
    elif suffix == ".png":
        data = png_bytes(draw(report))
    else:
        image = base64.b64encode(png_bytes(draw(report))).decode()
        data = (
            f"<!doctype html><meta charset='utf-8'><title>microgpt inspect {args.kind}</title>"
            f"<h1>{args.kind}: {html.escape(str(args.checkpoint))}</h1>"
            f"<img alt='{args.kind}' src='data:image/png;base64,{image}' style='max-width:100%'>"
            f"<details><summary>JSON</summary><pre>{html.escape(text)}</pre></details>"
        ).encode()
    print(f"wrote {atomic_write_bytes(out, data)}")


def register(commands: argparse._SubParsersAction) -> None:
    inspect = commands.add_parser(
        "inspect", help="look inside a model: attention, logit lens, patching, heads"
    )
    inspect.add_argument("kind", choices=KINDS, help="which analysis")
    add_model_arguments(inspect)
    inspect.add_argument(
        "--text", help="the text to analyse (attention, lens, tokens, patch: the clean text)"
    )
    inspect.add_argument("--corrupted", help="patch: the corrupted text, as many tokens as --text")
    inspect.add_argument(
        "--answer", help="patch: the token whose logit difference is measured (default: clean top-1)"
    )
    inspect.add_argument("--foil", help="patch: the token it is compared against (default: corrupted top-1)")
    inspect.add_argument("--top-k", type=int, default=5, help="tokens: next-token guesses per position")
    inspect.add_argument("--seq-len", type=int, default=32, help="heads: random tokens before the repeat")
    inspect.add_argument("--batch", type=int, default=8, help="heads: random sequences")
    inspect.add_argument("--seed", type=int, default=0, help="heads: the random tokens' seed")
    inspect.add_argument(
        "--limit", type=int, default=1000, help="embeddings: the first N tokens of the vocabulary"
    )
    inspect.add_argument("--out", help="FILE.png (a figure), FILE.html (figure and JSON) or FILE.json")
    inspect.set_defaults(run=cmd_inspect)
