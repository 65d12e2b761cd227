"""ONNX exports, for runtimes without PyTorch (onnxruntime, browsers, mobile).

    microgpt export runs/names/checkpoint --format onnx --out runs/names-onnx

Two graphs, one file `model.onnx` either way, float32:

- with a KV cache (the default), in optimum's convention so that one graph serves both
  prefill and token-by-token decode: inputs `input_ids`, `attention_mask` (over past and
  new tokens, 0 for padding) and `position_ids`, int64, plus `past_key_values.{i}.key` and
  `.value` (batch, kv_heads, past, head_size); outputs `logits` (batch, time, vocab) and
  `present.{i}.key|value`, the cache to pass back next step. A first call passes a past
  of length 0.
- without one (`cache=False`): input `idx` (batch, time), output `logits`.

Batch and lengths are dynamic; past plus new tokens may not exceed the model's block_size
(learned positions end there). The directory is sealed like a checkpoint: the tokenizer.json
when the source has one, and a config.json whose sha256s cover every file and whose metadata
records `{"export": {...}}` (graph, inputs, outputs, opset). It holds no safetensors weights,
so it is for running elsewhere, not for loading back into microgpt.

The graphs are traced with torch's TorchScript exporter (`dynamo=False`: the dynamo one needs
onnxscript). That exporter lacks two things our model uses, so two ONNX translations are
registered for the duration of the export: RMSNorm (`aten::rms_norm`, spelled as
mean-square, sqrt and divide) and grouped-query attention (SDPA with `enable_gqa`: each KV
head is repeated for its query heads, then torch's own SDPA translation runs). The cached
graph spells its attention out (the cache and the padding mask are inputs) with the model's
own projections, norms and MLPs. tests/export/test_onnx.py pins both graphs against the
eager model in onnxruntime.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from microgpt.export.source import Export
    from microgpt.model import GPT, MLP, Block

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 18
OPSETS = range(17, 21)  # 17: LayerNormalization is one op; 20: the TorchScript exporter's newest


def logits_only(gpt: GPT) -> nn.Module:
    """GPT.forward(idx) -> GPTOutput as forward(idx) -> logits (B, T, V), which a tracer can export."""
    from torch import nn

    class LogitsOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = gpt

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.gpt(idx).logits

    return LogitsOnly().eval()


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """`{prefix}.{i}.key`, `{prefix}.{i}.value` for every layer, in the graph's order."""
    return [f"{prefix}.{i}.{part}" for i in range(n_layer) for part in ("key", "value")]


def with_kv_cache(gpt: GPT) -> nn.Module:
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), the model's
    computation with the cache as explicit inputs and outputs (optimum's decoder-with-past)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    cfg = gpt.config
    groups = cfg.n_head // cfg.kv_heads
    scale = 1.0 / math.sqrt(cfg.head_size)

    class CachedDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = gpt

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            *past: Any,
        ) -> tuple[torch.Tensor, ...]:
            x = gpt.wte(input_ids)
            rope = None
            if cfg.position == "learned":
                x = x + gpt.wpe(position_ids)
            else:
                rope = (gpt.rope_cos[position_ids][:, None], gpt.rope_sin[position_ids][:, None])
            if gpt.embed_norm is not None:
                x = gpt.embed_norm(x)
            allowed = _allowed(input_ids, attention_mask)  # (B, 1, T, L)
            present: list[torch.Tensor] = []
            blocks: list[Block] = list(gpt.blocks)  # typed: a ModuleList yields plain Modules
            for i, block in enumerate(blocks):
                attn = block.attn
                B, T, _ = x.shape
                q, k, v = attn.qkv(block.attn_norm(x)).split([attn.q_width, attn.kv_width, attn.kv_width], -1)
                q = q.view(B, T, cfg.n_head, cfg.head_size).transpose(1, 2)
                k = k.view(B, T, cfg.kv_heads, cfg.head_size).transpose(1, 2)
                v = v.view(B, T, cfg.kv_heads, cfg.head_size).transpose(1, 2)
                if attn.qk_norm:
                    q, k = attn.q_norm(q), attn.k_norm(k)
                if rope is not None:
                    from microgpt.model import apply_rope

                    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                present += [k, v]
                if groups > 1:
                    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
                scores = (q * scale) @ k.transpose(-2, -1)
                scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
                y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, attn.q_width)
                x = x + attn.proj(y)
                x = x + _mlp(block.mlp, block.mlp_norm(x))
            if gpt.norm_f is not None:
                x = gpt.norm_f(x)
            return (gpt.lm_head(x), *present)

    return CachedDecoder().eval()


