"""All six tokenizer kinds: train, save, load, round trip, special tokens, vocab-size checks,
content hash; for the four Hugging Face kinds, the same ids from our wrapper, from
`tokenizers.Tokenizer.from_file` and from `transformers.PreTrainedTokenizerFast`.

What decode(encode(s)) gives back, per kind (stated in microgpt.tokenizers.hf):
byte and bytelevel-bpe give s for any str (a hypothesis property below); char gives s
or refuses it; bpe gives s over characters it was trained on; unigram the same but
drops a leading space; wordpiece gives s with whitespace runs made single spaces.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.tokenizers import (
    TOKENIZER_KINDS,
    ByteLevelBPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    UnigramTokenizer,
    hf_kind,
    load_tokenizer,
    tokenizer_from_json,
    train_tokenizer,
)
from microgpt.tokenizers.cli import parse_ids, register, register_bench
from microgpt.tokenizers.stats import holdout_split, measure

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump?",
    "Sphinx of black quartz, judge my vow; 12345 67890.",
    "  indented line\twith a tab and trailing spaces  ",
    "Grüße aus Zürich, café crème, naïve façade.",
    "日本語のテキストも少し。",
    "emoji: 🙂🚀 and symbols <|> [ ] { } ( ) # @ & * = + - _ / \\ ' \"",
    "a newline\nin the middle, and UPPER lower MiXeD case",
]
CORPUS = [f"{s} {i}" for i in range(40) for s in SENTENCES]
HF_KINDS = ["bpe", "bytelevel-bpe", "wordpiece", "unigram"]
VOCAB = 400
SAMPLES = [
    "The quick brown fox.",
    "  two  spaces\tand a tab\n",
    "Grüße, café 日本語 🙂",
    "judge my vow; 42",
]


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    return {kind: train_tokenizer(kind, iter(CORPUS), VOCAB) for kind in TOKENIZER_KINDS}


@pytest.fixture(scope="module")
def saved(trained: dict[str, Tokenizer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: tok.save(root / f"{kind}.json") for kind, tok in trained.items()}


# --- every kind -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TOKENIZER_KINDS))
def test_every_kind_trains_saves_and_loads(kind: str, trained: dict, saved: dict) -> None:
    tok = trained[kind]
    assert tok.kind == kind and isinstance(tok, TOKENIZER_KINDS[kind])
    loaded = load_tokenizer(saved[kind])
    assert type(loaded) is type(tok)
    assert loaded.content_hash == tok.content_hash and loaded.to_json() == tok.to_json()
    assert loaded.vocab_size == tok.vocab_size <= max(VOCAB, 259)
    for text in SAMPLES:
        ids = tok.encode(text, add_bos=True, add_eos=True)
        assert loaded.encode(text, add_bos=True, add_eos=True) == ids
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert loaded.decode(ids) == tok.decode(ids)
    batch = tok.encode_batch(SAMPLES, add_bos=True)
    assert batch == [tok.encode(t, add_bos=True) for t in SAMPLES]  # batched agrees with one at a time
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_specials_and_layout(trained: dict) -> None:
    for kind in ["byte", *HF_KINDS]:
        tok = trained[kind]
        controls = [tok.bos_id, tok.eos_id, tok.pad_id]
        assert controls == list(range(tok.vocab_size - 3, tok.vocab_size)), kind  # always the last three
    assert trained["byte"].vocab_size == 259 and trained["byte"].unk_id is None
    assert trained["bytelevel-bpe"].unk_id is None
    for kind in ["bpe", "wordpiece", "unigram"]:
        assert trained[kind].unk_id == 0
    assert trained["char"].pad_id is None and trained["char"].bos_id == trained["char"].eos_id


@pytest.mark.parametrize("kind", list(TOKENIZER_KINDS))
def test_special_tokens_cannot_be_injected_through_text(kind: str, trained: dict) -> None:
    tok = trained[kind]
    text = "a<|bos|>b<|eos|>c<|pad|>d"  # every character of it is in the corpus
    ids = tok.encode(text)
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)
    assert tok.encode_batch([text]) == [ids]
    assert tok.unk_id is None or tok.unk_id not in ids
    if kind != "wordpiece":  # wordpiece spaces out punctuation
        assert tok.decode(ids) == text


def test_decode_drops_control_specials_but_not_unk(trained: dict) -> None:
    for kind in ["byte", *HF_KINDS]:
        tok = trained[kind]
        ids = [tok.bos_id, *tok.encode("fox"), tok.eos_id, tok.pad_id]
        assert tok.decode(ids) == "fox", kind
        assert "<|bos|>" in tok.decode(ids, skip_special=False) and "<|pad|>" in tok.decode(
            ids, skip_special=False
        )
    bpe = trained["bpe"]
    assert bpe.decode(bpe.encode("fox ∑")) == "fox <unk>"  # UNK stands for text: never skipped


@pytest.mark.parametrize("kind", ["byte", *HF_KINDS])
def test_out_of_range_ids_are_refused(kind: str, trained: dict) -> None:
    tok = trained[kind]
    with pytest.raises(ValueError, match=f"id {tok.vocab_size} at position 1"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ValueError, match="id -1"):
        tok.decode([-1])


@pytest.mark.parametrize("kind", ["byte", *HF_KINDS])
def test_lone_surrogates_are_a_clear_error(kind: str, trained: dict) -> None:
    tok = trained[kind]
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("ok \udc80")
    if kind != "byte":
        with pytest.raises(ValueError, match=r"texts\[1\].*lone surrogate"):
            tok.encode_batch(["fine", "bad \ud800"])
        with pytest.raises(ValueError, match="training text 1"):
            type(tok).train(["fine", "bad \ud800"], vocab_size=VOCAB)


# --- round trips, per kind --------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_byte_level_kinds_round_trip_any_unicode(text: str, trained_module: dict) -> None:
    for kind in ["byte", "bytelevel-bpe"]:
        tok = trained_module[kind]
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode_batch([text, text]) == [ids, ids]


@pytest.fixture(scope="module")
def trained_module(trained: dict) -> dict:
    """`trained` under another name: hypothesis refuses function-scoped fixtures, this is module-scoped."""
    return trained


def test_byte_level_kinds_round_trip_hard_cases(trained: dict) -> None:
    cases = ["", "\x00", "a\u0301", "🏳️‍🌈", "\r\n\t", " " * 7, "﻿BOM", "\U0010ffff", "<unk>", "▁x"]
    for kind in ["byte", "bytelevel-bpe"]:
        for text in cases:
            assert trained[kind].decode(trained[kind].encode(text)) == text, (kind, text)


def test_bpe_round_trips_text_over_its_alphabet(trained: dict) -> None:
    tok = trained["bpe"]
    for text in [*SAMPLES, " leading", "trailing  ", "a  b\t\tc\n\n", *CORPUS[:20]]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("x▁y")) == "x y"  # the space marker reads as a space: the one loss
    assert tok.decode(tok.encode("fox∑")) == "fox<unk>"


def test_unigram_round_trips_but_a_leading_space(trained: dict) -> None:
    tok = trained["unigram"]
    for text in ["The quick brown fox.", "a  b\t\tc\n", *CORPUS[:20]]:
        assert tok.decode(tok.encode(text)) == text.removeprefix(" ")
    assert tok.decode(tok.encode(" two")) == "two"
    assert tok.decode(tok.encode("fox∑")) == "fox<unk>"


def test_wordpiece_normalises_whitespace(trained: dict) -> None:
    tok = trained["wordpiece"]
    assert tok.decode(tok.encode("The quick brown fox")) == "The quick brown fox"
    assert tok.decode(tok.encode("  The  quick\tbrown\nfox ")) == "The quick brown fox"
    assert tok.decode(tok.encode("judge my vow, quick!")) == "judge my vow, quick!"
    assert tok.decode(tok.encode("fox∑ dog")) == "<unk> dog"  # a word with an unseen character


def test_char_is_strict_about_unseen_characters_by_default() -> None:
    tok = train_tokenizer("char", ["abc"], vocab_size=None)
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 1"):
        tok.encode("az")
    unk = CharTokenizer.train(["abc"], unk="<unk>")
    assert unk.decode(unk.encode("az")) == "a<unk>"


# --- the HF kinds in the HF libraries ---------------------------------------------------

HF_TEXTS = [*SAMPLES, "hello world", "unseen ∑ char", "Zebras 🙂 quartz", ""]
INJECTION = "a<|bos|>b<unk>c"


@pytest.mark.parametrize("kind", HF_KINDS)
def test_tokenizers_library_loads_the_file_with_identical_ids(kind: str, trained: dict, saved: dict) -> None:
    ours = trained[kind]
    theirs = tokenizers.Tokenizer.from_file(str(saved[kind]))
    assert theirs.get_vocab_size() == ours.vocab_size
    for text in HF_TEXTS:
        ids = ours.encode(text)
        assert theirs.encode(text).ids == ids, text
        assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids)
    assert [e.ids for e in theirs.encode_batch(HF_TEXTS)] == ours.encode_batch(HF_TEXTS)
    # Special-token text: the library parses it by default; its own switch makes it text, as ours is.
    assert ours.bos_id in theirs.encode(INJECTION).ids
    theirs.encode_special_tokens = True
    assert theirs.encode(INJECTION).ids == ours.encode(INJECTION)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_transformers_loads_the_file_with_identical_ids(kind: str, trained: dict, saved: dict) -> None:
    transformers = pytest.importorskip("transformers")
    ours = trained[kind]
    specials = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
    if ours.unk_id is not None:
        specials["unk_token"] = "<unk>"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved[kind]), **specials)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (
        ours.bos_id,
        ours.eos_id,
        ours.pad_id,
    )
    assert fast.unk_token_id == ours.unk_id and len(fast) == ours.vocab_size
    for text in HF_TEXTS:
        ids = ours.encode(text)
        assert fast.encode(text) == ids, text
        assert fast(text)["input_ids"] == ids
        assert fast.decode(ids, clean_up_tokenization_spaces=False) == ours.decode(ids)
    assert fast(HF_TEXTS)["input_ids"] == ours.encode_batch(HF_TEXTS)
    split = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved[kind]), split_special_tokens=True)
    assert split.encode(INJECTION) == ours.encode(INJECTION)


def test_saved_hf_file_is_a_plain_tokenizer_json(trained: dict, saved: dict) -> None:
    for kind in HF_KINDS:
        data = json.loads(saved[kind].read_text(encoding="utf-8"))
        assert "kind" not in data  # the library refuses unknown top-level keys
        assert hf_kind(data) == kind and data == trained[kind].to_json()
        assert json.loads(trained[kind].backend.to_str()) == data


def test_malformed_hf_json_is_refused(trained: dict) -> None:
    good = trained["bpe"].to_json()
    assert type(tokenizer_from_json({**good, "kind": "bpe"})) is type(trained["bpe"])  # a "kind" is tolerated
    with pytest.raises(ValueError, match="expected kind 'wordpiece'"):
        TOKENIZER_KINDS["wordpiece"].from_json({**good, "kind": "bpe"})
    with pytest.raises(ValueError, match="laid out as bpe"):
        TOKENIZER_KINDS["unigram"].from_json(good)
    foreign = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    foreign.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    with pytest.raises(ValueError, match="lacks the special tokens"):
        tokenizer_from_json(json.loads(foreign.to_str()))
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer.json"):
        tokenizer_from_json({**good, "model": {**good["model"], "merges": 7}})
    with pytest.raises(ValueError, match="no 'kind' field"):
        tokenizer_from_json({"version": "1.0", "model": {"type": "BPE"}})


# --- vocab size, training input ---------------------------------------------------------


def test_vocab_size_is_checked() -> None:
    with pytest.raises(ValueError, match="needs a vocab_size"):
        train_tokenizer("bpe", CORPUS)
    with pytest.raises(ValueError, match=r"bytelevel-bpe kind must be an int >= 259"):
        train_tokenizer("bytelevel-bpe", CORPUS, 258)
    with pytest.raises(ValueError, match="must be an int >= 5"):
        train_tokenizer("wordpiece", CORPUS, 4)
    for kind in ["bpe", "wordpiece", "unigram"]:  # the corpus has ~100 distinct characters
        with pytest.raises(ValueError, match=f"vocab_size 40 is too small for the {kind} kind"):
            train_tokenizer(kind, CORPUS, 40)
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        train_tokenizer("sentencepiece", CORPUS, 100)
    assert train_tokenizer("bytelevel-bpe", CORPUS, 259).vocab_size == 259  # bytes and specials only
    assert train_tokenizer("byte", [], 12).vocab_size == 259  # byte and char ignore vocab_size
    assert train_tokenizer("char", ["ab"], 12).vocab_size == 3


@pytest.mark.parametrize("kind", HF_KINDS + ["char"])
def test_empty_training_text_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(kind, ["", ""], VOCAB)


# --- content hash ---------------------------------------------------------------------


def test_content_hash_differs_across_kinds_and_vocabularies(trained: dict) -> None:
    hashes = {tok.content_hash for tok in trained.values()}
    assert len(hashes) == len(trained)
    smaller = train_tokenizer("bytelevel-bpe", CORPUS, 300)
    assert smaller.content_hash != trained["bytelevel-bpe"].content_hash
    again = train_tokenizer("bytelevel-bpe", reversed(CORPUS), VOCAB)
    assert again.content_hash == trained["bytelevel-bpe"].content_hash  # BPE training is deterministic


def test_content_hash_is_the_same_in_another_interpreter(trained: dict, saved: dict) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from microgpt.tokenizers import load_tokenizer, train_tokenizer
        corpus = {CORPUS!r}
        print(train_tokenizer("bytelevel-bpe", corpus, {VOCAB}).content_hash)
        for path in sys.argv[1:]:
            print(load_tokenizer(path).content_hash)
        """
    )
    kinds = list(saved)
    out = subprocess.run(
        [sys.executable, "-c", code, *(str(saved[k]) for k in kinds)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "4321", "PATH": ""},
    )
    lines = out.stdout.split()
    assert lines[0] == trained["bytelevel-bpe"].content_hash
    assert lines[1:] == [trained[k].content_hash for k in kinds]


def test_unigram_scores_survive_save_and_load_bit_for_bit(trained: dict, tmp_path: Path) -> None:
    tok = trained["unigram"]
    assert isinstance(tok, UnigramTokenizer)
    again = load_tokenizer(load_tokenizer(tok.save(tmp_path / "a.json")).save(tmp_path / "b.json"))
    assert again.to_json() == tok.to_json()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


# --- byte kind --------------------------------------------------------------------------


def test_byte_layout_and_invalid_utf8() -> None:
    tok = ByteTokenizer()
    assert tok.encode("hé", add_bos=True, add_eos=True) == [256, 104, 195, 169, 257]
    assert tok.decode([104, 195]) == "h\ufffd"  # half a character: replaced, never an error
    assert tok.decode([0xFF, 0xFE, 104]) == "\ufffd\ufffdh"
    assert tok.decode([195, 256, 169], skip_special=False) == "\ufffd<|bos|>\ufffd"
    assert tok.decode([195, 256, 169]) == "é"  # specials dropped first, so the bytes join
    data = tok.to_json()
    assert data["specials"]["pad"] == {"token": "<|pad|>", "id": 258}
    assert tokenizer_from_json(data).content_hash == tok.content_hash
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_from_json({**data, "vocab_size": 300})
    with pytest.raises(ValueError, match="unknown fields"):
        tokenizer_from_json({**data, "extra": 1})


