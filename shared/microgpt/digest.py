"""sha256 of files, streamed: the one helper checkpoints, data sources, the registry and exports share.

Every integrity check in microgpt compares a file's sha256 with one recorded earlier, so
they all hash the same way (`hashlib.file_digest`, which reads in chunks and never holds a
whole checkpoint in memory).

    file_sha256("runs/names/checkpoint/model.safetensors")  # "9f86d0..."
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file at `path`."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def directory_sha256s(directory: Path) -> dict[str, str]:
    """{name: sha256} of the plain files directly in `directory`, sorted by name."""
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}
