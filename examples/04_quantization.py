"""Quantization: one checkpoint at fp32, bf16, int8 and int4: bytes, loss and samples side by side.

    python examples/04_quantization.py                       # trains `names` briefly (seconds)
    python examples/04_quantization.py --model runs/shakespeare/checkpoint --data shakespeare

Weight-only: the matrices are stored as int8 (one scale per output row) or int4 (a scale and a
zero per group of 32 columns); activations, norms and the KV cache stay float. A quantized
checkpoint is an ordinary checkpoint directory (`microgpt quantize SRC --mode int8 --out DST`),
so everything that loads a model (CLI, services, the registry) takes it as it is.
MICROGPT_EXAMPLE_STEPS sets how long the quick model trains (the example tests set it small).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from microgpt.evaluate import evaluate_checkpoint
from microgpt.loading import load_model
from microgpt.precision import Precision
from microgpt.quantize import quantize_checkpoint
from microgpt.sampling import SamplingParams
from microgpt.settings import get_settings
from microgpt.textgen import complete
from microgpt.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a float checkpoint directory (default: train `names`)")
    parser.add_argument("--data", default="names", help="the data set the loss is measured on")
    parser.add_argument("--prompt", default="", help="the text greedy decoding continues")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        src = args.model or quick_model(Path(tmp) / "run")
        run(src, Path(tmp), args.data, args.prompt)


def quick_model(out: Path) -> Path:
    steps = int(os.environ.get("MICROGPT_EXAMPLE_STEPS", "300"))
    result = train("names", out_dir=out, cache_dir=get_settings().cache, data="names",
                   train_overrides={"max_steps": steps, "eval_interval": steps})  # fmt: skip
    return result.checkpoint


def run(src: Path, tmp: Path, data: str, prompt: str) -> None:
    # Quantized checkpoints on disk: the float one's tokenizer and config, other weights.
    stored = {mode: quantize_checkpoint(src, tmp / mode, mode) for mode in ("int8", "int4")}
    for mode, path in stored.items():
        print(f"{mode} checkpoint: {', '.join(f.name for f in sorted(path.iterdir()))}")

    # One loader for every precision: fp32/bf16 cast the float weights, int8/int4 read the
    # stored codes (or quantize the float weights at load, when given the float checkpoint).
    runs: list[tuple[str, Path, Precision]] = [
        ("fp32", src, "fp32"),
        ("bf16", src, "bf16"),
        ("int8 (stored)", stored["int8"], "int8"),
        ("int8 (at load)", src, "int8"),
        ("int4 (stored)", stored["int4"], "int4"),
    ]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
    print(f"\n{'precision':<16}{'weights':>12}{'val loss':>10}  greedy sample")
    for label, path, precision in runs:
        ckpt = load_model(path, precision=precision)
        # The same validation windows for each: the loss says what the precision costs.
        loss = evaluate_checkpoint(
            path, data, cache_dir=get_settings().cache, precision=precision, max_batches=4
        ).loss
        text = complete(ckpt.model, ckpt.text_tokenizer(), [prompt], greedy)[0].text
        print(f"{label:<16}{ckpt.weight_bytes:>12,}{loss:>10.4f}  {(prompt + text).replace(chr(10), ' ')!r}")


if __name__ == "__main__":
    main()
