"""Byte tokenizer: the 256 byte values of UTF-8 text, then BOS, EOS and PAD.

Ids 0..255 are bytes, 256 is BOS, 257 EOS, 258 PAD: 259 ids, no training and no
UNK, since every string is a byte sequence. `decode` replaces byte sequences that
are not valid UTF-8 (a model can emit any ids) with U+FFFD, so decoding never
fails and a multi-byte character cut in half reads as "\ufffd" until its last
byte arrives. `decode(encode(s)) == s` for every str that UTF-8 can encode; a
lone surrogate (which no UTF-8 text contains) is a ValueError.

    tok = ByteTokenizer()
    tok.encode("hé", add_bos=True)  # [256, 104, 195, 169]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from microgpt.tokenizers.base import Tokenizer

JSON_VERSION = 1
BYTE_VALUES = 256
SPECIAL_TOKENS = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}  # ids 256, 257, 258 in this order


def utf8(text: str) -> bytes:
    """`text` as UTF-8; a lone surrogate is a ValueError naming its position."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text has a lone surrogate {text[e.start]!r} at position {e.start}, which UTF-8 "
            f"cannot encode (it often comes from decoding bytes with errors='surrogateescape')"
        ) from None


class ByteTokenizer(Tokenizer):
    kind = "byte"

    def __init__(self) -> None:
        self.special_ids = {role: BYTE_VALUES + i for i, role in enumerate(SPECIAL_TOKENS)}
        self._token_of = {BYTE_VALUES + i: token for i, token in enumerate(SPECIAL_TOKENS.values())}

    @property
    def vocab_size(self) -> int:
        return BYTE_VALUES + len(SPECIAL_TOKENS)

    @property
    def bos_id(self) -> int:
        return self.special_ids["bos"]

    @property
    def eos_id(self) -> int:
        return self.special_ids["eos"]

    @property
    def pad_id(self) -> int:
        return self.special_ids["pad"]

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._wrap(list(utf8(text)), add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """UTF-8 text of the byte ids (invalid sequences become U+FFFD); specials dropped by default."""
        out, run = [], bytearray()  # bytes are decoded a run at a time, so multi-byte characters join up
        for pos, raw in enumerate(ids):
            i = int(raw)
            if 0 <= i < BYTE_VALUES:
                run.append(i)
            elif i in self._token_of:
                if not skip_special:
                    out.append(run.decode("utf-8", errors="replace"))
                    out.append(self._token_of[i])
                    run.clear()
            else:
                raise ValueError(
                    f"id {i} at position {pos} is outside the vocabulary (size {self.vocab_size})"
                )
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": JSON_VERSION,
            "specials": {
                role: {"token": SPECIAL_TOKENS[role], "id": i} for role, i in self.special_ids.items()
            },
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ByteTokenizer:
        """Check that `data` is this layout; the fields are there for other readers, not choices."""
        cls._check_header(data, JSON_VERSION)
        tok = cls()
        unknown = set(data) - set(tok.to_json())
        if unknown:
            raise ValueError(f"byte tokenizer JSON has unknown fields: {sorted(unknown)}")
        for field, expected in tok.to_json().items():
            if data.get(field) != expected:
                raise ValueError(
                    f"byte tokenizer JSON: {field!r} is {data.get(field)!r}, but the byte layout "
                    f"(bytes 0-255, then BOS, EOS, PAD) gives {expected!r}"
                )
        return tok
