"""Fixtures shared across test files: the read-only public data sets beside the repository."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`$MICROGPT_SHARED_DATA`, else `<repo>/../shared/data` (names.txt, tinyshakespeare.txt).

    Tests copy from it into their own temporary directories and never write to it. On a
    laptop without it the tests that need it are skipped with this reason; in CI (`CI` set)
    its absence is a failure, since nothing may be skipped there.
    """
    env = os.environ.get("MICROGPT_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "names.txt").is_file() or not (path / "tinyshakespeare.txt").is_file():
        reason = f"the shared data sets are not at {path} (set MICROGPT_SHARED_DATA to their folder)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls on one thread: on a loaded machine, thread hand-offs cost 1000x the math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
