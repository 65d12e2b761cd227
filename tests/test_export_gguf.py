"""GGUF exports, checked by llama.cpp itself (llama-cpp-python): it loads each file, and its
logits, greedy tokens and tokenizer agree with ours.

The models are trained for a few seconds on tinyshakespeare (a char vocabulary), so that
perplexity on held-out text means something. Tolerances:

- F32: logits within atol 1e-3 of the eager float32 model (llama.cpp sums in another
  order and uses its own exp/tanh), and greedy decoding through llama.cpp's KV cache gives
  exactly our 32 tokens;
- F16, Q8_0, Q4_0 on held-out text: top-1 agreement and perplexity change bounded per type
  (Q8_0 within +1% perplexity, as llama.cpp's own Q8_0 figures are); the figures are
  printed (`pytest -s`) and recorded in the export's parity report;
- tokenizer: llama.cpp's tokenize gives our ids (BOS first) and detokenize gives the text
  back, for char, byte and byte-level BPE vocabularies.

These run by default: every llama.cpp call here takes milliseconds on models this small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import GPT2, LLAMA

from microgpt.checkpoint import read_config, save_checkpoint
from microgpt.cli import main
from microgpt.config import GPTConfig
from microgpt.export import export_checkpoint
from microgpt.export.gguf import GGUF_FILE, open_in_llama_cpp
from microgpt.export.parity import greedy
from microgpt.model import GPT
from microgpt.tokenizers import CharTokenizer, Tokenizer, train_tokenizer

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

F32_ATOL = 1e-3
NEW_TOKENS = 32
TRAIN_STEPS = 150
CONTEXT = 64
# (min top-1 agreement, max perplexity change in %) on held-out text, per tensor type.
BOUNDS = {"f16": (0.99, 0.1), "q8_0": (0.97, 1.0), "q4_0": (0.85, 10.0)}
ARCHS: dict[str, GPTConfig] = {
    # learned positions, LayerNorm, tanh-GELU (llama.cpp's gpt2 computes that form), biases
    "gpt2": GPT2.updated(block_size=CONTEXT, n_embd=64),
    # RoPE (llama.cpp rotates adjacent pairs: the export permutes q and k), RMSNorm, SwiGLU, GQA
    "llama": LLAMA.updated(block_size=CONTEXT, n_embd=64, qk_norm=False),
}


def open_llama(path: Path, **options: Any) -> Any:
    return open_in_llama_cpp(
        path,
        n_ctx=CONTEXT,
        n_batch=CONTEXT,
        n_threads=1,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,  # llama.cpp's default F16 cache alone moves logits by ~2e-3
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
        **options,
    )


def llama_cpp_logits(llm: Any, row: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(row)
    return np.array(llm.scores[: len(row)], dtype=np.float32)


def llama_cpp_greedy(llm: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding one token at a time through llama.cpp's own KV cache."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path) -> tuple[CharTokenizer, list[int], list[list[int]]]:
    """A char tokenizer, training ids, and held-out rows of CONTEXT tokens (the text's last tenth)."""
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    tok = CharTokenizer.train([text])
    ids = tok.encode(text)
    cut = len(ids) * 9 // 10
    held_out = [ids[i : i + CONTEXT] for i in range(cut, cut + 8 * CONTEXT, CONTEXT)]
    return tok, ids[:cut], held_out


@pytest.fixture(scope="module", params=list(ARCHS))
def trained(
    request: pytest.FixtureRequest, shakespeare: tuple, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, GPT, Tokenizer, Path, list[list[int]]]:
    """(arch, model, tokenizer, checkpoint, held-out rows): a few seconds of training per arch."""
    arch = request.param
    tok, ids, held_out = shakespeare
    torch.manual_seed(0)
    model = GPT(ARCHS[arch].updated(vocab_size=tok.vocab_size))
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (16,), generator=generator)
        x = torch.stack([data[s : s + CONTEXT] for s in starts])
        y = torch.stack([data[s + 1 : s + CONTEXT + 1] for s in starts])
        loss = model(x, y).loss
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    src = save_checkpoint(tmp_path_factory.mktemp(arch) / "ckpt", model, tokenizer=tok, preset=arch)
    return arch, model, tok, src, held_out


