"""Preparation: shards read back to exactly the source, the dtype follows the vocabulary, reuse and
re-preparation follow the inputs, the split is deterministic and disjoint, long documents are
truncated or split as documented, and bad inputs are clear errors. Memory stays bounded while a
corpus far larger than the buffers is prepared (tracemalloc sees numpy's allocations).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from microgpt.data.manifest import Manifest, check_tokenizer, check_vocab, read_manifest
from microgpt.data.prepare import encoder_for, prepare
from microgpt.tokenizers import CharTokenizer, Tokenizer

NAMES = [f"{a}{b}{c}" for a in "abcdefghij" for b in "aeiou" for c in "lmnrst"]  # 300 distinct names
TEXT = "".join(f"First Citizen {i}:\nBefore we proceed any further, hear me speak.\n\n" for i in range(400))


def char_tokenizer(texts: Iterable[str] = (TEXT, *NAMES)) -> CharTokenizer:
    return CharTokenizer.train(texts)


def tokens(directory: Path, manifest: Manifest, split: str) -> np.ndarray:
    shards = [np.fromfile(directory / s.file, dtype=manifest.dtype) for s in manifest.split(split).shards]
    return np.concatenate(shards) if shards else np.zeros(0, dtype=manifest.dtype)


def documents(directory: Path, manifest: Manifest, split: str) -> list[list[int]]:
    docs = []
    for shard in manifest.split(split).shards:
        ids = np.fromfile(directory / shard.file, dtype=manifest.dtype)
        index = np.fromfile((directory / shard.file).with_suffix(".idx"), dtype="<u8")
        docs += [ids[a:b].tolist() for a, b in zip(index[:-1], index[1:])]
    return docs


class WideTokenizer(Tokenizer):
    """A stand-in with 70,000 ids: each character maps above 65,535, so uint16 cannot hold it."""

    kind = "wide"

    @property
    def vocab_size(self) -> int:
        return 70_000

    @property
    def bos_id(self) -> int:
        return 69_999

    @property
    def eos_id(self) -> int:
        return 69_999

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._wrap([65_536 + ord(c) % 4000 for c in text], add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        return "".join(chr(i - 65_536) for i in ids if i != 69_999)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WideTokenizer:
        return cls()


class NoSpecialsTokenizer(WideTokenizer):
    kind = "nospecials"

    @property
    def bos_id(self) -> None:
        return None

    @property
    def eos_id(self) -> None:
        return None


def test_stream_shards_read_back_to_exactly_the_source(tmp_path: Path) -> None:
    source = tmp_path / "play.txt"
    source.write_text(TEXT)
    tok = char_tokenizer()
    manifest = prepare(source, tok, tmp_path / "out", mode="stream", val_fraction=0.0, chunk_chars=1000)
    assert manifest.dtype == "uint16" and manifest.val.tokens == 0
    assert tok.decode(tokens(tmp_path / "out", manifest, "train").tolist()) == TEXT
    assert manifest.tokens == len(TEXT) and manifest.source_documents == 1


def test_documents_are_stored_bos_tokens_eos_with_an_index(tmp_path: Path) -> None:
    tok = char_tokenizer()
    manifest = prepare(NAMES, tok, tmp_path / "out", mode="documents", val_fraction=0.0)
    docs = documents(tmp_path / "out", manifest, "train")
    assert docs == [[tok.bos_id, *tok.encode(n), tok.eos_id] for n in NAMES]
    assert manifest.train.documents == manifest.source_documents == len(NAMES)


def test_stream_puts_eos_between_documents(tmp_path: Path) -> None:
    tok = char_tokenizer()
    manifest = prepare(["ab", "cd"], tok, tmp_path / "out", mode="stream", val_fraction=0.0)
    ids = tokens(tmp_path / "out", manifest, "train").tolist()
    assert ids == [*tok.encode("ab"), tok.eos_id, *tok.encode("cd")]


def test_shards_roll_over_and_documents_never_straddle_them(tmp_path: Path) -> None:
    tok = char_tokenizer()
    manifest = prepare(NAMES, tok, tmp_path / "docs", mode="documents", val_fraction=0.0, shard_tokens=100)
    assert len(manifest.train.shards) > 10
    assert all(s.tokens <= 100 for s in manifest.train.shards)
    assert [d[1:-1] for d in documents(tmp_path / "docs", manifest, "train")] == [
        tok.encode(n) for n in NAMES
    ]
    stream = prepare([TEXT], tok, tmp_path / "stream", mode="stream", val_fraction=0.0, shard_tokens=1000)
    assert [s.tokens for s in stream.train.shards[:-1]] == [1000] * (len(stream.train.shards) - 1)
    assert tok.decode(tokens(tmp_path / "stream", stream, "train").tolist()) == TEXT


def test_uint32_shards_when_the_vocabulary_outgrows_uint16(tmp_path: Path) -> None:
    tok = WideTokenizer()
    manifest = prepare(["héllo", "wörld"], tok, tmp_path / "out", mode="documents", val_fraction=0.0)
    assert manifest.dtype == "uint32" and manifest.vocab_size == 70_000
    docs = documents(tmp_path / "out", manifest, "train")
    assert docs[0] == tok.encode("héllo", add_bos=True, add_eos=True)
    assert max(max(d) for d in docs) > 65_535
    assert (tmp_path / "out" / "train_000000.bin").stat().st_size == 4 * manifest.train.tokens


def test_char_fast_path_equals_encode(tmp_path: Path) -> None:
    text = "Ünïcödé ✓ and ascii " * 50
    tok = CharTokenizer.train([text])
    assert encoder_for(tok)(text).tolist() == tok.encode(text)
    assert encoder_for(tok)(text.encode("ascii", "ignore").decode()).tolist() == tok.encode(
        text.encode("ascii", "ignore").decode()
    )
    with pytest.raises(ValueError, match=r"character 'Z' \(U\+005A\) at position 70"):
        encoder_for(tok)("a" * 70 + "Z" + "a" * 70)
    with pytest.raises(ValueError, match=r"character '🙂' \(U\+1F642\) at position 70"):
        encoder_for(CharTokenizer.train(["abc"]))("a" * 70 + "🙂")  # past the end of the table
    unk = CharTokenizer.train([text], unk="<unk>")
    assert encoder_for(unk)("Z" * 100).tolist() == [unk.unk_id] * 100


# --- reuse -----------------------------------------------------------------------------


def mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_same_inputs_reuse_the_shards_untouched(tmp_path: Path) -> None:
    source = tmp_path / "play.txt"
    source.write_text(TEXT)
    tok = char_tokenizer()
    first = prepare(source, tok, tmp_path / "out", mode="stream")
    before = mtimes(tmp_path / "out")
    again = prepare(source, tok, tmp_path / "out", mode="stream")
    assert again.reused and not first.reused
    assert again.model_dump() == first.model_dump()
    assert mtimes(tmp_path / "out") == before


def test_a_changed_source_tokenizer_or_option_prepares_again(tmp_path: Path) -> None:
    source = tmp_path / "play.txt"
    source.write_text(TEXT)
    tok = char_tokenizer([TEXT, "Second"])
    out = tmp_path / "out"
    first = prepare(source, tok, out, mode="stream")
    source.write_text(TEXT.replace("First", "Second"))
    changed = prepare(source, tok, out, mode="stream")
    assert not changed.reused and changed.source_sha256 != first.source_sha256
    other_tok = char_tokenizer([TEXT, "Second", "xyz"])
    retokenized = prepare(source, other_tok, out, mode="stream")
    assert not retokenized.reused and retokenized.tokenizer_hash == other_tok.content_hash
    assert read_manifest(out).tokenizer_hash == other_tok.content_hash
    reseeded = prepare(source, other_tok, out, mode="stream", seed=7)
    assert not reseeded.reused and reseeded.options.seed == 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_a_damaged_shard_is_prepared_again(tmp_path: Path) -> None:
    tok = char_tokenizer()
    prepare(NAMES, tok, tmp_path / "out", mode="documents")
    shard = tmp_path / "out" / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    assert not prepare(NAMES, tok, tmp_path / "out", mode="documents").reused
    assert prepare(NAMES, tok, tmp_path / "out", mode="documents").reused


def test_an_output_directory_that_is_not_prepared_data_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="is not a prepared data directory.*refusing to replace it"):
        prepare(NAMES, char_tokenizer(), tmp_path / "home")
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


# --- the split -------------------------------------------------------------------------


def test_the_split_is_a_function_of_the_seed_and_never_overlaps(tmp_path: Path) -> None:
    tok = char_tokenizer()
    a = prepare(NAMES, tok, tmp_path / "a", mode="documents", seed=1, val_fraction=0.2)
    b = prepare(NAMES, tok, tmp_path / "b", mode="documents", seed=1, val_fraction=0.2)
    c = prepare(NAMES, tok, tmp_path / "c", mode="documents", seed=2, val_fraction=0.2)
    for split in ("train", "val"):
        assert documents(tmp_path / "a", a, split) == documents(tmp_path / "b", b, split)
    train = {tok.decode(d) for d in documents(tmp_path / "a", a, "train")}
    val = {tok.decode(d) for d in documents(tmp_path / "a", a, "val")}
    assert not train & val and train | val == set(NAMES)
    assert 0.1 < len(val) / len(NAMES) < 0.3
    assert {tok.decode(d) for d in documents(tmp_path / "c", c, "val")} != val


def test_stream_split_assigns_whole_segments_and_keeps_every_token(tmp_path: Path) -> None:
    tok = char_tokenizer()
    manifest = prepare([TEXT], tok, tmp_path / "out", mode="stream", val_fraction=0.25, segment_tokens=500)
    assert manifest.options.segment_tokens == 500
    assert manifest.train.tokens + manifest.val.tokens == len(TEXT)
    assert manifest.val.tokens % 500 == 0 or manifest.train.tokens % 500 == 0  # only the last is short
    val = tok.decode(tokens(tmp_path / "out", manifest, "val").tolist())
    segments = [val[i : i + 500] for i in range(0, len(val), 500)]
    assert all(s in TEXT for s in segments)  # each val segment is verbatim source text
    train = tok.decode(tokens(tmp_path / "out", manifest, "train").tolist())
    assert sorted(train + val) == sorted(TEXT)


def test_an_empty_validation_split_is_an_error_not_a_silent_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation split of .* is empty"):
        prepare(
            ["only one document"], char_tokenizer(["only one document"]), tmp_path / "out", val_fraction=0.5
        )
    manifest = prepare(
        ["only one document"], char_tokenizer(["only one document"]), tmp_path / "ok", val_fraction=0
    )
    assert manifest.train.documents == 1


# --- long documents --------------------------------------------------------------------


def test_long_documents_are_truncated_by_default(tmp_path: Path) -> None:
    tok = char_tokenizer(["abcdefghij"])
    manifest = prepare(["abcdefghij", "ab"], tok, tmp_path / "out", val_fraction=0, block_size=4)
    docs = documents(tmp_path / "out", manifest, "train")
    assert docs == [[tok.bos_id, *tok.encode("abcd")], [tok.bos_id, *tok.encode("ab"), tok.eos_id]]
    assert manifest.truncated_documents == 1 and manifest.split_documents == 0


def test_split_long_documents_into_overlapping_windows_so_every_token_is_a_target(tmp_path: Path) -> None:
    tok = char_tokenizer(["abcdefghij"])
    manifest = prepare(
        ["abcdefghij"], tok, tmp_path / "out", val_fraction=0, block_size=4, long_documents="split"
    )
    docs = documents(tmp_path / "out", manifest, "train")
    b = tok.bos_id
    assert docs == [[b, *tok.encode("abcd")], tok.encode("defgh"), [*tok.encode("hij"), b]]
    targets = [t for d in docs for t in d[1:]]
    assert targets == [*tok.encode("abcdefghij"), b]  # each next token predicted exactly once
    assert manifest.split_documents == 1 and manifest.train.documents == 3


def test_block_size_does_not_apply_to_stream_mode(tmp_path: Path) -> None:
    tok = char_tokenizer()
    manifest = prepare([TEXT], tok, tmp_path / "out", mode="stream", val_fraction=0, block_size=4)
    assert manifest.options.block_size is None and manifest.tokens == len(TEXT)


# --- bad input -------------------------------------------------------------------------


def test_an_empty_source_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    for mode in ("documents", "stream"):
        with pytest.raises(ValueError, match="is empty: it has no text"):
            prepare(tmp_path / "empty.txt", char_tokenizer(), tmp_path / f"out-{mode}", mode=mode)
    assert not (tmp_path / "out-documents").exists()


def test_binary_and_undecodable_files_are_errors_and_leave_no_output(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ValueError, match="not UTF-8 text|binary"):
        prepare(tmp_path / "data.bin", char_tokenizer(), tmp_path / "out", mode="stream")
    (tmp_path / "zeros.txt").write_bytes(b"abc\x00\x00def")
    with pytest.raises(ValueError, match="looks like a binary file"):
        prepare(tmp_path / "zeros.txt", char_tokenizer(), tmp_path / "out", mode="stream")
    assert {p.name for p in tmp_path.iterdir()} == {"data.bin", "zeros.txt"}  # no output, no temp dir


def test_text_the_tokenizer_cannot_encode_is_an_error_naming_the_character(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"character 'Q' \(U\+0051\)"):
        prepare(["abc", "aQb"], CharTokenizer.train(["abc"]), tmp_path / "out", val_fraction=0)


def test_documents_mode_needs_a_bos_or_eos_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="documents mode wraps each document in BOS"):
        prepare(["a"], NoSpecialsTokenizer(), tmp_path / "out", mode="documents")
    manifest = prepare(["ab", "cd"], NoSpecialsTokenizer(), tmp_path / "s", mode="stream", val_fraction=0)
    assert manifest.tokens == 4  # no separator to put between documents


def test_a_tokenizer_other_than_the_shards_one_is_refused(tmp_path: Path) -> None:
    tok = char_tokenizer()
    manifest = prepare(NAMES, tok, tmp_path / "out")
    check_tokenizer(manifest, tok)
    with pytest.raises(ValueError, match=r"is not the one .* was prepared with \(char, hash"):
        check_tokenizer(manifest, CharTokenizer.train(["xyz"]))


def test_a_vocabulary_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    tok = char_tokenizer()
    check_vocab(tok, tok.vocab_size)
    check_vocab(tok, 50_304)  # a padded model vocabulary is fine
    with pytest.raises(
        ValueError, match=rf"tokenizer has {tok.vocab_size} ids but the model's vocabulary is 27"
    ):
        check_vocab(tok, 27)
    manifest = prepare(NAMES, tok, tmp_path / "out")
    with pytest.raises(ValueError, match="build the model with vocab_size >="):
        check_vocab(manifest, 10)


def test_bad_options_are_errors(tmp_path: Path) -> None:
    tok = char_tokenizer()
    for kwargs, message in [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"long_documents": "drop"}, "long_documents must be"),
        ({"mode": "lines"}, "mode must be"),
        ({"segment_tokens": 0}, "segment_tokens, shard_tokens and chunk_chars must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            prepare(NAMES, tok, tmp_path / "out", **kwargs)


# --- bounded memory --------------------------------------------------------------------


def test_memory_stays_bounded_while_preparing_a_large_file(tmp_path: Path) -> None:
    line = "the quick brown fox jumps over the lazy dog, again and again\n"
    source = tmp_path / "big.txt"
    with open(source, "w") as f:
        for _ in range(24):
            f.write(line * (1 << 14))  # 24 x 1 MB
    size = os.path.getsize(source)
    tok = CharTokenizer.train([line])
    tracemalloc.start()
    try:
        manifest = prepare(source, tok, tmp_path / "out", mode="stream")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.tokens == size
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB while preparing {size / 2**20:.0f} MiB"


# --- other tokenizer kinds -------------------------------------------------------------


def test_byte_fast_path_equals_encode_and_round_trips(tmp_path: Path) -> None:
    from microgpt.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    text = "héllo wörld ✓ 🙂\n" * 100
    assert encoder_for(tok)(text).tolist() == tok.encode(text)
    manifest = prepare([text], tok, tmp_path / "out", mode="stream", val_fraction=0.0, chunk_chars=100)
    assert manifest.tokens == len(text.encode()) and manifest.dtype == "uint16"
    assert tok.decode(tokens(tmp_path / "out", manifest, "train").tolist()) == text


def test_a_trained_kind_prepares_through_its_own_encode(tmp_path: Path) -> None:
    from microgpt.data.prepare import prepare_dataset

    (tmp_path / "play.txt").write_text(TEXT)
    out, manifest = prepare_dataset(
        str(tmp_path / "play.txt"), cache_dir=tmp_path / "cache", tokenizer="bpe", vocab_size=300
    )
    assert out.name.endswith("-stream-bpe300") and manifest.tokenizer_kind == "bpe"
    assert manifest.tokens < len(TEXT) / 2  # merges make tokens longer than one character
    assert manifest.vocab_size <= 300
