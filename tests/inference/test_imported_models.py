"""A transformers checkpoint brought in by `microgpt import hf` is pushed and served like any other.

The checkpoint is what `transformers` itself builds and saves (random weights, GPT-2 and Llama
shapes, a BPE tokenizer saved by `PreTrainedTokenizerFast`); it goes through the CLI's
import, the registry and the inference service, and a greedy completion must continue each prompt
with exactly the tokens `generate()` gives on the original model (up to EOS, where both stop).
The tokenizer is character BPE, whose every token decodes to its own text, so the completion's
per-token texts name the token ids (a byte-level token decodes to "\ufffd" on its own).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tiny_models import transformers_checkpoint, transformers_greedy

from microgpt.cli import main
from microgpt.tokenizers import train_tokenizer

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread_session")

TEXT = "the quick brown fox jumps over the lazy dog\nhé said: «ça va?» 12 ✓"
PROMPTS = ["the quick", "hé said", "over the lazy"]
NEW_TOKENS = 24  # with the prompt, within the 32 positions of the tiny models


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_imported_model_serves_the_greedy_tokens_of_transformers(  # noqa: ANN001
    arch: str, registry, serve, tmp_path: Path
) -> None:
    tok = train_tokenizer("bpe", [TEXT, TEXT.upper()], vocab_size=120)
    theirs = transformers_checkpoint(arch, tmp_path / "hf", tok)
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    ref = registry.client.push(tmp_path / "imported", f"imported-{arch}").ref
    with serve(inference_models=ref) as base:
        for prompt in PROMPTS:
            ids = tok.encode(prompt, add_bos=True)
            expected = transformers_greedy(theirs, ids, NEW_TOKENS)
            stopped = tok.eos_id in expected
            expected = expected[: expected.index(tok.eos_id)] if stopped else expected
            body = {"model": ref, "prompt": ids, "max_tokens": NEW_TOKENS, "temperature": 0, "logprobs": 0}
            response = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            choice = response.json()["choices"][0]
            assert choice["logprobs"]["tokens"] == [tok.decode([i]) for i in expected], f"{arch}: {prompt!r}"
            assert choice["text"] == tok.decode(expected)
            assert choice["finish_reason"] == ("stop" if stopped else "length")
