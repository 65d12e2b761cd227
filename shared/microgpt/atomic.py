"""Atomic writes: readers see the old file (or directory) or the new one, never half of one.

A file is written to a temporary name beside its target, fsynced and renamed over it.
A directory (a checkpoint, a prepared data set) is filled under a temporary name and
swapped in: an existing target is renamed aside first and deleted last, so a crash at
any moment leaves one complete copy on disk. Temporary names keep the umask's
permissions (mkstemp/mkdtemp would make them owner-only).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def fresh_path(parent: Path, prefix: str) -> Path:
    """A name `parent/{prefix}` + 8 random hex digits that does not exist yet."""
    while True:
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        if not candidate.exists():
            return candidate


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then `os.replace` it into place."""
    path = Path(path)
    while True:  # O_EXCL with mode 0o666 keeps the umask's permissions
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an existing target is renamed aside first and deleted last."""
    parent = target.parent
    if target.exists():
        aside = fresh_path(parent, f".{target.name}.old-")
        os.rename(target, aside)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(aside, target)  # put the old one back
            raise
        fsync_dir(parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, target)
        fsync_dir(parent)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target`.

    The caller fsyncs the files it writes; on any exception the temporary directory is
    removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = fresh_path(target.parent, f".{target.name}.tmp-")
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fsync_dir(tmp)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
