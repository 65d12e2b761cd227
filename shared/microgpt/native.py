"""The native CPU decode step: `csrc/native_decode.cpp`, built on first use.

A drop-in for `microgpt.generate.decode_step` on CPU: same arguments (token ids
(B, 1), a `KVCache`, the live rows), same result (next-token logits (B, V)), but
one C++ call per token instead of dozens of PyTorch ops, with matrix-vector
products that stream the fp32 or bf16 weights at memory bandwidth. Activations
and accumulation are fp32, so a bf16 model decodes as its bf16 weights would in
fp32 arithmetic.

The extension is compiled by `torch.utils.cpp_extension` (a C++ compiler and
ninja are needed; the build is cached per machine, about 20 s the first time).
"""

from __future__ import annotations

import functools
import weakref
from types import ModuleType

import torch
from torch.utils.cpp_extension import load

from microgpt.kv_cache import KVCache
from microgpt.model import GPT, Norm

SOURCE = __file__.rsplit("/", 1)[0] + "/csrc/native_decode.cpp"
NORMS = {"layernorm": 0, "rmsnorm": 1}
MLPS = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "relu2": 3, "swiglu": 4}


@functools.cache
def extension() -> ModuleType:
    """Compile (once per machine, then cached) and import the C++ extension."""
    return load(
        name="microgpt_native_decode",
        sources=[SOURCE],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )


def _matrix(w: torch.Tensor) -> torch.Tensor:
    """A weight matrix, in the model's dtype (the C++ side repacks it into tiles)."""
    return w.detach().contiguous()


def _vector(v: torch.Tensor | None) -> torch.Tensor:
    """Small vectors go to fp32; an absent one is an empty tensor (a null pointer in C++)."""
    return torch.empty(0) if v is None else v.detach().float().contiguous()


def _norm(norm: Norm | None) -> list[torch.Tensor]:
    return [_vector(None), _vector(None)] if norm is None else [_vector(norm.weight), _vector(norm.bias)]


class NativeDecodeStep:
    """The model's weights packed for the C++ step; call it like `decode_step` without the model.

    The packed copy is separate from the model's own weights (which prefill still uses),
    so a model served this way takes its weight memory twice.
    """

    def __init__(self, model: GPT) -> None:
        weight = model.wte.weight
        if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"the native step runs fp32 or bf16 weights on CPU, not {weight.dtype} on {weight.device}"
            )
        cfg = model.config
        self.dtype = weight.dtype
        shape = [
            cfg.n_layer, cfg.n_head, cfg.kv_heads, cfg.head_size, cfg.n_embd, cfg.hidden_size, cfg.vocab_size,
            NORMS[cfg.norm], MLPS[cfg.mlp], int(cfg.position == "rope"), int(cfg.qk_norm),
            int(cfg.embed_norm), int(cfg.final_norm),
        ]  # fmt: skip
        layers: list[torch.Tensor] = []  # 16 per layer, in the order native_decode.cpp reads them
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            layers += [
                *_norm(block.attn_norm), _matrix(attn.qkv.weight), _vector(attn.qkv.bias),
                *_norm(attn.q_norm if cfg.qk_norm else None), *_norm(attn.k_norm if cfg.qk_norm else None),
                _matrix(attn.proj.weight), _vector(attn.proj.bias),
                *_norm(block.mlp_norm), _matrix(mlp.fc.weight), _vector(mlp.fc.bias),
                _matrix(mlp.proj.weight), _vector(mlp.proj.bias),
            ]  # fmt: skip
        rope = cfg.position == "rope"
        globals_ = [
            _matrix(model.wte.weight),
            _vector(None).to(self.dtype) if rope else _matrix(model.wpe.weight),
            _vector(model.rope_cos if rope else None),
            _vector(model.rope_sin if rope else None),
            *_norm(model.embed_norm),
            *_norm(model.norm_f),
            _matrix(model.lm_head.weight),
        ]
        self._native = extension().NativeModel(layers, globals_, shape, cfg.norm_eps)

    def __call__(self, idx: torch.Tensor, cache: KVCache, live: torch.Tensor) -> torch.Tensor:
        if cache.k[0].dtype != self.dtype:
            raise ValueError(f"the KV cache is {cache.k[0].dtype} but the weights are {self.dtype}")
        logits = self._native.step(idx.reshape(-1), cache.lengths, cache.k, cache.v)
        cache.advance(live)
        return logits


_steps: weakref.WeakKeyDictionary[GPT, NativeDecodeStep] = weakref.WeakKeyDictionary()


def native_decode_step(model: GPT) -> NativeDecodeStep:
    """The packed step for this model, shared by every decoder of it."""
    if model not in _steps:
        _steps[model] = NativeDecodeStep(model)
    return _steps[model]
