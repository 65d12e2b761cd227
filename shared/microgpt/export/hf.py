"""Hugging Face transformers exports: a directory `AutoModelForCausalLM.from_pretrained` loads.

    microgpt export runs/llama --format hf --out llama-hf
    AutoModelForCausalLM.from_pretrained("llama-hf"), AutoTokenizer.from_pretrained("llama-hf")

Two of our shapes have a transformers class that computes exactly what ours does:

- learned positions, LayerNorm, a GELU/ReLU MLP -> `GPT2LMHeadModel`. GPT-2 keeps its
  projections in Conv1D layers, (in, out), so our (out, in) weights are transposed; it
  always has biases, so a model without them gets zeros; `gelu` stays `gelu` (erf) and
  `gelu_tanh` becomes `gelu_new`.
- rotary positions, RMSNorm, SwiGLU (with grouped-query attention) -> `LlamaForCausalLM`.
  Its rotary embedding rotates halves, as ours does, so q and k need no permutation; our
  fused qkv and [gate; up] projections are split into its separate ones.

A norm without a learnable gain gets a gain of ones. Any other feature (a norm after the
embedding, no final norm, qk-norm, ...) has no counterpart in either class, and the export
is refused with a message naming it. The directory holds config.json,
generation_config.json, model.safetensors, tokenizer.json and tokenizer_config.json (see
`microgpt.export.hf_tokenizer`), and `microgpt_export.json`: the sha256 of every file, the
source's microgpt config (so `microgpt import hf` restores it exactly) and the parity report
that transformers itself gave.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microgpt.config import GPTConfig
from microgpt.export.formats import missing_features

if TYPE_CHECKING:
    import torch

    from microgpt.export.parity import LogitsFn
    from microgpt.export.source import Export
    from microgpt.model import GPT

HF_MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "microgpt_export.json"
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "relu2": "relu2"}


def hf_architecture(cfg: GPTConfig) -> str:
    """ "gpt2" or "llama": the transformers model our config maps to, or a ValueError naming
    every feature that has no counterpart there."""
    if cfg.position == "learned":
        arch, cls = "gpt2", "GPT2LMHeadModel"
        missing = missing_features(cfg, arch)
        if cfg.mlp not in GPT2_ACTIVATIONS:
            missing.append(f"the {cfg.mlp} MLP")
        if cfg.kv_heads != cfg.n_head:
            missing.append("grouped-query attention")
    else:
        arch, cls = "llama", "LlamaForCausalLM"
        missing = missing_features(cfg, arch)
    if missing:
        raise ValueError(
            f"no transformers model computes this shape: with {cfg.position} positions it maps to "
            f"{cls}, which has no counterpart for {', '.join(missing)}"
        )
    return arch


def hf_config(cfg: GPTConfig, arch: str, bos: int | None, eos: int | None) -> dict[str, Any]:
    """config.json for `cfg` as `arch`."""
    common: dict[str, Any] = {"vocab_size": cfg.vocab_size, "bos_token_id": bos, "eos_token_id": eos}
    common |= {"tie_word_embeddings": cfg.tie_embeddings, "dtype": "float32"}
    if arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **common,
            "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.hidden_size,
            "activation_function": GPT2_ACTIVATIONS[cfg.mlp],
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **common,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": 0.0,
    }


def hf_tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """Our weights under `arch`'s names and layouts (absent gains as ones, absent biases as zeros)."""
    import torch

    cfg = model.config
    sd = model.state_dict()

    def get(name: str, like: str | int) -> torch.Tensor:
        if name in sd:
            return sd[name]
        size = like if isinstance(like, int) else sd[like].shape[0]
        return (
            torch.ones(size)
            if name.endswith("norm.weight") or name.endswith("norm_f.weight")
            else torch.zeros(size)
        )

    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[f"{theirs}{b}.weight"] = get(f"{ours}{a}.weight", cfg.n_embd)
                out[f"{theirs}{b}.bias"] = get(f"{ours}{a}.bias", cfg.n_embd)
            for a, b in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                out[f"{theirs}{b}.weight"] = sd[f"{ours}{a}.weight"].T  # Conv1D: (in, out)
                out[f"{theirs}{b}.bias"] = get(f"{ours}{a}.bias", f"{ours}{a}.weight")
        out["transformer.ln_f.weight"] = get("norm_f.weight", cfg.n_embd)
        out["transformer.ln_f.bias"] = get("norm_f.bias", cfg.n_embd)
    else:
        q, kv, hidden = cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size, cfg.hidden_size
        out["model.embed_tokens.weight"] = sd["wte.weight"]
        for i in range(cfg.n_layer):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            out[f"{theirs}input_layernorm.weight"] = get(f"{ours}attn_norm.weight", cfg.n_embd)
            out[f"{theirs}post_attention_layernorm.weight"] = get(f"{ours}mlp_norm.weight", cfg.n_embd)
            for kind in ("weight", "bias") if cfg.bias else ("weight",):
                qkv = sd[f"{ours}attn.qkv.{kind}"]
                out[f"{theirs}self_attn.q_proj.{kind}"] = qkv[:q]
                out[f"{theirs}self_attn.k_proj.{kind}"] = qkv[q : q + kv]
                out[f"{theirs}self_attn.v_proj.{kind}"] = qkv[q + kv :]
                out[f"{theirs}self_attn.o_proj.{kind}"] = sd[f"{ours}attn.proj.{kind}"]
                fc = sd[f"{ours}mlp.fc.{kind}"]
                out[f"{theirs}mlp.gate_proj.{kind}"] = fc[:hidden]
                out[f"{theirs}mlp.up_proj.{kind}"] = fc[hidden:]
                out[f"{theirs}mlp.down_proj.{kind}"] = sd[f"{ours}mlp.proj.{kind}"]
        out["model.norm.weight"] = get("norm_f.weight", cfg.n_embd)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in out.items()}


