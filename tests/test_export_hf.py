"""Hugging Face exports, checked by transformers itself: `AutoModelForCausalLM` and
`AutoTokenizer.from_pretrained(dir)` load the directory offline and agree with us.

Tolerances: float32 logits within atol 1e-4 (rtol 0) of the eager model on a batch of
prompts; greedy `generate()` gives exactly our 32 tokens; the tokenizer gives exactly our
ids and decodes them back to the text. Imports go the other way: a GPT-2 and a Llama that
transformers creates with random weights become microgpt checkpoints with the same logits
(atol 1e-4), and an export followed by an import gives back bit-identical tensors.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import GPT2, LLAMA, MICROGPT, transformers_checkpoint, transformers_greedy

from microgpt.checkpoint import save_checkpoint
from microgpt.cli import main
from microgpt.config import GPTConfig
from microgpt.export import export_checkpoint
from microgpt.export.hf import MANIFEST_FILE
from microgpt.export.hf_import import import_hf
from microgpt.export.parity import greedy
from microgpt.loading import load_model
from microgpt.model import GPT
from microgpt.settings import get_settings
from microgpt.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, train_tokenizer
from microgpt.train.loop import CHECKPOINT_DIR
from microgpt.train.metrics import METRICS_FILE, read_history

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
NEW_TOKENS = 32
TEXT = "the quick brown fox jumps over the lazy dog\nhé said: «ça va?» 12 ✓"
PROMPTS = ["the quick", "hé said", "over the lazy"]

# gpt2: learned positions, LayerNorm, erf-GELU, no biases (the export writes zeros);
# gpt2-tanh: GPT-2's own tanh-GELU with biases; llama: RoPE, RMSNorm, SwiGLU, GQA, untied head.
FAMILIES: dict[str, tuple[GPTConfig, str]] = {
    "gpt2": (GPT2.updated(block_size=64, mlp="gelu", bias=False), "GPT2LMHeadModel"),
    "gpt2-tanh": (GPT2.updated(block_size=64, vocab_size=80), "GPT2LMHeadModel"),
    "llama": (LLAMA.updated(block_size=64, vocab_size=259, qk_norm=False), "LlamaForCausalLM"),
}


def tokenizer_for(family: str) -> Tokenizer:
    return ByteTokenizer() if family == "llama" else CharTokenizer.train([TEXT])


def make_model(cfg: GPTConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial gains and biases, so that every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(family, our model, our tokenizer, the export directory), exported once per family."""
    family = request.param
    cfg, _ = FAMILIES[family]
    model, tok = make_model(cfg), tokenizer_for(family)
    root = tmp_path_factory.mktemp(family)
    src = save_checkpoint(root / "ckpt", model, tokenizer=tok, preset=family)
    done = export_checkpoint(src, root / "hf", "hf", parity_rows=[tok.encode(TEXT, add_bos=True)[:40]])
    return family, model, tok, done


def test_transformers_loads_the_export_and_matches_our_logits(exported: tuple, one_thread: None) -> None:
    family, model, tok, done = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(done.path), dtype=torch.float32, local_files_only=True
    ).eval()
    assert type(hf).__name__ == FAMILIES[family][1]
    rows = torch.tensor([tok.encode(p + TEXT, add_bos=True)[:48] for p in PROMPTS])
    with torch.inference_mode():
        theirs, ours = hf(rows).logits, model(rows).logits
    np.testing.assert_allclose(theirs.numpy(), ours.numpy(), rtol=0, atol=ATOL)
    assert done.parity is not None
    print(f"\n{family}: {done.parity.summary()}")
    assert done.parity.max_abs_logit_diff <= ATOL
    assert done.parity.top1_agreement == 1.0


def test_generate_and_tokenizer_agree_with_ours(exported: tuple, one_thread: None) -> None:
    """AutoTokenizer encodes the prompt to our ids (BOS first), greedy generate() continues it with
    our 32 tokens (up to and including an EOS, where generate stops), and decodes them like ours."""
    family, model, tok, done = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(done.path), local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(done.path), local_files_only=True)
    for prompt in PROMPTS:
        ids = hf_tok(prompt)["input_ids"]
        assert ids == tok.encode(prompt, add_bos=True)
        expected = greedy(model, ids, NEW_TOKENS)
        if tok.eos_id in expected:
            expected = expected[: expected.index(tok.eos_id) + 1]
        got = transformers_greedy(hf, ids, NEW_TOKENS)
        assert got == expected, f"{family}: {prompt!r}"
        known = [i for i in got if i < tok.vocab_size]  # a random model also emits ids past the vocab
        assert hf_tok.decode(known, skip_special_tokens=True) == tok.decode(known)


