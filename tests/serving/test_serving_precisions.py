"""Each serving precision loads, generates and keeps its held-out loss within its bound of fp32.

Bounds on a small trained model (names, 2 layers x 64 dims, 300 steps): bf16 and int8 within
+1% of the fp32 validation loss, int4 (group 32) within +3%. A stored quantized variant gives
the same model as quantizing at load, and is refused for a precision it does not hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt.checkpoint import CheckpointError
from microgpt.evaluate import evaluate_prepared, prepare_for
from microgpt.loading import load_model
from microgpt.quantize import quantize_checkpoint, weight_bytes
from microgpt.sampling import SamplingParams
from microgpt.serving import BatchEngine
from microgpt.train import TrainResult

BOUNDS = {"fp32": 1.0, "bf16": 1.01, "int8": 1.01, "int4": 1.03}


@pytest.fixture(scope="module")
def val_losses(trained_names: TrainResult, data_cache: Path) -> dict[str, float]:
    losses = {}
    for precision in BOUNDS:
        served = load_model(trained_names.checkpoint, precision=precision)
        prepared = prepare_for(served.tokenizer, "names-32k", cache_dir=data_cache, default_mode="documents")
        losses[precision] = evaluate_prepared(served.model, served.tokenizer, prepared, max_batches=20).loss
    return losses


@pytest.mark.parametrize("precision", list(BOUNDS))
def test_loss_stays_within_its_bound(precision: str, val_losses: dict[str, float]) -> None:
    assert val_losses["fp32"] < 2.6  # the model learned something (uniform over 27 ids is 3.3)
    assert val_losses[precision] <= BOUNDS[precision] * val_losses["fp32"]


@pytest.mark.parametrize("precision", list(BOUNDS))
def test_each_precision_generates_text(precision: str, trained_names: TrainResult, one_thread: None) -> None:
    served = load_model(trained_names.checkpoint, precision=precision)
    engine = BatchEngine(served.model, max_batch=4)
    engine.start()
    try:
        tok = served.tokenizer
        params = SamplingParams(temperature=0.8, max_new_tokens=20, seed=1, stop_token_ids=[tok.eos_id])
        ids = [e.token_id for e in engine.submit([tok.bos_id], params) if e.token_id is not None]
    finally:
        engine.stop()
    assert ids and tok.decode(ids).isalpha()
    assert engine.backend == ("eager" if precision == "int4" else "native")


def test_weight_bytes_shrink(trained_names: TrainResult) -> None:
    sizes = {p: load_model(trained_names.checkpoint, precision=p).weight_bytes for p in BOUNDS}
    assert sizes["bf16"] == sizes["fp32"] // 2
    assert sizes["int8"] < 0.35 * sizes["fp32"]  # tiny model: fp32 wpe and norms weigh in
    assert sizes["int4"] < sizes["int8"]


def test_stored_variant_equals_quantizing_at_load(trained_names: TrainResult, tmp_path: Path) -> None:
    idx = torch.randint(0, 27, (2, 16))
    for mode in ("int8", "int4"):
        out = quantize_checkpoint(trained_names.checkpoint, tmp_path / mode, mode)
        meta = json.loads((out / "config.json").read_text())["metadata"]["quantization"]
        assert meta["mode"] == mode and meta["weights"] == f"model.{mode}.safetensors"
        stored = load_model(out, precision=mode)
        at_load = load_model(trained_names.checkpoint, precision=mode)
        assert (stored.quantized_from, at_load.quantized_from) == ("stored", "load")
        assert stored.weight_bytes == at_load.weight_bytes == weight_bytes(stored.model)
        with torch.inference_mode():
            assert torch.equal(stored.model(idx).logits, at_load.model(idx).logits)
        with pytest.raises(CheckpointError, match="holds only int"):
            load_model(out, precision="fp32")


def test_tampered_variant_is_refused(trained_names: TrainResult, tmp_path: Path) -> None:
    out = quantize_checkpoint(trained_names.checkpoint, tmp_path / "q", "int8")
    with open(out / "model.int8.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(CheckpointError, match="integrity"):
        load_model(out, precision="int8")


def test_quantize_cli(trained_names: TrainResult, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "microgpt", "quantize", str(trained_names.checkpoint), "--out"]
    ok = subprocess.run([*cmd, str(tmp_path / "q4"), "--mode", "int4"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "q4" / "model.int4.safetensors").is_file()
    bad = subprocess.run(
        [*cmd, str(tmp_path / "bad"), "--mode", "int4", "--group-size", "7"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "group_size" in bad.stderr


def test_an_int8_only_checkpoint_samples_and_evaluates_from_the_cli(
    trained_names: TrainResult, data_cache: Path, tmp_path: Path
) -> None:
    """What a quantize job pushes (int8 weights, no float ones) runs wherever a float checkpoint does
    (chat: tests/test_chat.py, whose model's tokenizer can spell the chat template)."""
    out = quantize_checkpoint(trained_names.checkpoint, tmp_path / "int8", "int8")
    loaded = load_model(out)
    assert (loaded.precision, loaded.quantized_from) == ("int8", "stored")
    env = {**os.environ, "MICROGPT_CACHE": str(data_cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    cli = [sys.executable, "-m", "microgpt"]

    sample = [
        *cli,
        "sample",
        str(out),
        "-n",
        "2",
        "--max-new-tokens",
        "12",
        "--seed",
        "1",
        "--temperature",
        "0.8",
    ]
    sampled = subprocess.run(sample, capture_output=True, text=True, env=env, timeout=300)
    assert sampled.returncode == 0, sampled.stderr
    assert len(sampled.stdout.splitlines()) == 2 and sampled.stdout.strip()

    evaluate = [*cli, "eval", str(out), "--data", "names-32k", "--max-batches", "5", "--mode", "documents"]
    evaluated = subprocess.run(evaluate, capture_output=True, text=True, env=env, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    loss = float(evaluated.stdout.split()[1])  # "loss  2.1234"
    assert 1.0 < loss < 2.6  # as trained: the int8 model learned the names (uniform is 3.3)

    fp32 = subprocess.run(
        [*cli, "sample", str(out), "--precision", "fp32"], capture_output=True, text=True, env=env
    )
    assert fp32.returncode == 2 and "holds only int8 weights" in fp32.stderr
