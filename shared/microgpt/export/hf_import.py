"""Import a GPT-2- or Llama-shaped transformers checkpoint as a microgpt checkpoint.

    microgpt import hf ./gpt2-like --out runs/imported    # then push, serve or finetune it

The inverse of `microgpt.export.hf`: Conv1D weights are transposed back, Llama's separate
q/k/v and gate/up projections are fused, and the config is read from config.json. A
directory that microgpt exported carries `microgpt_export.json`, whose config and tokenizer
are restored exactly (a model without biases or gains gets none back, after checking that the
export's stand-ins are still zeros and ones), so an export followed by an import gives back
the same tensors. Otherwise the tokenizer.json is kept when it is laid out as one of our
kinds, and the checkpoint has no tokenizer when it is not.

Only weights from safetensors are read; settings transformers has that we do not compute
(rope scaling, sliding windows, GPT-2's layer-wise attention scaling, ...) are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microgpt.config import GPTConfig
from microgpt.export.hf import GPT2_ACTIVATIONS, HF_MODEL_FILE, MANIFEST_FILE

if TYPE_CHECKING:
    import torch

    from microgpt.tokenizers import Tokenizer

# Settings whose non-default values change what the model computes and that we do not support.
_REFUSED: dict[str, dict[str, Any]] = {
    "gpt2": {
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "scale_attn_weights": True,
    },
    "llama": {"rope_scaling": None, "pretraining_tp": 1},
}


def import_hf(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write the microgpt checkpoint of the transformers checkpoint directory `src` to `dst`."""
    import torch
    from safetensors.torch import load_file

    from microgpt.checkpoint import save_checkpoint
    from microgpt.model import GPT
    from microgpt.tokenizers import tokenizer_from_json

    src = Path(src)
    config = _read_json(src / "config.json")
    arch = config.get("model_type")
    if arch not in ("gpt2", "llama"):
        raise ValueError(f"{src}: model_type {arch!r} is not one microgpt imports (gpt2, llama)")
    for key, default in _REFUSED[arch].items():
        if config.get(key, default) != default:
            raise ValueError(f"{src}: {key}={config[key]!r} has no counterpart in microgpt's model")
    if not (src / HF_MODEL_FILE).is_file():
        raise ValueError(f"{src} has no {HF_MODEL_FILE} (microgpt reads weights only from safetensors)")
    manifest = _read_json(src / MANIFEST_FILE) if (src / MANIFEST_FILE).is_file() else {}
    cfg = GPTConfig.model_validate(manifest["model"]) if manifest.get("model") else gpt_config(config)
    hf = load_file(src / HF_MODEL_FILE)
    with torch.random.fork_rng(devices=[]):
        model = GPT(cfg)
    model.load_state_dict(our_tensors(hf, cfg, arch), strict=True)
    tokenizer: Tokenizer | None = None
    if manifest.get("tokenizer"):
        tokenizer = tokenizer_from_json(manifest["tokenizer"])
    elif (src / "tokenizer.json").is_file():
        try:
            tokenizer = tokenizer_from_json(_read_json(src / "tokenizer.json"))
        except ValueError:
            tokenizer = None  # a tokenizer.json that is none of our kinds: the weights still import
    metadata = {**manifest.get("metadata", {}), "imported_from": {"format": "hf", "model_type": arch}}
    return save_checkpoint(dst, model, tokenizer=tokenizer, preset=manifest.get("preset"), metadata=metadata)


