"""Looking inside a model: attention, the logit lens, attribution, patching, head detectors.

    from microgpt.loading import load_model
    from microgpt import interpret
    ckpt = load_model("runs/shakespeare/checkpoint")
    interpret.logit_lens(ckpt.model, ckpt.text_tokenizer(), "ROMEO: But soft")
    interpret.head_scores(ckpt.model)            # previous-token / duplicate / induction
    interpret.probe(model)                        # what training records every interpret_every steps

Every function works on any model `load_model` returns (learned or rotary positions,
LayerNorm or RMSNorm, MHA or GQA, fp32, bf16, int8, int4) through forward hooks on the
model's own modules; results are pydantic reports (`microgpt.interpret.schemas`).
Checked against TransformerLens in tests/interpret/.
"""

from microgpt.interpret.cache import ActivationCache, run_with_cache
from microgpt.interpret.embeddings import embeddings
from microgpt.interpret.heads import head_scores, probe
from microgpt.interpret.patching import patch
from microgpt.interpret.readouts import attention, attribution, logit_lens, tokens

__all__ = [
    "ActivationCache",
    "attention",
    "attribution",
    "embeddings",
    "head_scores",
    "logit_lens",
    "patch",
    "probe",
    "run_with_cache",
    "tokens",
]
