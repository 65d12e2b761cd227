"""One way to get a model to run: `load_model(path_or_ref, precision=..., device=...)`.

    ckpt = load_model("runs/names/checkpoint")                  # the weights as stored
    ckpt = load_model("names@production", precision="int8")     # pulled from the registry
    ckpt.model, ckpt.tokenizer, ckpt.precision, ckpt.weight_bytes

Every caller that runs a model (sample, chat and eval, evaluate jobs, the inference
service, benchmarks, exports) loads it here, so a version a quantize job pushed (a
directory holding only `model.int8.safetensors`) runs wherever a float one does, and the
tokenizer is checked in one place (`checkpoint.read_tokenizer`).

`path_or_ref` is a checkpoint directory, or a registry ref `name/3` or `name@alias`,
pulled (every file sha256-verified, cached) from `MICROGPT_REGISTRY_URL`; a directory
that exists wins over a ref spelled the same. `precision`:
- None: what the checkpoint holds: its float weights in their saved dtype, else its
  stored quantized weights;
- fp32 or bf16: the float weights, cast;
- int8 or int4: the stored quantized weights when the directory holds that mode, else
  the float weights quantized at load.
Training reads checkpoints with `checkpoint.load_checkpoint` instead: it needs the
float weights and the optimizer state, which only a float checkpoint has.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from microgpt.checkpoint import (
    MODEL_FILE,
    TOKENIZER_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_config,
    read_tokenizer,
    read_trainer_state,
)
from microgpt.model_source import checkpoint_path
from microgpt.precision import MODES, PRECISIONS, Precision
from microgpt.quantize import (
    FLOAT_DTYPES,
    build_quantized_model,
    quantize_model,
    read_quantized_tensors,
    weight_bytes,
    weights_file,
)

if TYPE_CHECKING:
    from microgpt.registry.client import RegistryClient
    from microgpt.tokenizers import Tokenizer

QUANTIZE_AT_LOAD_GROUP_SIZE = 32  # int4 at load: the group size `microgpt quantize` defaults to


@dataclass
class ServingModel(Checkpoint):
    """A loaded checkpoint (model in eval mode on its device) at the precision it runs at."""

    precision: Precision = field(kw_only=True)
    weight_bytes: int = field(kw_only=True)  # every weight tensor held: codes, scales, kernel copies
    quantized_from: Literal["stored", "load"] | None = field(default=None, kw_only=True)

    def text_tokenizer(self) -> Tokenizer:
        """The tokenizer, for callers that turn text into tokens; CheckpointError without one."""
        if self.tokenizer is None:
            raise CheckpointError(f"{self.path} has no {TOKENIZER_FILE}, so it cannot turn text into tokens")
        return self.tokenizer


def load_model(
    path_or_ref: str | os.PathLike[str],
    *,
    precision: Precision | None = None,
    device: str | torch.device = "cpu",
    registry: RegistryClient | None = None,
) -> ServingModel:
    """Load a checkpoint directory or registry ref at `precision` (see the module docstring).

    `registry` is the client that pulls refs (default: one from settings); callers that turn
    text into tokens take the tokenizer with `text_tokenizer()`.
    Every problem with the checkpoint is a CheckpointError (a ValueError) naming it.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    root = checkpoint_path(path_or_ref, registry=registry)
    cfg = read_config(root)
    stored = [m for m in MODES if weights_file(m) in cfg.files]
    if precision is None and MODEL_FILE not in cfg.files and stored:
        precision = stored[0]

    mode = precision if precision == "int8" or precision == "int4" else None
    if mode is not None and weights_file(mode) in cfg.files:
        tensors = read_quantized_tensors(root, cfg, mode)
        ckpt = Checkpoint(
            path=root,
            model=build_quantized_model(cfg.model, tensors, mode, device=device),
            config=cfg.model,
            tokenizer=read_tokenizer(root, cfg),
            preset=cfg.preset,
            metadata=dict(cfg.metadata),
            trainer_state=read_trainer_state(root, cfg),
            microgpt_version=cfg.microgpt_version,
        )
        return _serving(ckpt, mode, "stored")
    if MODEL_FILE not in cfg.files:
        wanted = precision or "any precision"
        held = ", ".join(stored) or "no"
        raise CheckpointError(f"{root} holds only {held} weights, so it cannot be loaded at {wanted}")
    if mode is not None:
        ckpt = load_checkpoint(root, dtype=torch.float32)
        ckpt.model = quantize_model(ckpt.model, mode, QUANTIZE_AT_LOAD_GROUP_SIZE).to(device)
        return _serving(ckpt, mode, "load")
    ckpt = load_checkpoint(root, device=device, dtype=None if precision is None else FLOAT_DTYPES[precision])
    saved = next(ckpt.model.parameters()).dtype
    if precision is None and saved not in (torch.float32, torch.bfloat16):
        ckpt.model.to(torch.float32)  # a dtype no precision names (fp16) runs as fp32
    return _serving(ckpt, precision or ("bf16" if saved == torch.bfloat16 else "fp32"), None)


def _serving(
    ckpt: Checkpoint, precision: Precision, quantized_from: Literal["stored", "load"] | None
) -> ServingModel:
    fields = {f.name: getattr(ckpt, f.name) for f in dataclasses.fields(Checkpoint)}
    return ServingModel(
        **fields, precision=precision, weight_bytes=weight_bytes(ckpt.model), quantized_from=quantized_from
    )
