"""Tokenizers: one interface (`Tokenizer`), six kinds, saved as tokenizer.json.

| kind          | module | ids                                              | trained |
| ------------- | ------ | ------------------------------------------------ | ------- |
| char          | char   | sorted characters, BOS (+ UNK if asked for)      | yes     |
| byte          | byte   | 256 bytes, BOS, EOS, PAD                          | no      |
| bpe           | hf     | <unk>, BPE pieces, BOS, EOS, PAD                  | yes     |
| bytelevel-bpe | hf     | 256 byte symbols, GPT-2 BPE merges, BOS, EOS, PAD | yes     |
| wordpiece     | hf     | <unk>, WordPiece pieces, BOS, EOS, PAD            | yes     |
| unigram       | hf     | <unk>, Unigram pieces, BOS, EOS, PAD              | yes     |

A saved char or byte tokenizer is a JSON object with a `"kind"` field; the other
four are the standard Hugging Face tokenizer.json, whose layout names the kind
(`hf_kind`). `TOKENIZER_KINDS` maps each kind to its class, so adding a kind is one
module and one line here.

    tok = train_tokenizer("bytelevel-bpe", docs, vocab_size=4096)
    tok.save("tokenizer.json")
    assert load_tokenizer("tokenizer.json").content_hash == tok.content_hash
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from microgpt.tokenizers.base import Tokenizer, atomic_write_bytes, canonical_json
from microgpt.tokenizers.byte import ByteTokenizer
from microgpt.tokenizers.char import CharTokenizer
from microgpt.tokenizers.hf import (
    BPETokenizer,
    ByteLevelBPETokenizer,
    HFTokenizer,
    UnigramTokenizer,
    WordPieceTokenizer,
    hf_kind,
)

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    ByteTokenizer.kind: ByteTokenizer,
    BPETokenizer.kind: BPETokenizer,
    ByteLevelBPETokenizer.kind: ByteLevelBPETokenizer,
    WordPieceTokenizer.kind: WordPieceTokenizer,
    UnigramTokenizer.kind: UnigramTokenizer,
}


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer of `kind` fitted to `texts` (documents or lines, read once).

    `vocab_size` (specials included) is required by the trained kinds and is an upper
    bound there; char (its size is the alphabet's) and byte (always 259) ignore it.
    """
    cls = TOKENIZER_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {', '.join(TOKENIZER_KINDS)}")
    if cls is ByteTokenizer:
        return ByteTokenizer()
    if cls is CharTokenizer:
        return CharTokenizer.train(texts)
    assert issubclass(cls, HFTokenizer)
    if vocab_size is None:
        raise ValueError(f"the {kind} kind needs a vocab_size (at least {cls.min_vocab_size()})")
    return cls.train(texts, vocab_size=vocab_size)


def tokenizer_from_json(data: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its JSON object, dispatching on `data["kind"]` or, for a
    Hugging Face tokenizer.json, on its layout (`hf_kind`)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"tokenizer JSON must be an object, got {type(data).__name__}")
    kind, known = data.get("kind") or hf_kind(data), ", ".join(TOKENIZER_KINDS)
    if kind is None:
        hint = (
            " and is not a Hugging Face tokenizer.json laid out as one of microgpt's kinds"
            if "model" in data
            else ""
        )
        raise ValueError(f"tokenizer JSON has no 'kind' field{hint}; known kinds: {known}")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {known}")
    return TOKENIZER_KINDS[kind].from_json(data)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer.json; a malformed file is a ValueError naming the path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return tokenizer_from_json(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {e}") from e


__all__ = [
    "TOKENIZER_KINDS",
    "BPETokenizer",
    "ByteLevelBPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "UnigramTokenizer",
    "WordPieceTokenizer",
    "atomic_write_bytes",
    "canonical_json",
    "hf_kind",
    "load_tokenizer",
    "tokenizer_from_json",
    "train_tokenizer",
]
