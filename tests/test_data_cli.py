"""`microgpt data prepare|ls` through `microgpt.cli.main`: output, reuse, exit code 2 with one line.

The cache directory comes from MICROGPT_CACHE, pointed at tmp_path; downloadable data sets are
seeded from ../shared/data. If the main parser does not register `data` yet, the test adds it
with `microgpt.data.cli.register`, exactly as the main parser is meant to.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from microgpt import cli
from microgpt.data import cli as data_cli
from microgpt.data.builtin import cached_path
from microgpt.settings import get_settings

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def microgpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    build = cli.build_parser

    def build_with_data() -> argparse.ArgumentParser:
        parser = build()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "data" not in commands.choices:
            data_cli.register(commands)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_with_data)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()


def test_prepare_names_then_reuse(microgpt: Run, tmp_path: Path) -> None:
    code, out, err = microgpt("data", "prepare", "names")
    assert code == 0, err
    directory = tmp_path / "cache" / "prepared" / "names-documents-char"
    assert out.startswith(f"prepared {directory}\n")
    assert "documents mode, char tokenizer (27 ids, uint16)" in out
    code, out, _ = microgpt("data", "prepare", "names")
    assert code == 0 and out.startswith(f"reused {directory}\n")


def test_prepare_a_file_with_options_into_a_chosen_directory(microgpt: Run, tmp_path: Path) -> None:
    (tmp_path / "lines.txt").write_text("".join(f"line number {i}\n" for i in range(200)))
    code, out, err = microgpt(
        "data", "prepare", str(tmp_path / "lines.txt"), "--mode", "documents", "--out", str(tmp_path / "p"),
        "--val-fraction", "0.2", "--seed", "3", "--block-size", "8", "--long-documents", "split",
    )  # fmt: skip
    assert code == 0, err
    assert "split" in out and (tmp_path / "p" / "manifest.json").is_file()


def test_shakespeare_from_the_seeded_cache_and_a_corrupted_copy(
    microgpt: Run, tmp_path: Path, shared_data: Path
) -> None:
    target = cached_path("shakespeare", tmp_path / "cache")
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_data / "tinyshakespeare.txt", target)
    code, out, err = microgpt("data", "prepare", "shakespeare")
    assert code == 0, err
    assert "source shakespeare (sha256 86c4e6aa9db7), stream mode" in out
    target.write_bytes(target.read_bytes()[:-10])
    code, out, err = microgpt("data", "prepare", "shakespeare")
    assert code == 2 and out == ""
    assert err.startswith("microgpt data: error: ") and err.count("\n") == 1
    assert "truncated" in err and "delete it to download it again" in err


def test_local_path_instead_of_a_download(microgpt: Run, shared_data: Path) -> None:
    code, out, err = microgpt("data", "prepare", "names-32k", "--local-path", str(shared_data / "names.txt"))
    assert code == 0, err
    assert "28," in out or "29," in out  # about 90% of 32,033 names in train


def test_errors_are_one_line_with_exit_code_2(microgpt: Run, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.dat").write_bytes(b"\x00" * 64)
    for argv, message in [
        (("nonsense",), "no such data set, file or directory: 'nonsense'"),
        ((str(tmp_path / "empty.txt"),), "is empty"),
        ((str(tmp_path / "binary.dat"),), "looks like a binary file"),
        (("names", "--tokenizer", str(tmp_path / "missing.json")), "no such tokenizer file"),
        (("names", "--tokenizer", "klingon"), "klingon"),
    ]:
        code, _, err = microgpt("data", "prepare", *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_prepare_with_a_saved_tokenizer(microgpt: Run, tmp_path: Path) -> None:
    from microgpt.tokenizers import CharTokenizer

    CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz"]).save(tmp_path / "tok.json")
    code, out, err = microgpt("data", "prepare", "names", "--tokenizer", str(tmp_path / "tok.json"))
    assert code == 0, err
    assert "names-documents-char-" in out  # named by the tokenizer's hash


def test_ls_lists_built_ins_and_prepared_sets(microgpt: Run) -> None:
    assert microgpt("data", "prepare", "names")[0] == 0
    code, out, err = microgpt("data", "ls")
    assert code == 0, err
    for name in ("names", "names-32k", "shakespeare", "pystdlib", "downloaded on first use", "offline"):
        assert name in out
    assert "names-documents-char" in out
