"""`microgpt train --local-path`: training on a machine without network, from a copy of the data set.

The download error of a built-in data set tells the user to pass `--local-path FILE`; `train`
and `finetune` take it (checked against the pinned sha256, then cached), as `data prepare` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from microgpt.data.builtin import cached_path


def train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MICROGPT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "microgpt", "train", "--preset", "micro", "--max-steps", "2",
         "--out", str(tmp_path / "run"), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_train_takes_a_local_copy_of_the_data_set(tmp_path: Path, shared_data: Path) -> None:
    result = train(tmp_path, "--local-path", str(shared_data / "names.txt"))
    assert result.returncode == 0, result.stderr
    assert cached_path("names-32k", tmp_path / "cache").is_file()
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()


def test_a_local_copy_of_another_file_is_one_line_and_exit_2(tmp_path: Path, shared_data: Path) -> None:
    result = train(tmp_path, "--local-path", str(shared_data / "tinyshakespeare.txt"))
    assert result.returncode == 2
    assert "is not names-32k's pinned file" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not cached_path("names-32k", tmp_path / "cache").exists()
