"""LoRA: low-rank adapters on a frozen GPT's linear layers, saved apart and merged for serving.

    cfg = LoRAConfig(rank=8, alpha=16)
    names = apply_lora(model, cfg)       # wraps blocks.N.attn.qkv, ... and freezes every base weight
    ...train (the optimizer sees only the adapters)...
    save_adapters("adapters.safetensors", model, cfg)
    merged = merge_lora(model)           # a plain GPT again: W <- W + (alpha / rank) * B @ A

Design choices a reader must know:

- A wrapped layer computes `base(x) + scale * B(A(dropout(x)))` (Hu et al., 2021). A is
  drawn like nn.Linear's own init (kaiming uniform) and B starts at zero, so a freshly
  wrapped model computes exactly what the base model did.
- The adapters file is safetensors holding only the A and B matrices, named after the layer
  they adapt (`blocks.0.attn.qkv.lora_A`), with the LoRAConfig as JSON in its metadata:
  `load_adapters` needs nothing else to put them back on a base model.
- `merge_lora` replaces each wrapper by the plain nn.Linear it wrapped, with the update
  folded in, so parameter names are the base model's again and checkpoints, the native
  decoder and every exporter work on the merged model unchanged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from safetensors import safe_open
from torch import nn

from microgpt.atomic import atomic_write_bytes
from microgpt.stable_safetensors import safetensors_bytes

DEFAULT_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
_CONFIG_META_KEY = "microgpt.lora"


class LoRAConfig(BaseModel):
    """Which linear layers get adapters, and their shape: plain JSON data like every config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = list(DEFAULT_TARGETS)  # module-name suffixes, matched at a dot boundary

    @model_validator(mode="after")
    def _check(self) -> LoRAConfig:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module")
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """`base(x) + scale * (dropout(x) @ A.T) @ B.T`, with `base` (an nn.Linear) frozen."""

    def __init__(self, base: nn.Linear, cfg: LoRAConfig) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = cfg.scale
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(  # (r, in)
            torch.empty(cfg.rank, base.in_features, device=device, dtype=dtype)
        )
        self.lora_B = nn.Parameter(  # (out, r)
            torch.zeros(base.out_features, cfg.rank, device=device, dtype=dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T

    def merged(self) -> nn.Linear:
        """The wrapped nn.Linear with the update folded into its weight (in place)."""
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale  # (out, in)
            self.base.weight += delta.to(self.base.weight.dtype)
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def _targeted(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model` and wrap the targeted nn.Linear layers; their names."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; merge them first")
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _targeted(n, cfg.targets)]
    if not names:
        raise ValueError(f"no nn.Linear module matches the LoRA targets {cfg.targets}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg))
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone: `{layer}.lora_A` and `{layer}.lora_B` for every wrapped layer."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{name}.lora_A"] = module.lora_A.detach()
            out[f"{name}.lora_B"] = module.lora_B.detach()
    if not out:
        raise ValueError("the model has no LoRA adapters")
    return out


def adapters_bytes(model: nn.Module, cfg: LoRAConfig) -> bytes:
    """The adapters file's contents (see `save_adapters`)."""
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    meta = {"format": "pt", _CONFIG_META_KEY: json.dumps(cfg.model_dump(mode="json"))}
    return safetensors_bytes(tensors, meta)


def save_adapters(path: str | os.PathLike[str], model: nn.Module, cfg: LoRAConfig) -> Path:
    """Write the adapters as safetensors, the config in its metadata, atomically."""
    return atomic_write_bytes(path, adapters_bytes(model, cfg))


def read_adapters(path: str | os.PathLike[str]) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """The config and tensors of an adapters file; anything else is a ValueError naming it."""
    try:
        with safe_open(Path(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:  # SafetensorError, OSError, ... from the Rust parser
        raise ValueError(f"{path} is not a readable safetensors adapters file: {e}") from e
    if _CONFIG_META_KEY not in meta:
        raise ValueError(f"{path} holds no LoRA config in its metadata; it is not a microgpt adapters file")
    return LoRAConfig.model_validate_json(meta[_CONFIG_META_KEY]), tensors


def load_adapters(path: str | os.PathLike[str], model: nn.Module) -> LoRAConfig:
    """Put the adapters of `path` on `model` (wrapping it first if it has none); their config."""
    cfg, tensors = read_adapters(path)
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        apply_lora(model, cfg)
    mine = lora_state_dict(model)
    if mine.keys() != tensors.keys():
        missing, extra = sorted(mine.keys() - tensors.keys()), sorted(tensors.keys() - mine.keys())
        raise ValueError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, t in tensors.items():
            if mine[name].shape != t.shape:
                raise ValueError(
                    f"{path}: {name} is {tuple(t.shape)}, the model needs {tuple(mine[name].shape)}"
                )
            mine[name].copy_(t)
    return cfg


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and unwrap it, in place; returns `model`.

    The result has the base model's parameter names and modules, all trainable again.
    """
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
