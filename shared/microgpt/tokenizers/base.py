"""The tokenizer interface every kind implements: text <-> token ids, saved as JSON.

A tokenizer is data: `to_json()` gives a JSON object that names its kind, and
`microgpt.tokenizers.tokenizer_from_json` rebuilds it through a registry keyed by
kind. `content_hash` is the sha256 of the canonical JSON, so two tokenizers with the
same vocabulary have the same hash in every process, and a checkpoint or dataset
cache can name the exact tokenizer it was built with.

microgpt's own kinds (char, byte) name it in a `"kind"` field. Kinds backed by the
Hugging Face `tokenizers` library return their standard tokenizer.json unchanged:
that library refuses top-level keys it does not know, so the kind is read from the
layout (model type and pre-tokenizer; `microgpt.tokenizers.hf.hf_kind`).
Special tokens never come out of `encode` for ordinary text: they are added only
by `add_bos`/`add_eos`, so text cannot inject a BOS.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from microgpt.atomic import atomic_write_bytes


def canonical_json(data: Mapping[str, Any]) -> bytes:
    """One byte string per JSON value: sorted keys, no whitespace, ASCII escapes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Tokenizer(ABC):
    """Maps text to token ids and back. Subclasses set `kind` and register in the package."""

    kind: ClassVar[str]

    # --- vocabulary -------------------------------------------------------------------

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included; every id is in range(vocab_size)."""

    @property
    def bos_id(self) -> int | None:
        return None

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def pad_id(self) -> int | None:
        return None

    @property
    def unk_id(self) -> int | None:
        return None

    # --- text <-> ids -----------------------------------------------------------------

    @abstractmethod
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally wrapped in BOS/EOS (an error if the kind has none)."""

    @abstractmethod
    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; control specials (BOS, EOS, PAD) are dropped unless skip_special=False."""

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """`encode` over many texts; library-backed kinds override this with a parallel one."""
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    def _wrap(self, ids: list[int], *, add_bos: bool, add_eos: bool) -> list[int]:
        """Add BOS/EOS around `ids`, refusing when this tokenizer has no such token."""
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"{self.kind} tokenizer has no BOS token; cannot add_bos")
            ids.insert(0, self.bos_id)
        if add_eos:
            if self.eos_id is None:
                raise ValueError(f"{self.kind} tokenizer has no EOS token; cannot add_eos")
            ids.append(self.eos_id)
        return ids

    # --- serialisation ----------------------------------------------------------------

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """A JSON object holding everything needed to rebuild this tokenizer, naming its kind."""

    @classmethod
    @abstractmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tokenizer:
        """Rebuild from `to_json()` output; malformed data is a ValueError naming the field."""

    @classmethod
    def _check_header(cls, data: Mapping[str, Any], version: int) -> None:
        """The `kind` and `version` fields of microgpt's own JSON layouts."""
        if data.get("kind") != cls.kind:
            raise ValueError(f"expected kind {cls.kind!r}, got {data.get('kind')!r}")
        if data.get("version") != version:
            raise ValueError(
                f"{cls.kind} tokenizer JSON version {data.get('version')!r} is not one this microgpt "
                f"reads (it reads version {version})"
            )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON (readable, UTF-8) atomically to `path`."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        return atomic_write_bytes(path, text.encode("utf-8"))

    @property
    def content_hash(self) -> str:
        """sha256 hex of the canonical JSON: equal vocabularies, equal hashes, in any process."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"
