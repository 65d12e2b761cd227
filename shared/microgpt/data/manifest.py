"""The manifest of a prepared data directory, and the checks that keep shards and models honest.

    prepared/shakespeare-stream-char/
      manifest.json        this model: source sha256, tokenizer hash, options, counts, shards
      tokenizer.json       the tokenizer the shards were made with
      train_000000.bin     token ids, raw little-endian uint16 (uint32 for vocabularies > 65,536)
      train_000000.idx     documents mode only: uint64 start offsets of each document, then the end
      train_000000.mask    loss_on="assistant" only: one byte per token, 1 where it is a target to learn
      val_000000.bin ...

Shards are plain arrays, so `numpy.memmap` reads them lazily with no parsing. The
manifest is the only place that says how to read them, and what they were made from:
a later `prepare` with the same source, tokenizer and options finds it and reuses the
shards; a reader with a different tokenizer is refused (`check_tokenizer`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microgpt.data.sources import Mode

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
Dtype = Literal["uint16", "uint32"]
LongDocuments = Literal["truncate", "split"]
LossOn = Literal["all", "assistant"]  # every token is a target, or only what the assistant writes
Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")


def dtype_for(vocab_size: int) -> Dtype:
    """The narrowest shard dtype that holds every id in range(vocab_size)."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Options(_Strict):
    """Everything besides source and tokenizer that changes the shards; equal options reuse them."""

    mode: Mode
    seed: int
    val_fraction: float
    block_size: int | None = None  # documents mode: the longest document is block_size + 1 tokens
    long_documents: LongDocuments = "truncate"
    text_field: str = "text"
    segment_tokens: int  # stream mode: the train/val split assigns segments of this many tokens
    shard_tokens: int
    loss_on: LossOn = "all"  # "assistant": conversations, with a loss mask over the replies
    chat_template: int | None = None  # loss_on="assistant": microgpt.chat.TEMPLATE_VERSION of the masks


class Shard(_Strict):
    file: str
    tokens: int
    documents: int | None = None  # documents mode; its index file is `file` with .idx


class SplitInfo(_Strict):
    tokens: int = 0
    documents: int = 0  # stored documents (a split long document counts once per piece)
    shards: list[Shard] = Field(default_factory=list)


class Manifest(_Strict):
    format_version: int = FORMAT_VERSION
    microgpt_version: str
    source: str
    source_sha256: str
    tokenizer_kind: str
    tokenizer_hash: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    dtype: Dtype
    options: Options
    source_documents: int  # documents read from the source
    truncated_documents: int = 0
    split_documents: int = 0
    train: SplitInfo
    val: SplitInfo
    reused: bool = Field(default=False, exclude=True)  # set by prepare() when nothing was rewritten

    @property
    def mode(self) -> Mode:
        return self.options.mode

    @property
    def tokens(self) -> int:
        return self.train.tokens + self.val.tokens

    def split(self, name: str) -> SplitInfo:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        return self.train if name == "train" else self.val


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """The manifest of a prepared directory; anything else is a ValueError saying what to run."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(
            f"{directory} is not a prepared data directory (no {MANIFEST_FILE}); "
            f"make one with `microgpt data prepare`"
        )
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as e:
        raise ValueError(f"{path} is not a valid manifest: {e}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {manifest.format_version}; this microgpt reads "
            f"{FORMAT_VERSION}: prepare the data again"
        )
    return manifest


def shards_intact(directory: Path, manifest: Manifest) -> bool:
    """Whether every shard (and index) the manifest lists exists with the size it implies."""
    itemsize = np.dtype(manifest.dtype).itemsize
    for split in SPLITS:
        for shard in manifest.split(split).shards:
            bin_path = directory / shard.file
            if not bin_path.is_file() or bin_path.stat().st_size != shard.tokens * itemsize:
                return False
            if shard.documents is not None:
                idx = bin_path.with_suffix(".idx")
                if not idx.is_file() or idx.stat().st_size != (shard.documents + 1) * 8:
                    return False
            if manifest.options.loss_on == "assistant":
                mask = bin_path.with_suffix(".mask")
                if not mask.is_file() or mask.stat().st_size != shard.tokens:
                    return False
    return True


class _HasVocab(Protocol):
    @property
    def vocab_size(self) -> int: ...


class _HasHash(Protocol):
    @property
    def content_hash(self) -> str: ...

    @property
    def kind(self) -> str: ...


def check_tokenizer(manifest: Manifest, tokenizer: _HasHash, *, where: str = "the prepared data") -> None:
    """Refuse a tokenizer other than the one the shards were made with: its ids would mean other text."""
    if tokenizer.content_hash != manifest.tokenizer_hash:
        raise ValueError(
            f"the {tokenizer.kind} tokenizer (hash {tokenizer.content_hash[:12]}) is not the one "
            f"{where} was prepared with ({manifest.tokenizer_kind}, hash {manifest.tokenizer_hash[:12]}); "
            f"use the tokenizer.json saved beside the shards, or prepare the data again with this tokenizer"
        )


def check_vocab(vocab: _HasVocab | int, model_vocab_size: int) -> None:
    """Refuse a tokenizer (or prepared data) with more ids than the model has embeddings.

    A larger model vocabulary is fine (nanoGPT pads GPT-2's 50,257 to 50,304); a smaller one
    would index past the embedding table, so it is an error that says which size to use.
    """
    size = vocab if isinstance(vocab, int) else vocab.vocab_size
    if size > model_vocab_size:
        raise ValueError(
            f"the tokenizer has {size:,} ids but the model's vocabulary is {model_vocab_size:,}; "
            f"build the model with vocab_size >= {size} (or use a smaller tokenizer)"
        )
