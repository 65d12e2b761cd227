"""Exports: a checkpoint in the formats other runtimes load, each held to our logits.

| format | module | loaded by                                        | quantization             |
| ------ | ------ | ------------------------------------------------ | ------------------------ |
| hf     | hf     | transformers (GPT2LMHeadModel, LlamaForCausalLM) | f32                      |
| gguf   | gguf   | llama.cpp (`gpt2` and `llama` architectures)     | f32, f16, q8_0, q4_0     |
| onnx   | onnx   | onnxruntime, with a KV cache (or without)        | f32                      |

`export_checkpoint` writes one atomically and, when the runtime is installed, runs it on
parity rows (`microgpt.export.parity`) and records the report in the export's metadata.
`microgpt.export.hf_import` brings a transformers checkpoint back.
"""

from __future__ import annotations

import os

from microgpt.export.cli import register
from microgpt.export.formats import FORMATS, QUANTS
from microgpt.export.onnx import ONNX_FILE, export_onnx
from microgpt.export.source import Export


def export_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    fmt: str = "onnx",
    *,
    quant: str | None = None,
    opset: int | None = None,
    cache: bool = True,
    parity: bool = True,
    parity_rows: list[list[int]] | None = None,
) -> Export:
    """Export `src` to `dst` in `fmt`; `quant` is for gguf (default f32), `opset`/`cache` for onnx.

    The parity report is measured on `parity_rows` (token rows of equal length), by default
    on rows sampled from the model (see `microgpt.export.parity`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if quant is not None and quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; choose from {', '.join(QUANTS)}")
    if quant not in (None, "f32") and fmt != "gguf":
        raise ValueError(f"--quant {quant} is for gguf exports; {fmt} exports are float32")
    if opset is not None and fmt != "onnx":
        raise ValueError(f"--opset is for onnx exports, not {fmt}")
    if fmt == "onnx":
        return export_onnx(src, dst, opset=opset, cache=cache, parity=parity, parity_rows=parity_rows)
    if fmt == "hf":
        from microgpt.export.hf import export_hf

        return export_hf(src, dst, parity=parity, parity_rows=parity_rows)
    from microgpt.export.gguf import export_gguf

    return export_gguf(src, dst, quant=quant or "f32", parity=parity, parity_rows=parity_rows)


__all__ = ["FORMATS", "ONNX_FILE", "QUANTS", "Export", "export_checkpoint", "export_onnx", "register"]
