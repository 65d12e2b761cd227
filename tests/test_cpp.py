"""Where the C++ kernels are built (a directory per build key, so installs never rebuild each
other's), and that a build is announced.

Nothing here compiles: the kernels' own tests build them once per machine, and the announced
build below only re-links a copy of those builds from their object files (about a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microgpt.cpp import FLAGS, KERNELS, build_all, build_directory, build_key

SOURCE, HEADER = b"int f() { return 1; }", b"#define N 4"
TOOLCHAIN = "torch 2.13.0, python 3.11"


def test_the_build_key_changes_with_anything_the_binary_depends_on() -> None:
    key = build_key(SOURCE, [HEADER], FLAGS, TOOLCHAIN)
    assert key == build_key(SOURCE, [HEADER], list(FLAGS), TOOLCHAIN)  # a pure function of its inputs
    changed = [
        build_key(SOURCE.replace(b"1", b"2"), [HEADER], FLAGS, TOOLCHAIN),  # the source
        build_key(SOURCE, [HEADER + b" "], FLAGS, TOOLCHAIN),  # an included header
        build_key(SOURCE, [HEADER], [*FLAGS, "-DX"], TOOLCHAIN),  # the compiler flags
        build_key(SOURCE, [HEADER], FLAGS, "torch 2.14.0, python 3.11"),  # torch or Python
        build_key(SOURCE + HEADER, [], FLAGS, TOOLCHAIN),  # the same bytes split otherwise
    ]
    assert len({key, *changed}) == 1 + len(changed)


def test_each_kernel_builds_in_its_own_keyed_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    directories = {name: build_directory(name) for name in KERNELS}
    for name, directory in directories.items():
        assert directory.parent == tmp_path and directory.name.startswith(f"{name}-")
        assert len(directory.name) == len(name) + 1 + 16
    assert build_directory("microgpt_gelu") == directories["microgpt_gelu"]  # stable within an install


def test_build_kernels_announces_a_build_and_then_has_nothing_to_do(tmp_path: Path) -> None:
    build_all()  # the real builds, once per machine
    for name in KERNELS:  # a copy without the linked libraries: to the cache, not built
        shutil.copytree(
            build_directory(name),
            tmp_path / build_directory(name).name,
            ignore=shutil.ignore_patterns("*.so"),
        )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "microgpt", "build-kernels"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "microgpt: building native kernels microgpt_gelu, microgpt_hash_dropout" in first.stderr
    assert all((tmp_path / build_directory(n).name / f"{n}.so").is_file() for n in KERNELS)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr
