"""Export a checkpoint to ONNX, for runtimes without PyTorch (onnxruntime, browsers, mobile).

    microgpt export runs/names/checkpoint --format onnx --out runs/names-onnx

The result is a directory sealed like any checkpoint: `model.onnx` (input `idx`, int64
(batch, time); output `logits`, float32 (batch, time, vocab); batch and time are dynamic,
time at most the model's block_size), the tokenizer.json when the source has one, and a
config.json whose sha256s cover every file and whose metadata records
`{"export": {"format": "onnx", "opset", "file", "input", "output"}}`. It holds no
safetensors weights, so it is for running elsewhere, not for loading back into microgpt.

The graph is traced with torch's TorchScript exporter (`dynamo=False`: the dynamo one needs
onnxscript), through a wrapper whose forward(idx) returns only the logits. That exporter
lacks two things our model uses, so two ONNX translations are registered for the duration
of the export: RMSNorm (`aten::rms_norm`, spelled as mean-square, sqrt and divide) and
grouped-query attention (SDPA with `enable_gqa`: each KV head is repeated for its query
heads, then torch's own SDPA translation runs). Both are pinned by tests/test_export.py
against the eager model in onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from microgpt.model import GPT

# torch is imported by the functions that use it, so that `microgpt --help` stays fast.

FORMATS = ("onnx",)
ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 18
OPSETS = range(17, 21)  # 17: LayerNormalization is one op; 20: the TorchScript exporter's newest


def logits_only(gpt: GPT) -> nn.Module:
    """GPT.forward(idx) -> GPTOutput as forward(idx) -> logits (B, T, V), which a tracer can export."""
    import torch
    from torch import nn

    class LogitsOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = gpt

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.gpt(idx).logits

    return LogitsOnly().eval()


def export_onnx(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, opset: int | None = None
) -> Path:
    """Write the ONNX export of the float checkpoint `src` to the directory `dst` (atomically)."""
    import torch

    from microgpt.atomic import atomic_directory
    from microgpt.checkpoint import (
        MODEL_FILE,
        TOKENIZER_FILE,
        _check_replaceable,
        load_checkpoint,
        read_config,
        seal_derived,
    )

    src, dst = Path(src), Path(dst)
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise ValueError(f"ONNX opset {opset} is not supported; choose {OPSETS.start} to {OPSETS.stop - 1}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"--out must differ from the source checkpoint {src}")
    cfg = read_config(src)
    if MODEL_FILE not in cfg.files:
        raise ValueError(f"{src} holds no float weights ({MODEL_FILE}); export a float checkpoint")
    ckpt = load_checkpoint(src, dtype=torch.float32)
    _check_replaceable(dst)
    example = torch.zeros(1, min(2, ckpt.config.block_size), dtype=torch.long)
    metadata = {
        "format": "onnx",
        "opset": opset,
        "file": ONNX_FILE,
        "input": "idx",
        "output": "logits",
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
                logits_only(ckpt.model),
                (example,),
                str(tmp / ONNX_FILE),
                input_names=["idx"],
                output_names=["logits"],
                dynamic_axes={"idx": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}},
                opset_version=opset,
                dynamo=False,
            )
        if ckpt.tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_bytes((src / TOKENIZER_FILE).read_bytes())
        # Every file the exporter wrote (a model over 2 GB adds external weight files) is sealed.
        seal_derived(tmp, ckpt, {"export": metadata})
    return dst


def export_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], fmt: str = "onnx", *, opset: int | None = None
) -> Path:
    """Export `src` to `dst` in format `fmt` (only "onnx" so far)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    return export_onnx(src, dst, opset=opset)


# --- ONNX translations the TorchScript exporter lacks ----------------------------------------


class _onnx_translations:
    """Register the RMSNorm and GQA translations while an export runs, and remove them after."""

    def __init__(self, opset: int) -> None:
        self.opset = opset

    def __enter__(self) -> None:
        import torch

        torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm, self.opset)
        torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", _sdpa, self.opset)

    def __exit__(self, *exc: object) -> None:
        import torch

        for name in ("aten::rms_norm", "aten::scaled_dot_product_attention"):
            torch.onnx.unregister_custom_op_symbolic(name, self.opset)


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


# --- command line -----------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> None:
    out = export_checkpoint(args.checkpoint, args.out, args.format, opset=args.opset)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote the {args.format} export {out} ({size / 1e6:.1f} MB)")


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write an ONNX export of a checkpoint")
    export.add_argument("checkpoint", help="float checkpoint directory")
    export.add_argument("--format", choices=FORMATS, default="onnx")
    export.add_argument("--out", required=True, help="directory for the export")
    export.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    export.set_defaults(run=cmd_export)