def _allowed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, L): new token t (the last T of L) may see key j if j is no later and not padding.

    Spelled with cumulative sums rather than Python lengths, so the traced graph stays
    valid for every past and new length."""
    import torch

    key_index = torch.cumsum(torch.ones_like(attention_mask), dim=-1)  # 1..L
    new_index = torch.cumsum(torch.ones_like(input_ids), dim=-1)  # 1..T
    query_index = new_index + (key_index[:, -1:] - new_index[:, -1:])  # L-T+1..L
    causal = key_index[:, None, :] <= query_index[:, :, None]  # (B, T, L)
    return (causal & attention_mask.bool()[:, None, :])[:, None]


def _mlp(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The block's MLP with torch's own activations (the CPU tanh-GELU kernel is not traceable)."""
    import torch.nn.functional as F

    h = mlp.fc(x)
    if mlp.kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        h = F.silu(gate) * up
    elif mlp.kind in ("gelu", "gelu_tanh"):
        h = F.gelu(h, approximate="tanh" if mlp.kind == "gelu_tanh" else "none")
    else:
        h = F.relu(h).square() if mlp.kind == "relu2" else F.relu(h)
    return mlp.proj(h)


def export_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    opset: int | None = None,
    cache: bool = True,
    parity: bool = True,
    parity_rows: list[list[int]] | None = None,
) -> Export:
    """Write the ONNX export of the float checkpoint `src` to the directory `dst` (atomically),
    with onnxruntime's parity report on `parity_rows` (default: sampled) in its metadata."""
    import torch

    from microgpt.atomic import atomic_directory
    from microgpt.checkpoint import TOKENIZER_FILE, seal_derived
    from microgpt.export.parity import measure
    from microgpt.export.source import Export, load_source

    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise ValueError(f"ONNX opset {opset} is not supported; choose {OPSETS.start} to {OPSETS.stop - 1}")
    ckpt = load_source(src, dst)
    cfg = ckpt.config
    if cache:
        module = with_kv_cache(ckpt.model)
        past = min(2, cfg.block_size - 1)  # traced with a past and new tokens of different lengths
        new = max(1, min(3, cfg.block_size - past))
        example: tuple[torch.Tensor, ...] = (
            torch.zeros(1, new, dtype=torch.long),
            torch.ones(1, past + new, dtype=torch.long),
            torch.arange(past, past + new)[None],
            *[torch.zeros(1, cfg.kv_heads, past, cfg.head_size)] * (2 * cfg.n_layer),
        )
        inputs = ["input_ids", "attention_mask", "position_ids", *cache_names(cfg.n_layer, "past_key_values")]
        outputs = ["logits", *cache_names(cfg.n_layer, "present")]
        axes = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"},
        }
        axes |= {name: {0: "batch", 2: "past_sequence"} for name in inputs[3:]}
        axes |= {name: {0: "batch", 2: "total_sequence"} for name in outputs[1:]}
    else:
        module = logits_only(ckpt.model)
        example = (torch.zeros(1, min(2, cfg.block_size), dtype=torch.long),)
        inputs, outputs = ["idx"], ["logits"]
        axes = {"idx": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
    metadata: dict[str, Any] = {
        "format": "onnx",
        "kv_cache": cache,
        "opset": opset,
        "file": ONNX_FILE,
        "inputs": inputs,
        "outputs": outputs,
        "torch": torch.__version__,
    }
    with atomic_directory(dst) as tmp:
        with _onnx_translations(opset), torch.no_grad(), warnings.catch_warnings():
            # The context-length check in GPT.hidden reads T as a Python bool; it holds for any T
            # up to block_size, which is all the exported graph serves. The TorchScript exporter
            # warns that it is deprecated: the dynamo one would need onnxscript (see above).
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx|microgpt")
            torch.onnx.export(
                module,
                example,
                str(tmp / ONNX_FILE),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        if ckpt.tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_bytes((ckpt.path / TOKENIZER_FILE).read_bytes())
        report = None
        if parity:
            report = measure(ckpt.model, parity_rows, "onnxruntime", lambda: runtime_logits(tmp, cfg))
        metadata["parity"] = report.to_json() if report else None
        # Every file the exporter wrote (a model over 2 GB adds external weight files) is sealed.
        seal_derived(tmp, ckpt, {"export": metadata})
    return Export(Path(dst), "onnx", report)


# --- running the export (parity) ----------------------------------------------------------------


def session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime CPU session for an export directory's model.onnx."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small graphs; threads would only add hand-offs
    return ort.InferenceSession(str(Path(path) / ONNX_FILE), options, providers=["CPUExecutionProvider"])


def empty_past(gpt_config: Any, batch: int) -> dict[str, np.ndarray]:
    """Past inputs of length 0, for a first (prefill) call of the cached graph."""
    import numpy as np

    shape = (batch, gpt_config.kv_heads, 0, gpt_config.head_size)
    return {name: np.zeros(shape, np.float32) for name in cache_names(gpt_config.n_layer, "past_key_values")}


def runtime_logits(path: str | os.PathLike[str], gpt_config: Any) -> Any:
    """A parity LogitsFn: whole rows through the export at `path` (cached graph, empty past)."""
    import numpy as np

    run = session(path)
    names = [i.name for i in run.get_inputs()]

    def logits(rows: list[list[int]]) -> np.ndarray:
        ids = np.asarray(rows, dtype=np.int64)
        if names == ["idx"]:
            return run.run(["logits"], {"idx": ids})[0]
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy(),
            **empty_past(gpt_config, ids.shape[0]),
        }
        return run.run(["logits"], feed)[0]

    return logits


# --- ONNX translations the TorchScript exporter lacks ----------------------------------------


@contextmanager
def _onnx_translations(opset: int) -> Iterator[None]:
    """Register the RMSNorm and GQA translations while an export runs, and remove them after."""
    import torch

    names: dict[str, Callable[..., Any]] = {
        "aten::rms_norm": _rms_norm,
        "aten::scaled_dot_product_attention": _sdpa,
    }
    for name, fn in names.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in names:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def _rms_norm(g: Any, x: Any, normalized_shape: Any, weight: Any, eps: Any) -> Any:
    """x / sqrt(mean(x^2 over the normalized dims) + eps) * weight."""
    import torch
    from torch.onnx import symbolic_helper as sh

    dims = sh._get_const(normalized_shape, "is", "normalized_shape")
    axes = list(range(-len(dims), 0))
    eps_value = None if sh._is_none(eps) else sh._maybe_get_const(eps, "f")
    if not isinstance(eps_value, float):
        eps_value = torch.finfo(torch.float32).eps  # F.rms_norm's default
    square = g.op("Mul", x, x)
    if g.opset >= 18:  # ReduceMean takes its axes as an input from opset 18, as an attribute before
        axes_t = g.op("Constant", value_t=torch.tensor(axes, dtype=torch.long))
        mean = g.op("ReduceMean", square, axes_t, keepdims_i=1)
    else:
        mean = g.op("ReduceMean", square, axes_i=axes, keepdims_i=1)
    eps_t = g.op("Constant", value_t=torch.tensor(eps_value, dtype=torch.float32))
    y = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, eps_t)))
    return y if sh._is_none(weight) else g.op("Mul", y, weight)


