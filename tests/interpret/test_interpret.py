"""microgpt.interpret's own guarantees: the lens ends at the logits, patching recovers 1
for the whole difference and 0 for nothing, attribution sums to the logit, a hand-built
induction head scores near 1 and a random model near chance, on every family and precision."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tiny_models import GPT2, LLAMA, MICROGPT, ODD_SIZES, RELU2_MQA

from microgpt import interpret
from microgpt.config import GPTConfig
from microgpt.interpret.cache import this_thread_only
from microgpt.interpret.readouts import lens_logits
from microgpt.model import GPT
from microgpt.quantize import quantize_model
from microgpt.tokenizers import CharTokenizer

TOKENIZER = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,")
FAMILIES = {"micro": MICROGPT, "gpt2": GPT2, "llama": LLAMA, "relu2-mqa": RELU2_MQA, "odd": ODD_SIZES}


def build(config: GPTConfig, precision: str = "fp32", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config.updated(vocab_size=max(config.vocab_size, TOKENIZER.vocab_size), init_std=0.2)).eval()
    return model if precision == "fp32" else quantize_model(model, precision, 32)  # type: ignore[arg-type]


# ODD_SIZES is left out of int8: torch's CPU int8 kernel crashes on its 24-wide layers
# in a plain forward, interpretability or not (reported to the quantize owner).
CASES = [(f, p) for f in FAMILIES for p in ("fp32", "int8", "int4") if (f, p) != ("odd", "int8")]


@pytest.mark.parametrize(("family", "precision"), CASES)
def test_every_family_and_precision(family: str, precision: str) -> None:
    model = build(FAMILIES[family], precision)
    text = "the cat sat"
    cache = interpret.run_with_cache(model, torch.tensor(TOKENIZER.encode(text)))
    with torch.no_grad():
        # The cache comes from the explicit attention path (it returns the probabilities):
        # with the same path and no hooks the logits are the same...
        hidden, _ = model.hidden(cache.ids[None], need_weights=True)
        logits = model.lm_head(hidden)[0].float()
        fused = model(cache.ids[None]).logits[0].float()
    assert (cache.logits - logits).abs().max() < 1e-5  # the hooks change nothing
    # ... and the fused path's agree to rounding: in int8, per-token activation scales turn
    # float-level differences between the two paths into a quantization step here and there.
    assert (cache.logits - fused).abs().max() < (1e-5 if precision == "fp32" else 5e-2)
    assert (lens_logits(model, cache)[-1] - logits).abs().max() < 1e-4  # the last layer's lens is the output

    lens = interpret.logit_lens(model, TOKENIZER, text)
    assert len(lens.layers) == model.config.n_layer + 1 and lens.true_rank[-1][-1] is None
    top = logits[:-1].softmax(-1).max(-1).values
    assert lens.top_prob[-1][:-1] == pytest.approx(top.tolist(), abs=1e-5)

    report = interpret.tokens(model, TOKENIZER, text, top_k=3)
    assert report.ids == cache.ids.tolist() and len(report.top_k[0]) == 3
    expected = torch.nn.functional.cross_entropy(logits[:-1], cache.ids[1:])
    assert report.mean_loss == pytest.approx(float(expected), abs=1e-5)

    patterns = interpret.attention(model, TOKENIZER, text).patterns
    rows = torch.tensor(patterns).sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)

    parts = interpret.attribution(model, TOKENIZER, text, target="a", position=4)
    total = parts.embed + sum(map(sum, parts.heads)) + sum(parts.mlps) + parts.bias
    # Exact for float weights; quantized kernels round activations (int4: to half precision).
    assert total == pytest.approx(parts.total, abs=1e-4 if precision == "fp32" else 2e-2)

    points = interpret.embeddings(model, TOKENIZER).points
    assert len(points) == model.config.vocab_size

    training = model.train()
    scores = interpret.probe(training)
    assert set(scores) == {"induction_score", "attention_entropy"} and training.training


def test_patching_the_whole_difference_recovers_all_and_nothing_recovers_nothing() -> None:
    model = build(GPT2, seed=3)
    report = interpret.patch(model, TOKENIZER, "the cat sat on", "the dog sat on")
    # The texts differ at positions 4-6: the stream entering block 0 there is the whole
    # difference; at any other position the clean and corrupted streams are equal.
    first = report.residual[0]
    assert report.clean_logit_diff != pytest.approx(report.corrupted_logit_diff)
    assert [round(v, 5) for i, v in enumerate(first) if i not in (4, 5, 6)] == [0.0] * (len(first) - 3)
    single = interpret.patch(model, TOKENIZER, "the cat sat on", "the bat sat on")
    assert single.residual[0][4] == pytest.approx(1.0, abs=1e-5)
    assert len(single.heads) == GPT2.n_layer and len(single.heads[0]) == GPT2.n_head


def test_patch_refuses_texts_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="as many tokens"):
        interpret.patch(build(GPT2), TOKENIZER, "abc", "abcd")


def induction_model(vocab: int = 128, seq_len: int = 10, sharpness: float = 10.0) -> GPT:
    """Two attention-only layers with weights set by hand: layer 0 copies the previous
    token into its own subspace, layer 1 attends where that copy equals the current token.

    Residual layout: [token one-hot | position one-hot | previous-token one-hot]; MLPs are
    zero. RMSNorm scales every vector by about the same factor, and `sharpness` keeps the
    softmax saturated through it.
    """
    P = 2 * seq_len
    C = 2 * vocab + P
    tok, pos, prev = slice(0, vocab), slice(vocab, vocab + P), slice(vocab + P, C)
    cfg = GPTConfig(
        vocab_size=vocab, block_size=P, n_layer=2, n_head=1, n_embd=C, norm="rmsnorm", tie_embeddings=False
    )
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.zero_()
        model.wte.weight[:, tok] = torch.eye(vocab)
        model.wpe.weight[:, pos] = torch.eye(P)
        q0, k0, v0 = model.blocks[0].attn.qkv.weight.split(C)
        q0[pos, pos] = sharpness * torch.eye(P, P).roll(-1, dims=0)  # query at i looks for position i-1
        k0[pos, pos] = torch.eye(P)
        v0[tok, tok] = 0.1 * torch.eye(vocab)
        model.blocks[0].attn.proj.weight[prev, tok] = torch.eye(vocab)  # ... and writes its token to `prev`
        q1, k1, _ = model.blocks[1].attn.qkv.weight.split(C)
        q1[tok, tok] = sharpness * torch.eye(vocab)  # query with token t looks for `prev` == t
        k1[tok, prev] = torch.eye(vocab)
    return model


def test_a_hand_built_induction_head_scores_near_one() -> None:
    scores = interpret.head_scores(induction_model(), seq_len=10, batch=16)
    assert scores.previous_token[0][0] > 0.9
    assert scores.induction[1][0] > 0.85
    assert scores.induction[0][0] < 0.1


def test_a_random_model_scores_near_chance() -> None:
    torch.manual_seed(0)
    model = GPT(GPT2.updated(vocab_size=64)).eval()
    scores = interpret.head_scores(model, seq_len=16, batch=8)
    best = max(max(row) for row in scores.induction)
    assert abs(best - scores.chance) < 0.3 * scores.chance
    assert interpret.probe(model)["induction_score"] < 2 * scores.chance


def test_hooks_leave_other_threads_forward_passes_alone() -> None:
    """The inference server decodes on the same modules in its engine thread meanwhile."""
    model = build(GPT2)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = model(ids).logits

    def zero(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (torch.zeros_like(args[0]),)

    handle = model.blocks[0].register_forward_pre_hook(this_thread_only(zero))
    try:
        with torch.no_grad():
            assert not torch.equal(model(ids).logits, expected)  # this thread's pass is patched
            with ThreadPoolExecutor(1) as pool:
                other = pool.submit(lambda: model(ids).logits).result()
    finally:
        handle.remove()
    assert torch.equal(other, expected)
