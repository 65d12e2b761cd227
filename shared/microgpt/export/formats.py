"""The export formats and GGUF quantizations by name: what the CLI, the trainer's job schema and
the dashboard offer, in one place (imported without torch), and what the two architectures
every format maps onto (GPT-2 and Llama) cannot express."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microgpt.config import GPTConfig

FORMATS = ("hf", "gguf", "onnx")
QUANTS = ("f32", "f16", "q8_0", "q4_0")

# Each architecture's fixed choices: (GPTConfig field, value it must have, what a mismatch is called).
ARCHITECTURE_NEEDS = {
    "gpt2": [
        ("norm", "layernorm", "RMSNorm (GPT-2 has LayerNorm)"),
        ("embed_norm", False, "a norm after the embedding"),
        ("final_norm", True, "no final norm before the LM head"),
        ("qk_norm", False, "qk-norm"),
    ],
    "llama": [
        ("norm", "rmsnorm", "LayerNorm (Llama has RMSNorm)"),
        ("mlp", "swiglu", "a non-SwiGLU MLP"),
        ("embed_norm", False, "a norm after the embedding"),
        ("final_norm", True, "no final norm before the LM head"),
        ("qk_norm", False, "qk-norm"),
    ],
}


def missing_features(cfg: GPTConfig, arch: str) -> list[str]:
    """What `cfg` has that `arch` ("gpt2" or "llama") has no counterpart for, by its fixed choices."""
    return [why for field, value, why in ARCHITECTURE_NEEDS[arch] if getattr(cfg, field) != value]
