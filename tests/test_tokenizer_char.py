"""The char tokenizer: microgpt's layout (sorted chars, then BOS), strict about unknowns, and
its JSON round trip and content hash. The hash is checked across a fresh interpreter too.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest

from microgpt.tokenizers import (
    TOKENIZER_KINDS,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_json,
)

# Together these spell every letter a-z, so the vocabulary is microgpt's 26 + BOS.
NAMES = [
    "emma",
    "olivia",
    "ava",
    "sophia",
    "quinn",
    "xavier",
    "zoe",
    "jack",
    "kylie",
    "brody",
    "wyatt",
    "felix",
    "hugo",
    "penelope",
    "grace",
    "dmitri",
]


@pytest.fixture
def names_tok() -> CharTokenizer:
    return CharTokenizer.train(NAMES)


def test_names_vocabulary_is_microgpt_layout(names_tok: CharTokenizer) -> None:
    assert set("".join(NAMES)) == set(string.ascii_lowercase)
    assert names_tok.vocab_size == 27
    assert names_tok.chars == tuple(string.ascii_lowercase)
    assert names_tok.bos_id == 26 and names_tok.eos_id == 26
    assert names_tok.pad_id is None and names_tok.unk_id is None
    assert names_tok.kind == "char" and isinstance(names_tok, Tokenizer)


def test_encode_decode_round_trip(names_tok: CharTokenizer) -> None:
    ids = names_tok.encode("emma", add_bos=True, add_eos=True)
    assert ids == [26, 4, 12, 12, 0, 26]  # microgpt: [BOS] + name + [BOS]
    assert names_tok.decode(ids) == "emma"
    assert names_tok.decode(ids, skip_special=False) == "<|bos|>emma<|bos|>"
    for name in NAMES:
        assert names_tok.decode(names_tok.encode(name)) == name
    assert names_tok.encode_batch(["ava", "zoe"], add_bos=True) == [[26, 0, 21, 0], [26, 25, 14, 4]]
    assert names_tok.encode("") == []


def test_specials_cannot_be_injected_through_text(names_tok: CharTokenizer) -> None:
    tok = CharTokenizer.train(NAMES + ["<|bos|>"])
    assert tok.bos_id not in tok.encode("<|bos|>")


def test_unknown_character_is_an_error_naming_it_and_its_position(names_tok: CharTokenizer) -> None:
    with pytest.raises(ValueError, match=r"'Q' \(U\+0051\) at position 2") as err:
        names_tok.encode("emQa")
    assert "unk=" in str(err.value)  # the message says how to opt in to UNK


def test_unk_mode_maps_unknowns_to_the_id_after_bos() -> None:
    tok = CharTokenizer.train(NAMES, unk="<unk>")
    assert tok.vocab_size == 28 and tok.bos_id == 26 and tok.unk_id == 27
    assert tok.encode("emQa") == [4, 12, 27, 0]
    assert tok.decode([4, 12, 27, 0]) == "em<unk>a"  # UNK stands for text: never skipped


def test_decode_refuses_out_of_range_ids(names_tok: CharTokenizer) -> None:
    with pytest.raises(ValueError, match="id 27 at position 1"):
        names_tok.decode([0, 27])
    with pytest.raises(ValueError, match="id -1"):
        names_tok.decode([-1])


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        CharTokenizer("abca")
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train(["", ""])


def test_json_layout_and_save_load(tmp_path: Path, names_tok: CharTokenizer) -> None:
    data = names_tok.to_json()
    assert data["kind"] == "char" and data["version"] == 1
    assert data["chars"] == string.ascii_lowercase
    assert data["specials"] == {"bos": {"token": "<|bos|>", "id": 26}}
    path = names_tok.save(tmp_path / "tokenizer.json")
    assert json.loads(path.read_text()) == data
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.to_json() == data and loaded.content_hash == names_tok.content_hash
    assert loaded.encode("quinn") == names_tok.encode("quinn")

    unk = CharTokenizer("abc", unk="<unk>")
    assert tokenizer_from_json(unk.to_json()).encode("abz") == [0, 1, 4]


def test_non_ascii_vocabulary_round_trips(tmp_path: Path) -> None:
    tok = CharTokenizer.train(["héllo wörld", "日本語\n"])
    back = load_tokenizer(tok.save(tmp_path / "t.json"))
    assert back.decode(back.encode("wörld 日本\n")) == "wörld 日本\n"
    assert back.content_hash == tok.content_hash


def test_malformed_json_is_refused(tmp_path: Path, names_tok: CharTokenizer) -> None:
    good = names_tok.to_json()
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece9'"):
        tokenizer_from_json({**good, "kind": "wordpiece9"})
    with pytest.raises(ValueError, match="no 'kind' field"):
        tokenizer_from_json({"version": "1.0", "model": {"type": "BPE"}})
    with pytest.raises(ValueError, match="version 2"):
        tokenizer_from_json({**good, "version": 2})
    with pytest.raises(ValueError, match="specials.bos.id"):
        tokenizer_from_json({**good, "specials": {"bos": {"token": "<|bos|>", "id": 3}}})
    with pytest.raises(ValueError, match="unknown fields"):
        tokenizer_from_json({**good, "extra": 1})
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(bad)


def test_content_hash_is_stable_and_tracks_the_vocabulary(names_tok: CharTokenizer) -> None:
    assert names_tok.content_hash == CharTokenizer.train(reversed(NAMES)).content_hash
    assert len(names_tok.content_hash) == 64
    assert CharTokenizer.train(NAMES + ["!"]).content_hash != names_tok.content_hash
    assert CharTokenizer.train(NAMES, unk="<unk>").content_hash != names_tok.content_hash
    assert CharTokenizer.train(NAMES, bos="<s>").content_hash != names_tok.content_hash
    # Another interpreter (another hash seed, so another set/dict order) gets the same hash.
    code = f"from microgpt.tokenizers import CharTokenizer;print(CharTokenizer.train({NAMES!r}).content_hash)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == names_tok.content_hash


def test_registry_holds_char() -> None:
    assert TOKENIZER_KINDS["char"] is CharTokenizer
