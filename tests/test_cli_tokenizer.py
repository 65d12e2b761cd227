"""`microgpt tokenizer ...` as a user runs it: train, encode, decode and stats, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TEXT = "\n".join(
    f"the {w} sat on the {v} and said héllo to the {w}s — {i}"
    for i, (w, v) in enumerate(
        [("cat", "mat"), ("dog", "log"), ("bird", "word"), ("fox", "box"), ("owl", "towel")] * 20
    )
)


def microgpt(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microgpt", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["bytelevel-bpe", "char"])
def test_train_encode_decode_round_trip(tmp_path: Path, corpus: Path, kind: str) -> None:
    out = tmp_path / "tok.json"
    trained = microgpt(
        "tokenizer", "train", "--kind", kind, "--vocab-size", "300", "--data", str(corpus), "--out", str(out)
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads(out.read_text())  # a JSON file
    text = "the owl said héllo"
    encoded = microgpt("tokenizer", "encode", str(out), "--text", text)
    assert encoded.returncode == 0, encoded.stderr
    ids = encoded.stdout.strip()
    assert all(part.isdigit() for part in ids.split())
    decoded = microgpt("tokenizer", "decode", str(out), "--ids", ids)
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout.rstrip("\n") == text


def test_stats_reports_vocab_and_bytes_per_token(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "tok.json"
    microgpt(
        "tokenizer", "train", "--kind", "bpe", "--vocab-size", "200", "--data", str(corpus), "--out", str(out)
    )
    stats = microgpt("tokenizer", "stats", str(out), "--data", str(corpus))
    assert stats.returncode == 0, stats.stderr
    assert "vocab" in stats.stdout.lower() and "bytes per token" in stats.stdout.lower()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "tokenizer",
                "train",
                "--kind",
                "bpe",
                "--vocab-size",
                "5",
                "--data",
                "{corpus}",
                "--out",
                "{tmp}/t.json",
            ],
            "vocab",
        ),
        (
            ["tokenizer", "train", "--kind", "bpe", "--data", "/nonexistent.txt", "--out", "{tmp}/t.json"],
            "/nonexistent.txt",
        ),
        (["tokenizer", "encode", "{tmp}/missing.json", "--text", "x"], "missing.json"),
        (["tokenizer", "decode", "{corpus}", "--ids", "1 2"], "corpus.txt"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, corpus: Path, args: list[str], message: str
) -> None:
    out = microgpt(*[a.replace("{corpus}", str(corpus)).replace("{tmp}", str(tmp_path)) for a in args])
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr
