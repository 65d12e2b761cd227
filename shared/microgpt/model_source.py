"""Naming a model to load: a checkpoint directory or a registry ref, and the CLI arguments for it.

    microgpt sample runs/names/checkpoint          # a directory
    microgpt sample names@production --precision int8
    microgpt eval names/3 --data names

`checkpoint_path` turns what a user typed into a local directory (pulling a ref, every
file sha256-verified, into the registry cache); `microgpt.loading.load_model` loads it.
Kept apart from the loader because it imports no torch, so commands can declare their
arguments without loading it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from microgpt.precision import PRECISIONS
from microgpt.registry.names import PINNED_REF_RE

if TYPE_CHECKING:
    from microgpt.registry.client import RegistryClient


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI's way to name a model (`checkpoint`, `--precision`), the same in sample, chat and eval."""
    parser.add_argument("checkpoint", help="checkpoint directory, or registry ref name/3 or name@alias")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="load at this precision (default: as stored: the float weights, else the quantized ones)",
    )


def checkpoint_path(path_or_ref: str | os.PathLike[str], *, registry: RegistryClient | None = None) -> Path:
    """The local checkpoint directory of `path_or_ref`: the path itself, or the pulled registry ref."""
    path = Path(path_or_ref).expanduser()
    text = os.fspath(path_or_ref)
    if path.exists() or not PINNED_REF_RE.fullmatch(text):
        return path  # not a ref: load_checkpoint's errors name the missing path
    if registry is not None:
        return registry.pull(text)
    from microgpt.registry.client import RegistryClient
    from microgpt.settings import get_settings

    with RegistryClient.from_settings(get_settings()) as client:
        return client.pull(text)
