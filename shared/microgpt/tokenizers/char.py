"""Character tokenizer, microgpt style: one id per character seen in training, plus BOS.

Ids 0..len(chars)-1 are the characters in sorted order; BOS is id len(chars) and
marks both ends of a document (microgpt wraps every name as BOS name BOS), so
`eos_id == bos_id`. There is no padding token. A names vocabulary (a-z) is 27 ids.

A character outside the vocabulary is an error naming it and its position, never a
silent substitution; `unk="<unk>"` opts in to an UNK token (the id after BOS) that
unknown characters map to.

    tok = CharTokenizer.train(open("names.txt"))
    tok.encode("emma", add_bos=True, add_eos=True)  # [26, 4, 12, 12, 0, 26]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from microgpt.tokenizers.base import Tokenizer

JSON_VERSION = 1
DEFAULT_BOS = "<|bos|>"


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str], *, bos: str = DEFAULT_BOS, unk: str | None = None):
        self.chars: tuple[str, ...] = tuple(chars)
        for i, ch in enumerate(self.chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"chars[{i}] must be a single character, got {ch!r}")
        if len(set(self.chars)) != len(self.chars):
            dupes = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise ValueError(f"chars must be unique; repeated: {dupes!r}")
        if not self.chars:
            raise ValueError("a char tokenizer needs at least one character")
        if not bos or (unk is not None and (not unk or unk == bos)):
            raise ValueError(f"bos and unk must be distinct non-empty strings: {bos!r}, {unk!r}")
        self.bos_token, self.unk_token = bos, unk
        self._stoi = {ch: i for i, ch in enumerate(self.chars)}
        self._bos = len(self.chars)
        self._unk = self._bos + 1 if unk is not None else None

    @classmethod
    def train(cls, texts: Iterable[str], *, bos: str = DEFAULT_BOS, unk: str | None = None) -> CharTokenizer:
        """The sorted unique characters of `texts` (an iterable of documents or lines)."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise ValueError("cannot train a char tokenizer on empty text")
        return cls(sorted(seen), bos=bos, unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1 + (self._unk is not None)

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._bos

    @property
    def unk_id(self) -> int | None:
        return self._unk

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        stoi = self._stoi
        try:
            ids = [stoi[ch] for ch in text]
        except KeyError:  # the slow path finds the position, or maps to UNK
            ids = [stoi[ch] if ch in stoi else self._unknown(text, i) for i, ch in enumerate(text)]
        return self._wrap(ids, add_bos=add_bos, add_eos=add_eos)

    def _unknown(self, text: str, position: int) -> int:
        if self._unk is not None:
            return self._unk
        ch = text[position]
        raise ValueError(
            f"character {ch!r} (U+{ord(ch):04X}) at position {position} is not in this char "
            f"tokenizer's vocabulary of {len(self.chars)} characters; train on text that "
            f"contains it, or build the tokenizer with unk='<unk>' to map unknowns to UNK"
        )

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Characters of `ids`; BOS is dropped by default, UNK always reads as its token."""
        out = []
        n = len(self.chars)
        for pos, raw in enumerate(ids):
            i = int(raw)
            if 0 <= i < n:
                out.append(self.chars[i])
            elif i == self._bos:
                if not skip_special:
                    out.append(self.bos_token)
            elif i == self._unk and self.unk_token is not None:
                out.append(self.unk_token)  # stands for real text, so never skipped
            else:
                raise ValueError(
                    f"id {i} at position {pos} is outside the vocabulary (size {self.vocab_size})"
                )
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        specials = {"bos": {"token": self.bos_token, "id": self._bos}}
        if self._unk is not None:
            specials["unk"] = {"token": self.unk_token, "id": self._unk}
        return {
            "kind": self.kind,
            "version": JSON_VERSION,
            "chars": "".join(self.chars),
            "specials": specials,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CharTokenizer:
        cls._check_header(data, JSON_VERSION)
        unknown = set(data) - {"kind", "version", "chars", "specials", "vocab_size"}
        if unknown:
            raise ValueError(f"char tokenizer JSON has unknown fields: {sorted(unknown)}")
        chars, specials = data.get("chars"), data.get("specials")
        if not isinstance(chars, str):
            raise ValueError(f"char tokenizer JSON: 'chars' must be a string, got {chars!r}")
        if not isinstance(specials, Mapping) or "bos" not in specials or set(specials) - {"bos", "unk"}:
            raise ValueError(
                f"char tokenizer JSON: 'specials' must hold 'bos' and maybe 'unk', got {specials!r}"
            )
        tokens = {}
        for role, entry in specials.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
                raise ValueError(f"char tokenizer JSON: specials.{role} must be {{'token': str, 'id': int}}")
            tokens[role] = entry["token"]
        tok = cls(chars, bos=tokens["bos"], unk=tokens.get("unk"))
        # ids are derived from the layout; stored ones are for other readers, and must agree
        for role, entry in specials.items():
            expected = tok.bos_id if role == "bos" else tok.unk_id
            if entry.get("id") != expected:
                raise ValueError(
                    f"char tokenizer JSON: specials.{role}.id is {entry.get('id')!r} but the "
                    f"layout puts {role} at {expected}"
                )
        if data.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise ValueError(
                f"char tokenizer JSON: vocab_size is {data['vocab_size']!r} but chars and "
                f"specials make {tok.vocab_size}"
            )
        return tok
