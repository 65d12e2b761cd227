"""A checkpoint that cannot be served is a `bad_model` error naming the file and field, at once,
and the failure is remembered: later requests get it again without a new load.

The bad checkpoints (`hostile_checkpoints`) are served as local directories, since the registry
refuses them at finalize. n_layer=100000 once took 88 s and 4.6 GB to fail; n_embd=1e9 tried a
108 GB allocation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from hostile_checkpoints import CASES, hostile_checkpoint

TINY = "tiny@production"
pytestmark = pytest.mark.usefixtures("one_thread_session")

BAD = ("pickle", "n_embd", "n_layer")


def generate(base: str, model: str) -> httpx.Response:
    body = {"model": model, "prompts": ["a"], "max_tokens": 2}
    return httpx.post(f"{base}/generate", json=body, timeout=60)


def test_bad_checkpoints_are_bad_model_and_not_reloaded(
    serve,  # noqa: ANN001
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    bad = {case: hostile_checkpoint(tiny_checkpoint, case, tmp_path / case) for case in BAD}
    models = ",".join([*(f"bad-{case}={path}" for case, path in bad.items()), TINY])
    with serve(inference_models=models) as base:
        for case in BAD:
            r = generate(base, f"bad-{case}")
            assert r.status_code == 502, r.text
            assert r.json()["error"] == "bad_model" and CASES[case] in r.json()["detail"], r.text
        # Mended on disk: the remembered failure is answered, the directory is not read again.
        shutil.rmtree(bad["n_layer"])
        shutil.copytree(tiny_checkpoint, bad["n_layer"])
        r = generate(base, "bad-n_layer")
        assert r.status_code == 502 and CASES["n_layer"] in r.json()["detail"], r.text
        assert generate(base, TINY).status_code == 200  # the good model serves beside them
