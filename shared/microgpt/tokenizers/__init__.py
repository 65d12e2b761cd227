"""Tokenizers: one interface (`Tokenizer`), several kinds, saved as tokenizer.json.

Every saved tokenizer is a JSON object with a `"kind"` field; `TOKENIZER_KINDS`
maps each kind to its class, so adding a kind is one module and one line here.

    tok = CharTokenizer.train(names)
    tok.save("tokenizer.json")
    assert load_tokenizer("tokenizer.json").content_hash == tok.content_hash
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from microgpt.tokenizers.base import Tokenizer, atomic_write_bytes, canonical_json
from microgpt.tokenizers.char import CharTokenizer

TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
}


def tokenizer_from_json(data: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its JSON object, dispatching on `data["kind"]`."""
    if not isinstance(data, Mapping):
        raise ValueError(f"tokenizer JSON must be an object, got {type(data).__name__}")
    kind, known = data.get("kind"), ", ".join(TOKENIZER_KINDS)
    if kind is None:
        hint = " (it looks like a bare Hugging Face tokenizer.json)" if "model" in data else ""
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
    "CharTokenizer",
    "Tokenizer",
    "atomic_write_bytes",
    "canonical_json",
    "load_tokenizer",
    "tokenizer_from_json",
]
