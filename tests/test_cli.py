"""The `microgpt` command line, run as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt.checkpoint import save_checkpoint
from microgpt.model import GPT
from microgpt.tokenizers import CharTokenizer
from microgpt.zoo import get_preset


def microgpt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microgpt", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz"])
    model = GPT(get_preset("micro").model.updated(vocab_size=tokenizer.vocab_size))
    return save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "micro", model, tokenizer=tokenizer, preset="micro"
    )


def test_zoo_lists_every_preset_with_its_parameter_count() -> None:
    out = microgpt("zoo")
    assert out.returncode == 0, out.stderr
    for name in (
        "micro",
        "names",
        "shakespeare-cpu",
        "shakespeare",
        "gpt2-small",
        "llama-tiny",
        "llama-small",
    ):
        assert name in out.stdout
    assert "4,192" in out.stdout
    assert "124,439,808" in out.stdout


def test_sample_prints_reproducible_distinct_samples(checkpoint: Path) -> None:
    first = microgpt("sample", str(checkpoint), "-n", "4", "--seed", "5", "--prompt", "a")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("a") for line in lines)
    assert len(set(lines)) > 1, "samples of one run must differ"
    again = microgpt("sample", str(checkpoint), "-n", "4", "--seed", "5", "--prompt", "a")
    assert again.stdout == first.stdout


def test_sample_streams(checkpoint: Path) -> None:
    out = microgpt("sample", str(checkpoint), "--stream", "--temperature", "0", "--prompt", "b")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("b")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
        (["sample", "{ckpt}", "--top-p", "2"], "top_p"),
        (["sample", "{ckpt}", "--temperature", "-1"], "temperature"),
        (["sample", "{ckpt}", "--prompt", "ABC"], "'A'"),
        (["reference", "--data", "/nonexistent.txt"], "/nonexistent.txt"),
        (["bench", "generate", "--precision", "fp8"], "fp8"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(checkpoint: Path, args: list[str], message: str) -> None:
    out = microgpt(*[a.replace("{ckpt}", str(checkpoint)) for a in args])
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    out = microgpt("sample", str(bad))
    assert out.returncode == 2
    assert "pickle" in out.stderr and "model.pt" in out.stderr


def test_reference_trains_and_its_checkpoint_samples_with_the_torch_model(tmp_path: Path) -> None:
    data = tmp_path / "names.txt"
    data.write_text("\n".join(["anna", "bob", "carla", "dan", "emma", "fred", "gina", "hank"] * 4))
    out = microgpt(
        "reference", "--data", str(data), "--steps", "40", "--samples", "3", "--out", str(tmp_path / "c")
    )
    assert out.returncode == 0, out.stderr
    assert "step   40 /   40" in out.stdout
    sampled = microgpt("sample", str(tmp_path / "c"), "-n", "3", "--seed", "0")
    assert sampled.returncode == 0, sampled.stderr
    assert len(sampled.stdout.splitlines()) == 3


def test_sample_backends_agree(checkpoint: Path) -> None:
    common = ["sample", str(checkpoint), "-n", "3", "--temperature", "0", "--prompt", "c"]
    eager = microgpt(*common)
    native = microgpt(*common, "--backend", "native")
    assert native.returncode == 0, native.stderr
    assert native.stdout == eager.stdout


def test_train_from_a_yaml_run_config(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("preset: micro\ndata: names\ntrain:\n  max_steps: 20\n  eval_interval: 10\n")
    out = microgpt("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    config.write_text("preset: micro\ntrain:\n  lrr: 0.1\n")
    bad = microgpt("train", "--config", str(config))
    assert bad.returncode == 2
    assert "train.lrr" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
