"""GGUF exports for llama.cpp, written with the `gguf` package's writer.

    microgpt export runs/llama --format gguf --quant q8_0 --out llama-gguf

The directory holds `model.gguf` and, sealed like a checkpoint, the tokenizer.json and a
config.json whose metadata records the export (architecture, tensor types, fallbacks) and
the parity report llama.cpp gave. Two of our shapes map to llama.cpp architectures:

- `gpt2`: learned positions, LayerNorm, a GELU MLP. llama.cpp always computes the tanh form
  of GELU, so an erf-GELU model is exported with a note and its parity report shows the gap.
  Absent biases and gains are written as zeros and ones (llama.cpp requires them).
- `llama`: rotary positions, RMSNorm, SwiGLU, grouped-query attention. llama.cpp rotates
  adjacent pairs where we rotate halves, so the rows of q and k (and their biases) are
  permuted per head, as llama.cpp's own converter does for Hugging Face checkpoints.

`output.weight` is written even when the head is tied to the embedding. Norms and biases
stay F32; every matrix gets the asked type (F32, F16, Q8_0 or Q4_0), except that a matrix
whose rows are not a multiple of the quantization block (32 values) falls back to F16 and
the export reports which. Tokenizer metadata: `microgpt.export.gguf_vocab`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microgpt.config import GPTConfig
from microgpt.export.formats import QUANTS, missing_features

if TYPE_CHECKING:
    import numpy as np
    import torch

    from microgpt.export.parity import LogitsFn
    from microgpt.export.source import Export
    from microgpt.model import GPT
    from microgpt.tokenizers import Tokenizer

GGUF_FILE = "model.gguf"


def gguf_architecture(cfg: GPTConfig) -> str:
    """ "gpt2" or "llama", or a ValueError naming every feature llama.cpp's match lacks."""
    arch = "gpt2" if cfg.position == "learned" else "llama"
    missing = missing_features(cfg, arch)
    if arch == "gpt2" and cfg.mlp not in ("gelu", "gelu_tanh"):
        missing.append(f"the {cfg.mlp} MLP")
    if arch == "gpt2" and cfg.kv_heads != cfg.n_head:
        missing.append("grouped-query attention")
    if missing:
        raise ValueError(
            f"no llama.cpp architecture computes this shape: with {cfg.position} positions it maps to "
            f"{arch}, which has no counterpart for {', '.join(missing)}"
        )
    return arch


def gguf_tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's tensor names, in its layouts (torch's (out, in) shapes)."""
    import torch

    cfg = model.config
    sd = model.state_dict()

    def get(name: str, size: int, fill: float) -> torch.Tensor:
        return sd[name] if name in sd else torch.full((size,), fill)

    out = {"token_embd.weight": sd["wte.weight"]}
    if arch == "gpt2":
        out["position_embd.weight"] = sd["wpe.weight"]
    for i in range(cfg.n_layer):
        ours, blk = f"blocks.{i}.", f"blk.{i}."
        for a, b in (("attn_norm", "attn_norm"), ("mlp_norm", "ffn_norm")):
            out[f"{blk}{b}.weight"] = get(f"{ours}{a}.weight", cfg.n_embd, 1.0)
            if arch == "gpt2":
                out[f"{blk}{b}.bias"] = get(f"{ours}{a}.bias", cfg.n_embd, 0.0)
        rows = {
            "attn.qkv": sd[f"{ours}attn.qkv.weight"].shape[0],
            "mlp.fc": sd[f"{ours}mlp.fc.weight"].shape[0],
        }
        for kind in ("weight", "bias") if arch == "gpt2" or cfg.bias else ("weight",):
            qkv, proj, fc, down = (
                sd.get(f"{ours}{m}.{kind}", torch.zeros(rows.get(m, cfg.n_embd)))  # absent: bias only
                for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
            )
            out[f"{blk}attn_output.{kind}"], out[f"{blk}ffn_down.{kind}"] = proj, down
            if arch == "gpt2":
                out[f"{blk}attn_qkv.{kind}"], out[f"{blk}ffn_up.{kind}"] = qkv, fc
                continue
            q, kv, hidden = cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.hidden_size
            out[f"{blk}attn_q.{kind}"] = _interleave_rotary(qkv[:q], cfg.n_head)
            out[f"{blk}attn_k.{kind}"] = _interleave_rotary(qkv[q : q + kv], cfg.kv_heads)
            out[f"{blk}attn_v.{kind}"] = qkv[q + kv :]
            out[f"{blk}ffn_gate.{kind}"], out[f"{blk}ffn_up.{kind}"] = fc[:hidden], fc[hidden:]
    out["output_norm.weight"] = get("norm_f.weight", cfg.n_embd, 1.0)
    if arch == "gpt2":
        out["output_norm.bias"] = get("norm_f.bias", cfg.n_embd, 0.0)
    out["output.weight"] = sd["lm_head.weight"]  # written even when tied
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in out.items()}


def _interleave_rotary(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of q or k from our rotate-halves layout to llama.cpp's adjacent pairs, per head:
    row order (0, hs/2, 1, hs/2+1, ...) within each head (llama.cpp's converter's `permute`)."""
    return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def export_gguf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    quant: str = "f32",
    parity: bool = True,
    parity_rows: list[list[int]] | None = None,
) -> Export:
    """Write the GGUF export of `src` to `dst` (atomically), with llama.cpp's parity report."""
    from microgpt.atomic import atomic_directory
    from microgpt.checkpoint import TOKENIZER_FILE, seal_derived
    from microgpt.export.parity import measure
    from microgpt.export.source import Export, load_source

    if quant not in QUANTS:
        raise ValueError(f"unknown GGUF type {quant!r}; choose from {', '.join(QUANTS)}")
    ckpt = load_source(src, dst)
    cfg = ckpt.config
    arch = gguf_architecture(cfg)
    notes = []
    if arch == "gpt2" and cfg.mlp == "gelu":
        notes.append("llama.cpp's gpt2 computes the tanh form of GELU; this model uses the erf form")
    with atomic_directory(dst) as tmp:
        types, fallbacks = _write(tmp / GGUF_FILE, ckpt.model, arch, quant, ckpt.tokenizer, ckpt.preset)
        notes += [
            f"{name}: rows of {n} values are not whole {quant} blocks, so written as F16"
            for name, n in fallbacks
        ]
        if ckpt.tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_bytes((ckpt.path / TOKENIZER_FILE).read_bytes())
        report = None
        if parity:
            with contextlib.ExitStack() as stack:
                opened = lambda: runtime_logits(stack.enter_context(contextlib.closing(load_llama(tmp, cfg))))  # noqa: E731
                report = measure(ckpt.model, parity_rows, f"llama.cpp {quant}", opened)
        metadata = {
            "format": "gguf",
            "file": GGUF_FILE,
            "architecture": arch,
            "quant": quant,
            "tensor_types": types,
            "notes": notes,
            "parity": report.to_json() if report else None,
        }
        seal_derived(tmp, ckpt, {"export": metadata})
    return Export(Path(dst), "gguf", report, notes)


