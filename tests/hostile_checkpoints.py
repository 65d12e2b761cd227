"""The bad checkpoints of issue 16, built for real from a good one: each would once make a loader
unpickle, allocate without bound (n_embd=1e9 is a 108 GB embedding) or spend minutes building
layers (n_layer=100000), and must now be refused from config.json and the safetensors header.

`CASES` maps a case to the text its error must contain (the file and the field); the
checkpoint, library, registry and inference tests all use them.

    bad = hostile_checkpoint(good_dir, "n_layer", tmp_path / "bad")
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

CASES: dict[str, str] = {
    "pickle": "model.safetensors is a pickle-based file",
    "vocab_size": "model.vocab_size is -1",
    "n_embd": "model.n_embd is 1000000000.0",
    "block_size": f"model.block_size is {2**40}",
    "n_layer": "model.n_layer is 100000",
    # Within the bounds, but a model 1024 layers deep needs weights this file does not hold.
    "layers_without_weights": "model.safetensors does not match the model in config.json",
    # A header claiming a (2**20, 2**16) embedding whose bytes the file does not have.
    "header_lies": "model.safetensors: tensor 'wte.weight' is F32 (1048576, 65536)",
}
_CONFIG_CHANGES: dict[str, dict[str, object]] = {
    "vocab_size": {"vocab_size": -1},
    "n_embd": {"n_embd": 1e9},
    "block_size": {"block_size": 2**40},
    "n_layer": {"n_layer": 100000},
    "layers_without_weights": {"n_layer": 1024},
}


def hostile_checkpoint(good: Path, case: str, out: Path) -> Path:
    """A copy of the checkpoint directory `good` at `out`, made bad as `case` says."""
    shutil.copytree(good, out)
    config = json.loads((out / "config.json").read_text())
    weights = out / "model.safetensors"
    if case == "pickle":
        torch.save({"wte.weight": torch.zeros(2, 2)}, weights)
    elif case == "header_lies":
        data = weights.read_bytes()
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        header["wte.weight"]["shape"] = [2**20, 2**16]
        text = json.dumps(header).encode()
        weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])
    else:
        config["model"].update(_CONFIG_CHANGES[case])
    config["files"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out / "config.json").write_text(json.dumps(config))
    return out
