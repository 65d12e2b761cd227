"""Every script in examples/ runs to the end, as a reader runs it, so none rots.

Each runs in its own process (`python examples/NN_name.py`, no arguments) with small settings:
MICROGPT_EXAMPLE_STEPS makes the quick model each one trains a few steps long, the data cache is
a temporary one holding the shared data sets (nothing is downloaded), and the inference service
an example starts runs the eager backend (no kernel build). A new example is picked up by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microgpt.data.builtin import cached_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 600  # a hung example fails here instead of holding the suite


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    for name, filename in {"names-32k": "names.txt", "shakespeare": "tinyshakespeare.txt"}.items():
        target = cached_path(name, cache)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / filename, target)
    return {
        **os.environ,
        "MICROGPT_CACHE": str(cache),
        "MICROGPT_EXAMPLE_STEPS": "20",
        "MICROGPT_INFERENCE_BACKEND": "eager",
        "MICROGPT_REGISTRY_URL": "http://127.0.0.1:9",  # nothing listens: no example may need one
    }


def test_the_examples_are_found() -> None:
    assert len(SCRIPTS) >= 4, f"expected the numbered examples in {EXAMPLES}, found {SCRIPTS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_example_runs(script: Path, example_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # an example writes nothing beside itself unless asked to
        env=example_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{script.name} printed nothing"
    assert not list(tmp_path.iterdir()), f"{script.name} left files in the working directory"
