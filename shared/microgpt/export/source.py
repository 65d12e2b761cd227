"""What every exporter shares: the checkpoint it reads, and the `Export` it hands back.

Every exporter starts the same way (a float checkpoint in float32, an output directory that
is not the source and may be replaced), so the checks live here once and their messages read
the same for every format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from microgpt.checkpoint import MODEL_FILE, Checkpoint, check_replaceable, read_config
from microgpt.export.parity import ParityReport


@dataclass(frozen=True)
class Export:
    path: Path
    format: str
    parity: ParityReport | None  # None when the format's runtime is not installed here
    notes: list[str] = field(default_factory=list)  # what it had to do differently (per-tensor fallbacks)


def load_source(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Checkpoint:
    """The float checkpoint at `src` in float32, after refusing an output that would clobber it."""
    from microgpt.loading import load_model

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ValueError(f"--out must differ from the source checkpoint {src}")
    cfg = read_config(src)
    if MODEL_FILE not in cfg.files:
        raise ValueError(f"{src} holds no float weights ({MODEL_FILE}); export a float checkpoint")
    ckpt = load_model(src, precision="fp32")
    check_replaceable(dst)
    return ckpt
