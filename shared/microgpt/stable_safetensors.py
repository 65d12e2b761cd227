"""Safetensors files whose bytes depend only on their tensors and metadata, in any process.

safetensors' Rust writer orders the tensors deterministically (by dtype alignment, then
name) but writes the `__metadata__` map in HashMap order, which is seeded per process: two
processes saving the same tensors could give different bytes, so identical trainings got
different sha256s and the registry could not deduplicate them. Here the file is serialized
by safetensors as usual, then its JSON header is written again with the metadata keys
sorted; the tensor entries, their data offsets and the data are kept as they are, and the
header is padded with spaces to a multiple of 8 bytes as safetensors pads it.

    save_safetensors(path, tensors, {"format": "pt"})   # instead of safetensors.torch.save_file
    data = safetensors_bytes(tensors, {"format": "pt"})  # instead of safetensors.torch.save
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import safetensors.torch
import torch


def _stable_parts(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[bytes, memoryview]:
    """The file's new length-prefixed header and a view of its tensor data (no copy of it)."""
    raw = safetensors.torch.save(dict(tensors), metadata=dict(metadata))
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    text = json.dumps({**ordered, **header}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, memoryview(raw)[8 + length :]


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors serialization of `tensors` with `metadata`, the same in every process."""
    header, data = _stable_parts(tensors, metadata)
    return header + data


def save_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write `safetensors_bytes(tensors, metadata)` to a new file at `path` (never replacing one:
    writers build their output in a temporary directory and rename it into place)."""
    header, data = _stable_parts(tensors, metadata)
    with open(path, "xb") as f:
        f.write(header)
        f.write(data)