def _write(
    path: Path, model: GPT, arch: str, quant: str, tok: Tokenizer | None, preset: str | None
) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Write model.gguf; return {type name: tensor count} and the (tensor, row length) fallbacks."""
    import gguf

    from microgpt.export.gguf_vocab import gguf_vocab

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(preset or "microgpt")
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.hidden_size)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    # Without a tokenizer the vocabulary's size is the only place llama.cpp learns n_vocab from.
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
    else:
        writer.add_head_count_kv(cfg.kv_heads)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_rope_dimension_count(cfg.head_size)
        writer.add_rope_freq_base(cfg.rope_base)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
    writer.add_file_type(gguf.LlamaFileType[file_types[quant]])
    if tok is None:
        writer.add_tokenizer_model("none")
    else:
        vocab = gguf_vocab(tok, cfg.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's split regex
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_merges(vocab.merges)
        for role, i in vocab.special.items():
            getattr(writer, f"add_{role}_token_id")(i)
        writer.add_add_bos_token(tok.bos_id is not None)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
    types: dict[str, int] = {}
    fallbacks: list[tuple[str, int]] = []
    for name, t in gguf_tensors(model, arch).items():
        data, qtype = _encode(t.numpy(), quant)
        if qtype.name != quant.upper() and t.dim() == 2:
            fallbacks.append((name, t.shape[-1]))
        types[qtype.name] = types.get(qtype.name, 0) + 1
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return types, fallbacks


def _encode(array: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """The array's bytes in the asked type; vectors stay F32, and quantized rows that do not
    fill whole blocks fall back to F16."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if array.ndim == 1 or quant == "f32":
        return array.astype(np.float32), Q.F32
    qtype = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[quant]
    if qtype == Q.F16 or array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return array.astype(np.float16), Q.F16
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


# --- running the export in llama.cpp -----------------------------------------------------------


_LLAMA_LOAD = threading.Lock()


def open_in_llama_cpp(path: str | os.PathLike[str], **options: Any) -> Any:
    """llama.cpp's own `Llama` on an export directory's model.gguf, its extra weight buffers off.

    On CPUs with AMX, llama.cpp moves Q8_0/Q4_0 weights into AMX buffers whose matrix product
    crashes the process (a segfault in `ggml_backend_amx_mul_mat`, llama.cpp issue 20824). Its
    plain CPU kernels compute the same products. llama-cpp-python has no argument for the model
    parameter that turns those buffers off (`use_extra_bufts`), so the defaults it reads are
    replaced for this one load, under a lock."""
    import llama_cpp
    from llama_cpp import llama_cpp as llama_c

    defaults = llama_c.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _LLAMA_LOAD:
        llama_c.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(Path(path) / GGUF_FILE), **options)
        finally:
            llama_c.llama_model_default_params = defaults


def load_llama(path: str | os.PathLike[str], cfg: GPTConfig) -> Any:
    """llama.cpp on an export directory, logits at every position, for the parity report.

    The KV cache is F32: llama.cpp's default F16 cache alone moves logits by ~2e-3, which would
    hide what the file itself costs (the parity report measures the file, not the cache type)."""
    from llama_cpp import GGML_TYPE_F32

    return open_in_llama_cpp(
        path,
        n_ctx=cfg.block_size,
        n_batch=cfg.block_size,
        n_threads=1,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )


def runtime_logits(llm: Any) -> LogitsFn:
    """A parity LogitsFn: each row evaluated from an empty cache by the llama.cpp model `llm`."""
    import numpy as np

    def logits(rows: list[list[int]]) -> np.ndarray:
        out = []
        for row in rows:
            llm.reset()
            llm.eval(row)
            out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
        return np.stack(out)

    return logits
