"""Interpretability: look inside a model with `microgpt.interpret`, the library under `microgpt inspect`.

    python examples/05_interpretability.py                      # trains `micro` on names briefly (seconds)
    python examples/05_interpretability.py --model runs/names/checkpoint --text "emma" --out figures/

Any checkpoint directory or registry ref (`names@production`, `names/3:int8`) loads the same
way, at any precision, with no conversion code. Each analysis returns a pydantic report (the
JSON `POST /v1/interpret` answers); `microgpt.interpret.figures` draws it as the CLI does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from microgpt import interpret
from microgpt.interpret import figures
from microgpt.loading import load_model
from microgpt.settings import get_settings
from microgpt.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a checkpoint or registry ref (default: train `micro` for a moment)")
    # names are trained one to a sequence (BOS name EOS), so one name is what the model reads
    parser.add_argument("--text", default="annabella", help="the text to look at")
    parser.add_argument("--out", type=Path, help="folder for the PNG figures (default: none written)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        model = args.model or str(quick_model(Path(tmp) / "run"))
        run(model, args.text, args.out)


def quick_model(out: Path) -> Path:
    """A tiny model on names, 300 steps: enough for the tokens to mean something."""
    result = train("micro", out_dir=out, cache_dir=get_settings().cache, data="names",
                   train_overrides={"max_steps": 300, "eval_interval": 300})  # fmt: skip
    return result.checkpoint


def run(ref: str, text: str, out: Path | None) -> None:
    # One loader for everything: a run's checkpoint, a registry version, quantized or not.
    ckpt = load_model(ref)
    model, tokenizer = ckpt.model, ckpt.text_tokenizer()

    # How surprised the model is by each next token, and what it expected instead.
    tokens = interpret.tokens(model, tokenizer, text, top_k=3)
    for token, bits, top in zip(tokens.tokens, tokens.surprisal, tokens.top_k, strict=True):
        guesses = ", ".join(f"{c.token!r} {c.prob:.0%}" for c in top)
        surprise = "" if bits is None else f"next costs {bits:5.2f} bits"
        print(f"{token!r:>8}  {surprise:<22} expected: {guesses}")

    # The logit lens: each layer's residual stream read through the final norm and the
    # unembedding; the last row is the model's own prediction.
    lens = interpret.logit_lens(model, tokenizer, text)
    for name, top_tokens in zip(lens.layers, lens.top_token, strict=True):
        print(f"after {name:>5}: {''.join(top_tokens)!r}")

    # Head detectors on repeated random tokens: an induction head attends to the token that
    # followed the previous occurrence of the current one (chance is about 1/position).
    heads = interpret.head_scores(model, seq_len=min(16, model.config.block_size // 2))
    score, layer, head = max((s, i, h) for i, row in enumerate(heads.induction) for h, s in enumerate(row))
    print(f"best induction head: layer {layer} head {head}, score {score:.2f} (chance {heads.chance:.2f})")

    # The same reports as figures: one PNG per analysis, what `microgpt inspect` writes.
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        drawings = {
            "attention": figures.attention_figure(interpret.attention(model, tokenizer, text)),
            "lens": figures.lens_figure(lens),
            "tokens": figures.tokens_figure(tokens),
            "heads": figures.heads_figure(heads),
        }
        for name, figure in drawings.items():
            figure.savefig(out / f"{name}.png", dpi=120)
            print(f"wrote {out / f'{name}.png'}")


if __name__ == "__main__":
    main()
