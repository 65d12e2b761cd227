"""Basic training: train a preset from Python, read its losses, sample from the checkpoint.

    python examples/01_basic_training.py                       # `micro` on names, 1,000 steps (seconds)
    python examples/01_basic_training.py --preset names --steps 500 --out runs/names

The same as `microgpt train --preset micro --data names` then `microgpt sample`, through the
library's functions, so a script can change the recipe, watch each step and use the result.
MICROGPT_EXAMPLE_STEPS sets the default of --steps (the example tests set it small).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from microgpt.loading import load_model
from microgpt.sampling import SamplingParams
from microgpt.settings import get_settings
from microgpt.textgen import complete
from microgpt.train.loop import TrainCallback, train


class PrintEvaluations(TrainCallback):
    """A callback sees every step and evaluation as it happens (the CLI's progress bar is one)."""

    def on_eval(self, record: dict[str, Any]) -> None:
        print(f"step {record['step']:>5}: validation loss {record['val_loss']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="micro", help="a zoo preset (see examples/03_model_zoo.py)")
    parser.add_argument("--data", default="names", help="a built-in data set or a text file")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("MICROGPT_EXAMPLE_STEPS", "1000")))
    parser.add_argument("--out", type=Path, help="run directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        run(args.preset, args.data, args.steps, args.out or Path(tmp) / "run")


def run(preset: str, data: str, steps: int, out: Path) -> None:

    # One call trains: the data set is tokenized once into shards under the cache (reused next
    # time), and `out` receives checkpoint/ (latest), best/ (lowest validation loss) and
    # metrics.jsonl. Overrides are checked: an unknown key is an error that names it.
    result = train(
        preset,
        out_dir=out,
        cache_dir=get_settings().cache,
        data=data,
        train_overrides={"max_steps": steps, "eval_interval": max(1, steps // 4)},
        callbacks=[PrintEvaluations()],
    )
    print(f"{result.step} steps in {result.wall_seconds:.1f} s, {result.tokens_per_second:,.0f} tokens/s")
    print(
        f"training loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}; checkpoint in {result.checkpoint}"
    )

    # The checkpoint is safetensors + JSON with its tokenizer; load it and continue empty
    # prompts (each sample starts at BOS and ends at EOS, i.e. one name). One seed per sample:
    # the same seed would give five times the same name.
    served = load_model(result.checkpoint)
    params = [SamplingParams(temperature=0.8, seed=seed) for seed in range(5)]
    samples = complete(served.model, served.text_tokenizer(), [""] * 5, params)
    for sample in samples:
        print(" ", sample.text)


if __name__ == "__main__":
    main()