# --- fork, stats, CLI handlers, bench ---------------------------------------------------


def test_fork_after_parallel_encoding_is_quiet_and_works(saved: dict) -> None:
    code = textwrap.dedent(
        f"""
        import multiprocessing as mp
        from microgpt.tokenizers import load_tokenizer
        tok = load_tokenizer({str(saved["bytelevel-bpe"])!r})
        texts = ["hello world {{}}".format(i) for i in range(2000)]
        expected = tok.encode_batch(texts)  # uses the thread pool before the fork

        def work(i):
            return tok.encode_batch(texts[i::4])

        with mp.get_context("fork").Pool(2) as pool:
            parts = pool.map(work, range(4))
        assert all(part == expected[i::4] for i, part in enumerate(parts))
        import os
        assert "TOKENIZERS_PARALLELISM" not in os.environ  # the parent's setting is restored
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "huggingface/tokenizers" not in out.stderr and "TOKENIZERS_PARALLELISM" not in out.stderr


def test_holdout_split_is_by_content() -> None:
    docs = [f"doc {i}" for i in range(2000)]
    kept, held = holdout_split(docs, 0.1)
    assert len(kept) + len(held) == 2000 and 150 < len(held) < 250
    kept2, held2 = holdout_split(list(reversed(docs)), 0.1)
    assert set(held2) == set(held) and set(kept2) == set(kept)
    assert holdout_split(docs, 0.0) == (docs, [])
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(docs, 1.5)


def test_measure(trained: dict) -> None:
    stats = measure(trained["byte"], ["héllo"])
    assert (stats.bytes, stats.tokens, stats.bytes_per_token, stats.unknown_rate) == (6, 6, 1.0, 0.0)
    bpe = measure(trained["bpe"], ["fox ∑∑"])
    assert bpe.unknown == 2 and bpe.unknown_rate == 2 / bpe.tokens
    char = measure(trained["char"], ["fox ∑"])  # no UNK: unseen characters are counted, not fatal
    assert char.unknown == 1 and char.tokens == 5 and char.vocab_size == trained["char"].vocab_size
    assert measure(trained["bytelevel-bpe"], SAMPLES).bytes_per_token > 1.5


def cli(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    register(commands)
    register_bench(commands.add_parser("bench").add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    args.run(args)


def test_cli_handlers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    out = tmp_path / "tok.json"
    cli("tokenizer", "train", "--kind", "bpe", "--vocab-size", "300", "--data", str(data), "--out", str(out))
    printed = capsys.readouterr().out
    assert "trained a bpe tokenizer with" in printed and "held out" in printed
    tok = load_tokenizer(out)
    assert tok.kind == "bpe" and tok.content_hash in printed

    cli("tokenizer", "encode", str(out), "--text", "quick fox", "--bos")
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == tok.encode("quick fox", add_bos=True)
    cli("tokenizer", "decode", str(out), "--ids", " ".join(map(str, ids)))
    assert capsys.readouterr().out == "quick fox\n"
    cli("tokenizer", "stats", str(out), "--data", str(data), "--holdout-fraction", "1")
    stats = capsys.readouterr().out
    assert (
        "vocab size       300" in stats and "bytes per token" in stats and "unknown rate     0.0000%" in stats
    )

    with pytest.raises(ValueError, match="'x' is not one"):
        cli("tokenizer", "decode", str(out), "--ids", "1 x 3")
    with pytest.raises(ValueError, match="too small"):
        cli(
            "tokenizer",
            "train",
            "--kind",
            "bpe",
            "--vocab-size",
            "20",
            "--data",
            str(data),
            "--out",
            str(out),
        )
    with pytest.raises(ValueError, match="no such data set"):
        cli("tokenizer", "stats", str(out), "--data", str(tmp_path / "missing.txt"))
    assert parse_ids("[1, 2,3]\n") == [1, 2, 3] and parse_ids("") == []


def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from microgpt.bench.tokenizer import run

    result = run(vocab_size=300, megabytes=0.5, runs=1)
    assert result.encode_bytes >= 0.5e6 and result.batch_mb_s > 0 and result.single_mb_s > 0
    assert "MB/s on" in capsys.readouterr().out


@pytest.mark.bench
def test_bench_bytelevel_bpe_batch_encoding_is_at_least_5_mb_s() -> None:
    from microgpt.bench.tokenizer import run

    result = run()
    assert result.encode_bytes >= 20e6
    assert result.batch_mb_s >= 5.0, f"{result.batch_mb_s:.2f} MB/s on {result.threads} threads"


@pytest.mark.parametrize("kind", HF_KINDS)
def test_pickled_hf_tokenizer_still_refuses_injection(kind: str, trained: dict) -> None:
    # multiprocessing and DataLoader workers pickle; the library's own pickle drops the switch
    tok = trained[kind]
    back = pickle.loads(pickle.dumps(tok))
    assert back.encode(INJECTION) == tok.encode(INJECTION) and back.content_hash == tok.content_hash


def test_checkpoint_carries_an_hf_tokenizer(trained: dict, tmp_path: Path) -> None:
    import torch

    from microgpt.checkpoint import load_checkpoint, save_checkpoint
    from microgpt.model import GPT
    from microgpt.zoo import get_preset

    tok = trained["bytelevel-bpe"]
    torch.manual_seed(0)
    model = GPT(get_preset("micro").model.updated(vocab_size=tok.vocab_size))
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, preset="micro")
    back = load_checkpoint(path).tokenizer
    assert isinstance(back, ByteLevelBPETokenizer) and back.content_hash == tok.content_hash
    assert tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")).encode("fox").ids == tok.encode("fox")


def test_hf_tokenizer_base_is_abstract_over_kinds() -> None:
    assert {cls.kind for cls in HFTokenizer.__subclasses__()} == set(HF_KINDS)
    assert issubclass(ByteLevelBPETokenizer, HFTokenizer)
