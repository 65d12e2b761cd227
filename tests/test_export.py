"""ONNX export: the exported graph, run by onnxruntime, computes the eager model's logits.

Tolerance: logits within atol 1e-4 (rtol 0) of the eager fp32 model, for batch and sequence
lengths other than the ones traced (the graph's axes are dynamic). The export directory is
sealed like a checkpoint: config.json's sha256s cover every file in it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_native import make_model  # the architecture families of the native tests

from microgpt.checkpoint import CONFIG_FILE, TOKENIZER_FILE, read_config, save_checkpoint
from microgpt.export import ONNX_FILE, export_onnx
from microgpt.export.onnx import empty_past
from microgpt.tokenizers import CharTokenizer

ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4


def session(path: Path) -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; threads would only add hand-offs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# microgpt: learned positions, RMSNorm, tied head; llama: RoPE, GQA, qk-norm, SwiGLU, untied head.
@pytest.mark.parametrize("family", ["microgpt", "llama"])
def test_onnx_logits_match_the_eager_model(family: str, tmp_path: Path, one_thread: None) -> None:
    model = make_model(family)
    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz"]) if family == "microgpt" else None
    src = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tokenizer, preset=family)
    dst = export_onnx(src, tmp_path / "onnx", cache=False).path

    run = session(dst / ONNX_FILE)
    assert [i.name for i in run.get_inputs()] == ["idx"] and [o.name for o in run.get_outputs()] == ["logits"]
    for batch, time in ((1, 3), (3, model.config.block_size)):
        idx = torch.randint(0, model.config.vocab_size, (batch, time))
        (logits,) = run.run(["logits"], {"idx": idx.numpy()})
        with torch.inference_mode():
            expected = model(idx).logits.numpy()
        assert logits.shape == (batch, time, model.config.vocab_size)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL)

    cfg = read_config(dst)
    assert cfg.metadata["export"]["format"] == "onnx" and cfg.model == model.config
    assert cfg.metadata["export"]["parity"]["max_abs_logit_diff"] <= ATOL
    listed = {ONNX_FILE} | ({TOKENIZER_FILE} if tokenizer else set())
    assert set(cfg.files) == listed
    assert {p.name for p in dst.iterdir()} == listed | {CONFIG_FILE}, "every file is sealed"
    for name, digest in cfg.files.items():
        assert hashlib.sha256((dst / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_onnx_decodes_token_by_token_like_the_eager_model(
    family: str, tmp_path: Path, one_thread: None
) -> None:
    """Prefill 5 tokens, then feed the present cache back one token at a time: the logits at every
    position match the eager model's (atol 1e-4), and so do the greedy tokens."""
    model = make_model(family)
    cfg = model.config
    run = session(export_onnx(save_checkpoint(tmp_path / "ckpt", model), tmp_path / "onnx").path / ONNX_FILE)
    outputs = [o.name for o in run.get_outputs()]
    assert outputs[0] == "logits" and outputs[1:3] == ["present.0.key", "present.0.value"]
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    feed = {
        "input_ids": ids[:, :5].numpy(),
        "attention_mask": np.ones((2, 5), np.int64),
        "position_ids": np.tile(np.arange(5), (2, 1)),
        **empty_past(cfg, 2),
    }
    got = []
    for t in range(5, 13):
        logits, *present = run.run(None, feed)
        got.append(logits)
        if t == 12:
            break
        feed = {
            "input_ids": ids[:, t : t + 1].numpy(),
            "attention_mask": np.ones((2, t + 1), np.int64),
            "position_ids": np.full((2, 1), t),
            **{n.replace("present", "past_key_values"): v for n, v in zip(outputs[1:], present, strict=True)},
        }
    with torch.inference_mode():
        expected = model(ids).logits.numpy()
    np.testing.assert_allclose(np.concatenate(got, axis=1), expected, rtol=0, atol=ATOL)


def test_bad_options_are_value_errors(tmp_path: Path) -> None:
    src = save_checkpoint(tmp_path / "ckpt", make_model("microgpt"))
    with pytest.raises(ValueError, match="opset 12"):
        export_onnx(src, tmp_path / "out", opset=12)
    with pytest.raises(ValueError, match="must differ"):
        export_onnx(src, src)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        export_onnx(src, tmp_path / "data")
    assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"


def test_cli_exports_and_fails_in_one_line(tmp_path: Path) -> None:
    src = save_checkpoint(tmp_path / "ckpt", make_model("microgpt"), preset="micro")
    out = tmp_path / "onnx"

    def microgpt(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "microgpt", "export", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    done = microgpt(str(src), "--format", "onnx", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads((out / CONFIG_FILE).read_text())["metadata"]["export"]["format"] == "onnx"

    missing = microgpt(str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
