"""The model zoo: every preset, one preset's shape and recipe, a custom variant trained and sampled.

    python examples/03_model_zoo.py                          # llama-tiny at toy size on names (seconds)
    python examples/03_model_zoo.py --preset names --steps 300

A preset is plain data (`microgpt.zoo.Preset`: a `GPTConfig` shape and a `TrainConfig` recipe,
with the source it follows); the model reads only config fields, never preset names, so a
variant is a preset with overrides. `microgpt zoo` prints the same table.
MICROGPT_EXAMPLE_STEPS sets the default training steps (the example tests set it small).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from microgpt.loading import load_model
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.settings import get_settings
from microgpt.textgen import complete
from microgpt.train.loop import train
from microgpt.zoo import PRESETS, get_preset

# llama-tiny's architecture (RoPE, RMSNorm, SwiGLU, grouped-query attention) at toy size.
TOY = {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64, "block_size": 32}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="llama-tiny", help="the preset to look at and train")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("MICROGPT_EXAMPLE_STEPS", "300")))
    args = parser.parse_args()
    table()
    inspect(args.preset)
    with tempfile.TemporaryDirectory(prefix="microgpt-example-") as tmp:
        train_variant(args.preset, args.steps, Path(tmp) / "run")


def table() -> None:
    # Built on the meta device, a model has shapes but no memory: even gpt2-small counts instantly.
    print(f"{'preset':<16}{'params':>14}  source")
    for preset in PRESETS.values():
        with torch.device("meta"):
            params = GPT(preset.model).num_params()
        print(f"{preset.name:<16}{params:>14,}  {preset.source[:70]}")


def inspect(name: str) -> None:
    preset = get_preset(name)
    cfg = preset.model
    print(f"\n{name}: {cfg.n_layer} layers, {cfg.n_embd} dims, {cfg.n_head} heads ({cfg.n_kv_head} for K/V)")
    print(f"  position {cfg.position}, norm {cfg.norm}, mlp {cfg.mlp}, tied embeddings {cfg.tie_embeddings}")
    print(
        f"  recipe: lr {preset.train.lr}, batch {preset.train.batch_size}, tokenizer {preset.train.tokenizer}"
    )

    # Overrides are validated: an unknown field or an impossible shape is an error naming it.
    for bad in ({"n_layers": 2}, {"n_embd": 65}):
        try:
            get_preset(name, model=bad)
        except ValueError as e:
            reason = " ".join(line.strip() for line in str(e).splitlines()[1:3])  # the field, the rule
            print(f"  override {bad} refused: {reason[:100]}")


def train_variant(name: str, steps: int, out: Path) -> None:
    # The same overrides as `microgpt train --preset llama-tiny --set model.n_layer=2 ...`; the
    # vocabulary comes from the data (names: a character tokenizer).
    result = train(
        name,
        out_dir=out,
        cache_dir=get_settings().cache,
        data="names",
        model_overrides=TOY,
        train_overrides={"max_steps": steps, "eval_interval": steps, "batch_size": 16, "tokenizer": "char"},
    )
    print(f"\n{name} at toy size: loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f} in {steps} steps")

    ckpt = load_model(result.checkpoint)  # the checkpoint carries its config: no preset needed
    params = [SamplingParams(temperature=0.8, seed=seed, max_new_tokens=16) for seed in range(4)]
    for sample in complete(ckpt.model, ckpt.text_tokenizer(), [""] * 4, params):
        print(" ", sample.text)


if __name__ == "__main__":
    main()