@pytest.mark.parametrize("kind", ["char", "byte", "bytelevel-bpe"])
def test_tokenizers_round_trip_through_autotokenizer(kind: str, tmp_path: Path) -> None:
    tok = train_tokenizer(kind, [TEXT, TEXT.upper()], vocab_size=300)
    cfg = LLAMA.updated(vocab_size=tok.vocab_size, qk_norm=False)
    src = save_checkpoint(tmp_path / "ckpt", make_model(cfg), tokenizer=tok)
    dst = export_checkpoint(src, tmp_path / "hf", "hf", parity=False).path
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(dst), local_files_only=True)
    assert hf_tok.bos_token_id == tok.bos_id and hf_tok.eos_token_id == tok.eos_id
    for text in (TEXT, TEXT.upper(), " leading  and trailing spaces ", "\n\n", ""):
        ids = hf_tok(text)["input_ids"]
        assert ids == tok.encode(text, add_bos=True), f"{kind}: {text!r}"
        assert hf_tok.decode(ids, skip_special_tokens=True) == text


def test_shapes_without_a_transformers_class_are_refused_by_feature(tmp_path: Path) -> None:
    for cfg, feature in (
        (LLAMA, "qk-norm"),  # rotary maps to Llama, which has no qk-norm
        (MICROGPT, "a norm after the embedding"),  # learned positions, but RMSNorm and no final norm
        (GPT2.updated(n_kv_head=2), "grouped-query attention"),
        (GPT2.updated(mlp="swiglu"), "swiglu MLP"),
    ):
        src = save_checkpoint(tmp_path / "ckpt", make_model(cfg))
        with pytest.raises(ValueError, match=feature):
            export_checkpoint(src, tmp_path / "hf", "hf")
        assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_import_of_a_transformers_model_gives_its_logits(arch: str, tmp_path: Path, one_thread: None) -> None:
    """A checkpoint that transformers saved, imported by `microgpt import hf` (the CLI, as a user
    runs it, for gpt2; the function it calls for llama, to spare a second interpreter start)."""
    theirs = transformers_checkpoint(arch, tmp_path / "hf")
    out = tmp_path / "imported"
    if arch == "gpt2":
        command = [sys.executable, "-m", "microgpt", "import", "hf", str(tmp_path / "hf"), "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    else:
        import_hf(tmp_path / "hf", out)
    ours = load_model(out, precision="fp32").model
    idx = torch.randint(0, 60, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_allclose(ours(idx).logits.numpy(), theirs(idx).logits.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_imported_model_finetunes_from_the_command_line(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`microgpt import hf` then `microgpt finetune`, as a user runs them: the import records no
    training recipe, so `--preset` names one; the tokenizer saved by transformers is kept, the
    loss stays finite, and the result loads with the imported architecture and new weights."""
    tok = train_tokenizer("bytelevel-bpe", [TEXT, TEXT.upper()], vocab_size=300)
    transformers_checkpoint(arch, tmp_path / "hf", tok)
    imported, run = tmp_path / "imported", tmp_path / "run"
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(imported)]) == 0
    (tmp_path / "text.txt").write_text((TEXT + "\n" + TEXT.upper() + "\n") * 40, encoding="utf-8")
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    command = ["finetune", str(imported), "--data", str(tmp_path / "text.txt"), "--out", str(run)]
    steps = ["--max-steps", "6", "--set", "train.batch_size=4", "train.eval_interval=6", "train.eval_steps=1"]
    try:
        assert main(command + ["--device", "cpu"]) == 2  # no recipe recorded: refused in one line
        assert "--preset" in capsys.readouterr().err
        assert main(command + ["--preset", "micro", *steps, "--device", "cpu"]) == 0
    finally:
        get_settings.cache_clear()
    history = read_history(run / METRICS_FILE)
    assert len(history.losses) == 6 and all(np.isfinite(history.losses)), history.losses
    before, after = load_model(imported, precision="fp32"), load_model(run / CHECKPOINT_DIR, precision="fp32")
    assert after.config == before.config and after.tokenizer is not None
    assert after.tokenizer.encode(TEXT) == tok.encode(TEXT)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(before.model.parameters(), after.model.parameters(), strict=True)
    )
    with torch.inference_mode():
        assert torch.isfinite(after.model(torch.tensor([tok.encode(TEXT, add_bos=True)[:32]])).logits).all()


def test_import_refuses_what_it_cannot_compute_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, scale_attn_by_inverse_layer_idx=True)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    capsys.readouterr()  # transformers' own progress bar
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "scale_attn_by_inverse_layer_idx" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_then_import_gives_the_same_tensors(family: str, tmp_path: Path) -> None:
    cfg, _ = FAMILIES[family]
    model, tok = make_model(cfg), tokenizer_for(family)
    src = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, preset=family)
    dst = export_checkpoint(src, tmp_path / "hf", "hf", parity=False).path
    assert (dst / MANIFEST_FILE).is_file()
    back = load_model(import_hf(dst, tmp_path / "back"), precision="fp32")
    assert back.config == cfg and back.tokenizer is not None
    assert back.tokenizer.content_hash == tok.content_hash
    expected, got = model.state_dict(), back.model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
