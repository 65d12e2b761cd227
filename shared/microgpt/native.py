"""The native CPU decode step: `csrc/native_decode.cpp`, built on first use.

A drop-in for `microgpt.generate.decode_step` on CPU: same arguments (token ids
(B, 1), a `KVCache`, the live rows), same result (next-token logits (B, V)), but
one C++ call per token instead of dozens of PyTorch ops. One product kernel serves
a single stream (streaming the fp32, bf16 or int8 weights at memory bandwidth) and a
batch (each weight loaded once for up to four rows, on the CPU's bf16 and int8
dot-product instructions; on a CPU with AMX, bf16 weights at every batch size and int8
weights 16 rows at a time run on its tile unit; on a CPU with AVX2 only, on FMAs and
16-bit integer products). Accumulation is fp32: an fp32 model decodes as PyTorch
does, to ~1e-5; a bf16 model as torch's bf16 linear layers do (inputs rounded to
bf16); an int8 model (`microgpt.quantize`) as its dequantized weights would, to ~1e-5
(inputs of int8 products are 16-bit fixed point), but with a bf16 KV cache: at a batch,
attention streams the cache, which in fp32 would outweigh the int8 weights. A row's logits
never depend on the other rows of its batch.

The extension is compiled by `torch.utils.cpp_extension` (a C++ compiler and
ninja are needed; the build is cached per machine, about 20 s the first time).
"""

from __future__ import annotations

import weakref
from types import ModuleType

import torch
from torch import nn

from microgpt.cpp import build
from microgpt.kv_cache import KVCache
from microgpt.model import GPT, Norm
from microgpt.quantize import Int8Linear, QuantizedEmbedding

NORMS = {"layernorm": 0, "rmsnorm": 1}
MLPS = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "relu2": 3, "swiglu": 4}


def extension() -> ModuleType:
    return build("microgpt_native_decode")


def kernels() -> str:
    """The instruction sets the step's kernels use on this machine ("AVX2", "AVX-512 and AMX", ...):
    benchmark figures depend on them."""
    return extension().kernels()


def _matrix(module: nn.Module, scales: list[torch.Tensor]) -> torch.Tensor:
    """A Linear's or Embedding's matrix in its dtype (the C++ side repacks it into tiles);
    an int8 one appends its per-row scales to `scales`."""
    if isinstance(module, Int8Linear | QuantizedEmbedding):
        scales.append(module.scales.detach().float().contiguous())
        return module.qweight.detach().contiguous()
    weight = module.weight
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__} holds no weight matrix"  # int4
    return weight.detach().contiguous()


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
        int8 = isinstance(model.wte, QuantizedEmbedding) and model.wte.kind == "int8"
        weight = model.wte.qweight if int8 else getattr(model.wte, "weight", None)
        if not (
            isinstance(weight, torch.Tensor)
            and (int8 or weight.dtype in (torch.float32, torch.bfloat16))
            and weight.device.type == "cpu"
        ):
            what = f"{weight.dtype} on {weight.device}" if isinstance(weight, torch.Tensor) else "int4"
            raise ValueError(
                f"the native step runs fp32 or bf16 (or int8-quantized) weights on CPU, not {what}"
            )
        cfg = model.config
        # The KV cache's dtype: the weights', bf16 for int8 weights (as llama.cpp keeps f16 for Q8_0).
        self.dtype = torch.bfloat16 if int8 else weight.dtype
        scales: list[torch.Tensor] = []  # int8 only: qkv, proj, fc, mlp proj per layer; then wte, lm_head
        shape = [
            cfg.n_layer, cfg.n_head, cfg.kv_heads, cfg.head_size, cfg.n_embd, cfg.hidden_size, cfg.vocab_size,
            NORMS[cfg.norm], MLPS[cfg.mlp], int(cfg.position == "rope"), int(cfg.qk_norm),
            int(cfg.embed_norm), int(cfg.final_norm),
        ]  # fmt: skip
        layers: list[torch.Tensor] = []  # 16 per layer, in the order native_decode.cpp reads them
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            layers += [
                *_norm(block.attn_norm), _matrix(attn.qkv, scales), _vector(attn.qkv.bias),
                *_norm(attn.q_norm if cfg.qk_norm else None), *_norm(attn.k_norm if cfg.qk_norm else None),
                _matrix(attn.proj, scales), _vector(attn.proj.bias),
                *_norm(block.mlp_norm), _matrix(mlp.fc, scales), _vector(mlp.fc.bias),
                _matrix(mlp.proj, scales), _vector(mlp.proj.bias),
            ]  # fmt: skip
        rope = cfg.position == "rope"
        globals_ = [
            _matrix(model.wte, scales),
            _vector(None) if rope else _matrix(model.wpe, []),
            _vector(model.rope_cos if rope else None),
            _vector(model.rope_sin if rope else None),
            *_norm(model.embed_norm),
            *_norm(model.norm_f),
            _matrix(model.lm_head, scales),
        ]
        if int8 and len(scales) != 4 * cfg.n_layer + 2:
            raise ValueError("the native step runs a model whose matrices are all int8 or all float")
        self._native = extension().NativeModel(layers, globals_, scales, shape, cfg.norm_eps)

    def __call__(
        self, idx: torch.Tensor, cache: KVCache, live: torch.Tensor, threads: int | None = None
    ) -> torch.Tensor:
        """`threads`: the step's team of threads (default: torch's intra-op thread count)."""
        if cache.k[0].dtype != self.dtype:
            raise ValueError(f"the KV cache is {cache.k[0].dtype} but the weights are {self.dtype}")
        logits = self._native.step(idx.reshape(-1), cache.lengths, cache.k, cache.v, threads or 0)
        cache.advance(live)
        return logits


_steps: weakref.WeakKeyDictionary[GPT, NativeDecodeStep] = weakref.WeakKeyDictionary()


def native_decode_step(model: GPT) -> NativeDecodeStep:
    """The packed step for this model, shared by every decoder of it."""
    if model not in _steps:
        _steps[model] = NativeDecodeStep(model)
    return _steps[model]