def _sdpa(
    g: Any,
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: Any = None,
    is_causal: Any = None,
    scale: Any = None,
    enable_gqa: Any = None,
) -> Any:
    """SDPA; with `enable_gqa`, k and v (B, nkv, S, hs) are first repeated to (B, nh, S, hs)."""
    import torch
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import symbolic_opset14

    if not sh._is_none(enable_gqa) and sh._maybe_get_const(enable_gqa, "b"):
        n_head, n_kv_head = sh._get_tensor_sizes(q)[1], sh._get_tensor_sizes(k)[1]
        k, v = (_repeat_kv(g, t, n_head, n_head // n_kv_head) for t in (k, v))
    no_gqa = g.op("Constant", value_t=torch.tensor(False))
    return symbolic_opset14.scaled_dot_product_attention(
        g, q, k, v, attn_mask, dropout_p, is_causal, scale, no_gqa
    )


def _repeat_kv(g: Any, t: Any, n_head: int, groups: int) -> Any:
    """(B, nkv, S, hs) -> (B, nh, S, hs) by broadcast; query head h reads KV head h // groups."""
    import torch
    from torch.onnx import symbolic_helper as sh

    seq_and_head = sh._slice_helper(g, g.op("Shape", t), axes=[0], starts=[2], ends=[4])
    target = g.op("Concat", g.op("Constant", value_t=torch.tensor([0, n_head])), seq_and_head, axis_i=0)
    t = sh._unsqueeze_helper(g, t, [2])
    t = g.op("Expand", t, g.op("Constant", value_t=torch.tensor([1, 1, groups, 1, 1])))
    return g.op("Reshape", t, target)  # 0: keep B
