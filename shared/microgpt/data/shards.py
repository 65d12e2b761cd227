"""Token shards on disk: written in order with bounded memory, read back lazily with numpy.memmap.

A split (train or val) is a sequence of shard files `{split}_{n:06d}.bin`, each a raw
array of at most `shard_tokens` ids (uint16 or uint32), so one split can be far larger
than memory and still be read at random positions without loading it. In documents
mode each shard has an index `{split}_{n:06d}.idx` (uint64: the start offset of every
document in the shard, then its end), and a document never straddles two shards. Data
prepared for training on assistant turns only (`loss_on="assistant"`) has a loss mask beside
each shard, `{split}_{n:06d}.mask`: one byte per token, 1 where the token is a target to learn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from microgpt.data.manifest import Manifest, Shard, SplitInfo

_FLUSH_TOKENS = 1 << 20  # buffered ids per write: few syscalls, a few MB of memory at most
_FLUSH_DOCS = 1 << 16


class ShardWriter:
    """Appends the ids of one split to numbered shards, rolling over at `shard_tokens`."""

    def __init__(
        self,
        directory: Path,
        split: str,
        dtype: str,
        *,
        shard_tokens: int,
        documents: bool,
        masked: bool = False,
    ):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.directory, self.split, self.dtype = directory, split, np.dtype(dtype)
        self._le = self.dtype.newbyteorder("<")  # shards are little-endian on every machine
        self.shard_tokens, self.documents, self.masked = shard_tokens, documents, masked
        self.info = SplitInfo()
        self._file: BinaryIO | None = None
        self._idx: BinaryIO | None = None
        self._mask: BinaryIO | None = None
        self._mask_buf: list[np.ndarray] = []
        self._in_shard = 0  # tokens in the open shard, written or buffered
        self._docs_in_shard = 0
        self._buf: list[np.ndarray] = []
        self._buf_tokens = 0
        self._ends: list[int] = []

    def write(self, ids: np.ndarray) -> None:
        """Stream mode: append ids, splitting them across shards as they fill."""
        while len(ids):
            if self._file is None or self._in_shard == self.shard_tokens:
                self._open()
            take = min(len(ids), self.shard_tokens - self._in_shard)
            self._append(ids[:take])
            ids = ids[take:]

    def write_document(self, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Documents mode: append one whole document (a shard holds it whole, even if it overflows);
        a masked writer takes its loss mask too (one bool per id)."""
        n = len(ids)
        if (mask is None) == self.masked or (mask is not None and len(mask) != n):
            raise ValueError("a masked writer takes one mask value per id; an unmasked one takes none")
        if self._file is None or (self._in_shard and self._in_shard + n > self.shard_tokens):
            self._open()
        if mask is not None:
            self._mask_buf.append(mask.astype(np.uint8))
        self._append(ids)
        self._ends.append(self._in_shard)
        self._docs_in_shard += 1
        self.info.documents += 1
        if len(self._ends) >= _FLUSH_DOCS:
            self._flush_index()

    def close(self) -> SplitInfo:
        self._close_shard()
        return self.info

    def _append(self, ids: np.ndarray) -> None:
        # a copy in the shard dtype: a view would keep its whole (larger, wider) source array alive
        self._buf.append(ids.astype(self._le, copy=True))
        self._buf_tokens += len(ids)
        self._in_shard += len(ids)
        self.info.tokens += len(ids)
        if self._buf_tokens >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            assert self._file is not None
            block = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
            self._file.write(block.data)  # the array's own buffer: written without a copy
            self._buf, self._buf_tokens = [], 0
        if self._mask_buf:
            assert self._mask is not None
            self._mask.write(np.concatenate(self._mask_buf).data)
            self._mask_buf = []

    def _flush_index(self) -> None:
        if self._ends:
            assert self._idx is not None
            self._idx.write(np.asarray(self._ends, dtype="<u8").tobytes())
            self._ends = []

    def _open(self) -> None:
        self._close_shard()
        name = f"{self.split}_{len(self.info.shards):06d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 (closed in _close_shard)
        self.info.shards.append(Shard(file=name, tokens=0, documents=0 if self.documents else None))
        self._in_shard = self._docs_in_shard = 0
        if self.documents:
            self._idx = open((self.directory / name).with_suffix(".idx"), "wb")  # noqa: SIM115
            self._idx.write(np.zeros(1, dtype="<u8").tobytes())
        if self.masked:
            self._mask = open((self.directory / name).with_suffix(".mask"), "wb")  # noqa: SIM115

    def _close_shard(self) -> None:
        if self._file is None:
            return
        self._flush()
        self._flush_index()
        shard = self.info.shards[-1]
        shard.tokens = self._in_shard
        if self.documents:
            shard.documents = self._docs_in_shard
        for f in (self._file, self._idx, self._mask):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._file = self._idx = self._mask = None


class SplitReader:
    """One split's shards as a single lazily read sequence of tokens (and of documents)."""

    def __init__(self, directory: Path, manifest: Manifest, split: str):
        info = manifest.split(split)
        self.split = split
        self._tokens = [
            np.memmap(directory / s.file, dtype=np.dtype(manifest.dtype).newbyteorder("<"), mode="r")
            if s.tokens
            else np.zeros(0, dtype=manifest.dtype)
            for s in info.shards
        ]
        self.masked = manifest.options.loss_on == "assistant"  # a loss mask beside each shard
        self._masks = [
            np.memmap((directory / s.file).with_suffix(".mask"), dtype=np.uint8, mode="r")
            if s.tokens
            else np.zeros(0, dtype=np.uint8)
            for s in (info.shards if self.masked else [])
        ]
        self._token_starts = np.cumsum([0] + [s.tokens for s in info.shards])
        self.tokens = int(self._token_starts[-1])
        self._index: list[np.ndarray] = []
        if manifest.mode == "documents":
            self._index = [
                np.memmap((directory / s.file).with_suffix(".idx"), dtype="<u8", mode="r")
                for s in info.shards
            ]
            self._doc_starts = np.cumsum([0] + [s.documents or 0 for s in info.shards])
            self.documents = int(self._doc_starts[-1])
        else:
            self.documents = 0

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, clipped at the split's end."""
        return self._read(self._tokens, start, length, np.int64)

    def read_mask(self, start: int, length: int) -> np.ndarray:
        """The loss mask of tokens [start, start + length) as bools (all True when there is none)."""
        if not self.masked:
            return np.ones(max(0, min(start + length, self.tokens) - start), dtype=bool)
        return self._read(self._masks, start, length, np.bool_)

    def _read(self, arrays: list[np.ndarray], start: int, length: int, dtype: type) -> np.ndarray:
        out: list[np.ndarray] = []
        end = min(start + length, self.tokens)
        shard = int(np.searchsorted(self._token_starts, start, side="right")) - 1
        while start < end:
            base = int(self._token_starts[shard])
            stop = min(end, int(self._token_starts[shard + 1]))
            out.append(np.asarray(arrays[shard][start - base : stop - base], dtype=dtype))
            start, shard = stop, shard + 1
        return np.concatenate(out) if out else np.zeros(0, dtype=dtype)

    def document(self, index: int) -> tuple[int, int]:
        """Global token range [start, end) of document `index` of this split."""
        shard = int(np.searchsorted(self._doc_starts, index, side="right")) - 1
        local = index - int(self._doc_starts[shard])
        base = int(self._token_starts[shard])
        idx = self._index[shard]
        return base + int(idx[local]), base + int(idx[local + 1])