def test_f32_logits_and_greedy_tokens_match_in_llama_cpp(trained: tuple, tmp_path: Path) -> None:
    arch, model, tok, src, held_out = trained
    done = export_checkpoint(src, tmp_path / "gguf", "gguf", quant="f32", parity_rows=held_out[:2])
    assert done.notes == [] and done.parity is not None
    print(f"\n{arch} f32: {done.parity.summary()}")
    assert done.parity.max_abs_logit_diff <= F32_ATOL and done.parity.top1_agreement == 1.0

    llm = open_llama(done.path)
    assert llm.n_vocab() == model.config.vocab_size and llm.n_ctx() >= CONTEXT
    with torch.inference_mode():
        for row in held_out[:3]:
            ours = model(torch.tensor([row])).logits[0].numpy()
            np.testing.assert_allclose(llama_cpp_logits(llm, row), ours, rtol=0, atol=F32_ATOL)
    for text in ("ROMEO:\n", "First Citizen:\nWe are"):
        prompt = tok.encode(text, add_bos=True)
        assert llama_cpp_greedy(llm, prompt, NEW_TOKENS) == greedy(model, prompt, NEW_TOKENS), arch
    llm.close()


@pytest.mark.parametrize("quant", list(BOUNDS))
def test_quantized_exports_keep_top1_and_perplexity_on_held_out_text(
    trained: tuple, quant: str, tmp_path: Path
) -> None:
    arch, model, _, src, held_out = trained
    done = export_checkpoint(src, tmp_path / "gguf", "gguf", quant=quant, parity_rows=held_out)
    report = done.parity
    assert report is not None and report.runtime == f"llama.cpp {quant}"
    print(f"\n{arch} {quant}: {report.summary()}")
    min_top1, max_ppl_change = BOUNDS[quant]
    assert report.top1_agreement >= min_top1, report.summary()
    assert report.perplexity_change_pct <= max_ppl_change, report.summary()
    assert report.perplexity_ours < 0.5 * model.config.vocab_size, "the model learned something"

    reader = gguf.GGUFReader(str(done.path / GGUF_FILE))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    matrices = {name for name, t in types.items() if name.endswith("weight") and "norm" not in name}
    assert {types[name] for name in matrices} == {quant.upper()}, "every matrix in the asked type"
    assert {types[name] for name in set(types) - matrices} == {"F32"}, "norms and biases stay F32"
    export = read_config(done.path).metadata["export"]
    assert export["quant"] == quant and export["parity"] == report.to_json() and export["notes"] == []


def test_rows_that_are_not_whole_blocks_fall_back_per_tensor(shakespeare: tuple, tmp_path: Path) -> None:
    """n_embd 48 is not a multiple of Q8_0's 32-value blocks: the matrices that read a 48-wide
    row fall back to F16 and the export names each; the MLP's down projection (192-wide rows)
    is still Q8_0, and llama.cpp loads the mixed file and agrees with us."""
    tok, _, held_out = shakespeare
    torch.manual_seed(0)
    cfg = GPT2.updated(block_size=CONTEXT, n_embd=48, vocab_size=tok.vocab_size)
    src = save_checkpoint(tmp_path / "ckpt", GPT(cfg).eval(), tokenizer=tok)
    done = export_checkpoint(src, tmp_path / "gguf", "gguf", quant="q8_0", parity_rows=held_out[:2])

    reader = gguf.GGUFReader(str(done.path / GGUF_FILE))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    fell_back = sorted(name for name, kind in types.items() if kind == "F16")
    assert fell_back == sorted(
        ["token_embd.weight", "position_embd.weight", "output.weight"]
        + [f"blk.{i}.{m}.weight" for i in range(cfg.n_layer) for m in ("attn_qkv", "attn_output", "ffn_up")]
    )
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(cfg.n_layer)} == {"Q8_0"}
    assert sorted(note.split(":")[0] for note in done.notes) == fell_back
    assert all("rows of 48 values are not whole q8_0 blocks" in note for note in done.notes)
    assert read_config(done.path).metadata["export"]["notes"] == done.notes
    assert done.parity is not None and done.parity.top1_agreement >= 0.97, done.parity.summary()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_model_without_a_tokenizer_loads_in_llama_cpp(arch: str, tmp_path: Path) -> None:
    """llama.cpp learns n_vocab from the vocabulary or, without one, from the vocab_size key alone."""
    torch.manual_seed(0)
    src = save_checkpoint(tmp_path / "ckpt", GPT(ARCHS[arch]).eval())
    done = export_checkpoint(src, tmp_path / "gguf", "gguf")  # parity rows sampled from the model
    assert done.parity is not None and done.parity.max_abs_logit_diff <= F32_ATOL, done.parity
    assert open_llama(done.path).n_vocab() == ARCHS[arch].vocab_size