def gpt_config(config: dict[str, Any]) -> GPTConfig:
    """Our config for a transformers gpt2 or llama config.json."""
    if config["model_type"] == "gpt2":
        activation: dict[str, Any] = {v: k for k, v in GPT2_ACTIVATIONS.items()}
        activation["gelu_pytorch_tanh"] = "gelu_tanh"
        act = config.get("activation_function", "gelu_new")
        if act not in activation:
            raise ValueError(f"GPT-2 activation {act!r} has no counterpart in microgpt's MLPs")
        n_embd = config.get("n_embd", 768)
        return GPTConfig(
            vocab_size=config["vocab_size"],
            block_size=config.get("n_positions", 1024),
            n_layer=config.get("n_layer", 12),
            n_head=config.get("n_head", 12),
            n_embd=n_embd,
            mlp_hidden=config.get("n_inner") or 4 * n_embd,
            mlp=activation[act],
            norm_eps=config.get("layer_norm_epsilon", 1e-5),
            bias=True,
            tie_embeddings=config.get("tie_word_embeddings", True),
        )
    if config.get("attention_bias", False) != config.get("mlp_bias", False):
        raise ValueError("Llama with attention_bias != mlp_bias: microgpt has one bias switch for both")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama hidden_act {config['hidden_act']!r}: microgpt's SwiGLU uses silu")
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r} has no counterpart in microgpt's rotary positions")
    n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", n_embd // n_head) != n_embd // n_head:
        raise ValueError(
            f"head_dim {config['head_dim']} differs from hidden_size / heads; microgpt derives it"
        )
    return GPTConfig(
        vocab_size=config["vocab_size"],
        block_size=config.get("max_position_embeddings", 2048),
        n_layer=config["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=config.get("num_key_value_heads") or n_head,
        n_embd=n_embd,
        mlp_hidden=config["intermediate_size"],
        position="rope",
        rope_base=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        norm="rmsnorm",
        norm_eps=config.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        bias=bool(config.get("attention_bias", False)),
        tie_embeddings=config.get("tie_word_embeddings", False),
    )


def our_tensors(hf: dict[str, torch.Tensor], cfg: GPTConfig, arch: str) -> dict[str, torch.Tensor]:
    """transformers' tensors under our names and layouts; the inverse of `hf.hf_tensors`."""
    import torch

    from microgpt.model import GPT

    out: dict[str, torch.Tensor] = {}
    if arch == "gpt2":
        out["wte.weight"], out["wpe.weight"] = hf["transformer.wte.weight"], hf["transformer.wpe.weight"]
        for i in range(cfg.n_layer):
            ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[f"{ours}{a}.weight"], out[f"{ours}{a}.bias"] = (
                    hf[f"{theirs}{b}.weight"],
                    hf[f"{theirs}{b}.bias"],
                )
            for a, b in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.fc", "mlp.c_fc"),
                ("mlp.proj", "mlp.c_proj"),
            ):
                out[f"{ours}{a}.weight"] = hf[f"{theirs}{b}.weight"].T
                out[f"{ours}{a}.bias"] = hf[f"{theirs}{b}.bias"]
        out["norm_f.weight"], out["norm_f.bias"] = hf["transformer.ln_f.weight"], hf["transformer.ln_f.bias"]
    else:
        out["wte.weight"] = hf["model.embed_tokens.weight"]
        for i in range(cfg.n_layer):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            out[f"{ours}attn_norm.weight"] = hf[f"{theirs}input_layernorm.weight"]
            out[f"{ours}mlp_norm.weight"] = hf[f"{theirs}post_attention_layernorm.weight"]
            for kind in ("weight", "bias"):
                attn, mlp = f"{theirs}self_attn.", f"{theirs}mlp."
                if f"{attn}q_proj.{kind}" not in hf:
                    continue
                out[f"{ours}attn.qkv.{kind}"] = torch.cat([hf[f"{attn}{p}_proj.{kind}"] for p in "qkv"])
                out[f"{ours}attn.proj.{kind}"] = hf[f"{attn}o_proj.{kind}"]
                out[f"{ours}mlp.fc.{kind}"] = torch.cat(
                    [hf[f"{mlp}gate_proj.{kind}"], hf[f"{mlp}up_proj.{kind}"]]
                )
                out[f"{ours}mlp.proj.{kind}"] = hf[f"{mlp}down_proj.{kind}"]
        out["norm_f.weight"] = hf["model.norm.weight"]
    head = hf.get("lm_head.weight")
    out["lm_head.weight"] = out["wte.weight"] if cfg.tie_embeddings or head is None else head
    with torch.random.fork_rng(devices=[]):
        expected = GPT(cfg).state_dict()
    for name in set(out) - set(expected):  # stand-ins for what this config has none of
        neutral = 1.0 if name.endswith("weight") else 0.0
        if not torch.all(out.pop(name) == neutral):
            raise ValueError(f"{name} holds values that this microgpt config has no parameter for")
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"the checkpoint lacks tensors microgpt needs: {', '.join(missing[:5])}")
    return {name: t.float().contiguous() for name, t in out.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; not a transformers checkpoint directory") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
