"""A job's intermediate checkpoints in object storage, so that any worker can resume it.

    jobs/<id>/checkpoints/00000200/checkpoint/model.safetensors   (and the other checkpoint files)
    jobs/<id>/checkpoints/00000200/adapters.safetensors           a LoRA run's adapters
    jobs/<id>/checkpoints/00000200/best/model.safetensors         the best evaluation so far
    jobs/<id>/latest.json                                         {"step", "files": {path: sha256}}

Every file of a checkpoint is uploaded first and `latest.json` is written last, so the
pointer only ever names a complete upload; older steps are deleted after the pointer
moves. A worker that resumes downloads what the pointer names into a fresh run directory
and checks every file's sha256 before the training loop reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from microgpt.storage import ObjectNotFound, ObjectStore
from microgpt.train.loop import ADAPTERS_FILE, BEST_DIR, CHECKPOINT_DIR

POINTER = "latest.json"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def upload_checkpoint(store: ObjectStore, job_id: str, out_dir: Path, step: int) -> dict[str, str]:
    """Upload `out_dir`'s checkpoint (and adapters, best) for `step`, then move the pointer to it."""
    prefix = f"{job_prefix(job_id)}checkpoints/{step:08d}/"
    files: dict[str, str] = {}
    sources = [
        p for p in sorted((out_dir / CHECKPOINT_DIR).iterdir()) if p.is_file() and not p.name.startswith(".")
    ]
    if (out_dir / ADAPTERS_FILE).is_file():
        sources.append(out_dir / ADAPTERS_FILE)
    if (out_dir / BEST_DIR).is_dir():
        sources += [
            p for p in sorted((out_dir / BEST_DIR).iterdir()) if p.is_file() and not p.name.startswith(".")
        ]
    for path in sources:
        relative = path.relative_to(out_dir).as_posix()
        _, sha = store.put_file(prefix + relative, path)
        files[relative] = sha
    pointer = {"step": step, "prefix": prefix, "files": files}
    store.put_bytes(job_prefix(job_id) + POINTER, json.dumps(pointer).encode())
    for info in list(store.list(f"{job_prefix(job_id)}checkpoints/")):
        if not info.key.startswith(prefix):
            store.delete(info.key)
    return files


def latest_pointer(store: ObjectStore, job_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(job_prefix(job_id) + POINTER))
    except ObjectNotFound:
        return None


def download_checkpoint(store: ObjectStore, job_id: str, out_dir: Path) -> int | None:
    """Restore the job's latest checkpoint into `out_dir`; its step, or None if it has none."""
    pointer = latest_pointer(store, job_id)
    if pointer is None:
        return None
    for relative, expected in pointer["files"].items():
        if relative.split("/")[0] not in (CHECKPOINT_DIR, BEST_DIR, ADAPTERS_FILE) or ".." in relative:
            raise ValueError(f"job {job_id}'s checkpoint pointer names an unexpected file {relative!r}")
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        with open(partial, "wb") as f:  # streamed: a checkpoint may be larger than memory
            for chunk in store.get_stream(pointer["prefix"] + relative):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != expected:
            partial.unlink()
            raise ValueError(f"job {job_id}'s checkpoint file {relative} does not match its sha256")
        os.replace(partial, target)
    return int(pointer["step"])


def delete_checkpoints(store: ObjectStore, job_id: str) -> None:
    """Remove everything the job keeps in object storage (after its result is in the registry)."""
    for info in list(store.list(job_prefix(job_id))):
        store.delete(info.key)