@pytest.mark.parametrize("kind", ["char", "byte", "bytelevel-bpe"])
def test_tokenizer_round_trips_in_llama_cpp(kind: str, tmp_path: Path) -> None:
    text = "To be, or not to be: that is the question.\nhé said «ça va?» ✓  "
    tok = train_tokenizer(kind, [text, text.upper()], vocab_size=300)
    cfg = LLAMA.updated(vocab_size=tok.vocab_size + 3, qk_norm=False)  # wider than the vocabulary
    src = save_checkpoint(tmp_path / "ckpt", GPT(cfg), tokenizer=tok)
    dst = export_checkpoint(src, tmp_path / "gguf", "gguf", parity=False).path
    llm = open_llama(dst, vocab_only=True)
    assert llm.token_bos() == tok.bos_id and llm.token_eos() == tok.eos_id
    for sample in (text, text.upper(), " seats  on both ends ", "\n\n", "é"):
        ids = llm.tokenize(sample.encode("utf-8"), add_bos=True, special=False)
        assert ids == tok.encode(sample, add_bos=True), f"{kind}: {sample!r}"
        assert llm.detokenize(ids[1:]).decode("utf-8") == sample
    llm.close()


def test_what_llama_cpp_cannot_compute_is_refused_by_name(tmp_path: Path) -> None:
    src = save_checkpoint(tmp_path / "ckpt", GPT(LLAMA))  # qk-norm
    with pytest.raises(ValueError, match="qk-norm"):
        export_checkpoint(src, tmp_path / "gguf", "gguf")
    tok = train_tokenizer("bpe", ["some text to learn a few pieces from"], vocab_size=40)
    src = save_checkpoint(tmp_path / "ckpt", GPT(LLAMA.updated(qk_norm=False)), tokenizer=tok)
    with pytest.raises(ValueError, match="bpe tokenizer has no llama.cpp counterpart"):
        export_checkpoint(src, tmp_path / "gguf", "gguf")
    assert not (tmp_path / "gguf").exists()


def test_cli_prints_the_fallbacks_and_parity_and_refuses_a_quant_gguf_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`microgpt export` through its entry function (the subprocess path is tests/test_export.py's)."""
    tok = CharTokenizer.train(["ab"])
    src = save_checkpoint(tmp_path / "ckpt", GPT(GPT2.updated(n_embd=48)), tokenizer=tok)

    assert (
        main(["export", str(src), "--format", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "g")]) == 0
    )
    out = capsys.readouterr().out
    assert "blk.0.attn_qkv.weight: rows of 48 values are not whole q8_0 blocks" in out
    assert "parity: llama.cpp q8_0: max |dlogit|" in out, out

    assert main(["export", str(src), "--format", "hf", "--quant", "q8_0", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "--quant q8_0 is for gguf exports" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "hf").exists()