def export_hf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    parity: bool = True,
    parity_rows: list[list[int]] | None = None,
) -> Export:
    """Write the transformers export of `src` to `dst` (atomically), with transformers' parity report."""
    from microgpt.atomic import atomic_directory
    from microgpt.checkpoint import CONFIG_FILE, TOKENIZER_FILE
    from microgpt.digest import directory_sha256s
    from microgpt.export.hf_tokenizer import hf_tokenizer_config, hf_tokenizer_json
    from microgpt.export.parity import measure
    from microgpt.export.source import Export, load_source
    from microgpt.stable_safetensors import save_safetensors

    ckpt = load_source(src, dst)
    arch = hf_architecture(ckpt.config)
    tok = ckpt.tokenizer
    bos, eos = (tok.bos_id, tok.eos_id) if tok is not None else (None, None)
    config = hf_config(ckpt.config, arch, bos, eos)
    with atomic_directory(dst) as tmp:
        save_safetensors(tmp / HF_MODEL_FILE, hf_tensors(ckpt.model, arch), {"format": "pt"})
        _write_json(tmp / CONFIG_FILE, config)
        generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": tok.pad_id if tok else None}
        _write_json(tmp / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
        if tok is not None:
            data = hf_tokenizer_json(tok)
            _write_json(tmp / TOKENIZER_FILE, data)
            _write_json(tmp / "tokenizer_config.json", hf_tokenizer_config(tok, data, ckpt.config.block_size))
        report = (
            measure(ckpt.model, parity_rows, "transformers", lambda: runtime_logits(tmp)) if parity else None
        )
        manifest = {
            "format": "hf",
            "architecture": arch,
            "files": directory_sha256s(tmp),
            "model": ckpt.config.model_dump(mode="json"),
            "preset": ckpt.preset,
            "metadata": ckpt.metadata,
            "tokenizer": tok.to_json() if tok is not None else None,
            "parity": report.to_json() if report else None,
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
    return Export(Path(dst), "hf", report)


def load_hf(path: str | os.PathLike[str]) -> Any:
    """transformers' model for an export directory, float32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()


def runtime_logits(path: str | os.PathLike[str]) -> LogitsFn:
    """A parity LogitsFn: rows through transformers' model for the export at `path`."""
    import torch

    model = load_hf(path)

    def logits(rows: list[list[int]]) -> Any:
        with torch.inference_mode():
            return model(torch.tensor(rows)).logits.float().numpy()

    return logits


def _write_json(path: Path, data: Any) -> None:
    """Deterministic JSON (same content, same bytes)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
