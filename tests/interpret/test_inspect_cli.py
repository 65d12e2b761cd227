"""`microgpt inspect` and `microgpt plot`: the files they write, their output and exit codes.

The commands run in-process through `microgpt.cli.main` (what the console script calls),
so the suite does not pay a Python start-up per command; one test runs the real
`python -m microgpt` to check the same end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import LLAMA

from microgpt.checkpoint import save_checkpoint
from microgpt.cli import main
from microgpt.curves import curves_figure
from microgpt.model import GPT
from microgpt.tokenizers import CharTokenizer

PNG = b"\x89PNG\r\n\x1a\n"


def microgpt(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `microgpt ARGS...`."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz ")
    torch.manual_seed(0)
    model = GPT(LLAMA.updated(vocab_size=tokenizer.vocab_size))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", model, tokenizer=tokenizer)


@pytest.mark.parametrize("kind", ["attention", "lens", "tokens", "patch", "heads", "embeddings"])
def test_each_kind_draws_a_png(
    kind: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{kind}.png"
    code, _, err = microgpt(capsys, "inspect", kind, str(checkpoint), "--text", "the cat sat",
                            "--corrupted", "the dog sat", "--seq-len", "8", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert out.read_bytes().startswith(PNG)


def test_json_and_html_hold_the_report(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lens.json"
    code, _, err = microgpt(
        capsys, "inspect", "lens", str(checkpoint), "--text", "the cat", "--out", str(out)
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["layers"] == ["embed", "0", "1"] and len(report["top_token"][0]) == 7
    page = tmp_path / "t.html"
    code, _, err = microgpt(
        capsys, "inspect", "tokens", str(checkpoint), "--text", "the cat", "--out", str(page)
    )
    assert code == 0, err
    assert "data:image/png;base64," in page.read_text() and "mean_loss" in page.read_text()
    code, stdout, _ = microgpt(capsys, "inspect", "heads", str(checkpoint), "--seq-len", "4", "--batch", "2")
    assert code == 0 and json.loads(stdout)["seq_len"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lens"], "needs --text"),
        (["patch", "--text", "abc"], "needs --corrupted"),
        (["patch", "--text", "abc", "--corrupted", "abcd"], "as many tokens"),
        (["lens", "--text", "abc", "--out", "x.txt"], "--out must end in"),
        (["lens", "--text", "x" * 40], "reads at most 32"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    args: list[str], message: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = microgpt(capsys, "inspect", args[0], str(checkpoint), *args[1:])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def write_run(run: Path, scale: float, induction: list[float] | None = None) -> Path:
    """A metrics.jsonl as the training loop writes it, with probe records when `induction` is given."""
    run.mkdir()
    lines = [{"kind": "train", "step": s, "loss": scale * 4 / s, "lr": 1e-3} for s in range(1, 50)]
    lines += [{"kind": "eval", "step": s, "val_loss": scale * 5 / s} for s in (10, 20, 40)]
    for step, score in zip((10, 20, 30, 40), induction or [], strict=False):
        lines.append({"kind": "interpret", "step": step, "induction_score": score, "attention_entropy": 2.0})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return run


def test_plot_overlays_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "a", 1.0)
    write_run(tmp_path / "b", 0.5)
    out = tmp_path / "curves.png"
    code, _, err = microgpt(capsys, "plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out))
    assert code == 0, err
    assert out.read_bytes().startswith(PNG)
    code, _, err = microgpt(capsys, "plot", str(tmp_path / "nope"))
    assert code == 2 and "has no metrics.jsonl" in err


def test_plot_adds_the_induction_score_of_probed_runs(tmp_path: Path) -> None:
    plain = write_run(tmp_path / "plain", 1.0)
    probed = write_run(tmp_path / "probed", 0.5, induction=[0.02, 0.03, 0.4, 0.6])
    assert len(curves_figure([str(plain)]).axes) == 1
    fig = curves_figure([str(plain), str(probed)])
    loss_axes, induction_axes = fig.axes
    assert len(loss_axes.lines) == 6  # train (raw and smoothed) and val, for each run
    (line,) = induction_axes.lines  # the plain run recorded no probe
    assert list(line.get_xdata()) == [10, 20, 30, 40]
    assert list(line.get_ydata()) == [0.02, 0.03, 0.4, 0.6]


def test_the_console_command_end_to_end(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "lens.png"
    args = [sys.executable, "-m", "microgpt", "inspect", "lens", str(checkpoint), "--text", "the cat"]
    ok = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0 and out.read_bytes().startswith(PNG), ok.stderr
    bad = subprocess.run([*args, "--out", "x.txt"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
