"""Batches: a pure function of (seed, split, step, rank). Checked against a fresh interpreter, against
a fresh object (a resumed run), and across ranks (world_size=2 concatenated == world_size=1). Rows
are verbatim source text, targets are inputs shifted by one, and document padding is masked.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt.data.batches import IGNORE_INDEX, Batches
from microgpt.data.prepare import prepare
from microgpt.tokenizers import CharTokenizer

NAMES = [f"{a}{b}{c}{d}" for a in "bcdfg" for b in "aeiou" for c in "lmnrst" for d in ("", "a", "ie")]
TEXT = "".join(f"Scene {i}. Enter a messenger, who speaks at length of battles.\n" for i in range(300))
TOK = CharTokenizer.train([TEXT, *NAMES])


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "stream"
    prepare([TEXT], TOK, out, mode="stream", segment_tokens=1000, shard_tokens=5000)
    return out


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "docs"
    prepare(NAMES, TOK, out, mode="documents", shard_tokens=500)
    return out


def digest(x: torch.Tensor, y: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()


def test_stream_rows_are_source_windows_with_targets_shifted_by_one(stream_dir: Path) -> None:
    x, y = Batches(stream_dir, batch_size=8, block_size=32, seed=0).get(0)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in range(8):
        assert TOK.decode(x[row].tolist() + y[row, -1:].tolist()) in TEXT  # crosses shards and segments too


def test_same_seed_and_step_give_the_same_batch_and_a_resumed_run_continues_exactly(stream_dir: Path) -> None:
    first = Batches(stream_dir, batch_size=4, block_size=16, seed=3)
    sequence = [digest(*first.get(step)) for step in range(6)]
    resumed = Batches(stream_dir, batch_size=4, block_size=16, seed=3)  # a new process would build this
    assert [digest(*resumed.get(step)) for step in range(3, 6)] == sequence[3:]
    assert len(set(sequence)) == 6  # steps differ
    assert digest(*Batches(stream_dir, batch_size=4, block_size=16, seed=4).get(0)) != sequence[0]
    val = Batches(stream_dir, batch_size=4, block_size=16, seed=3, split="val")
    assert digest(*val.get(0)) != sequence[0]


def test_batches_are_identical_in_a_separate_process(stream_dir: Path, docs_dir: Path) -> None:
    script = """
import hashlib, json, sys
from microgpt.data.batches import Batches
out = {}
cases = (("stream", sys.argv[1], False), ("docs", sys.argv[2], False), ("packed", sys.argv[2], True))
for name, path, pack in cases:
    b = Batches(path, batch_size=6, block_size=24, seed=11, rank=1, world_size=2, pack=pack)
    out[name] = [hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
                 for x, y in map(b.get, (0, 1, 1000))]
print(json.dumps(out))
"""
    child = subprocess.run(
        [sys.executable, "-c", script, str(stream_dir), str(docs_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    theirs = json.loads(child.stdout)
    for name, path, pack in (
        ("stream", stream_dir, False),
        ("docs", docs_dir, False),
        ("packed", docs_dir, True),
    ):
        b = Batches(path, batch_size=6, block_size=24, seed=11, rank=1, world_size=2, pack=pack)
        assert [digest(*b.get(step)) for step in (0, 1, 1000)] == theirs[name], name


@pytest.mark.parametrize("mode", ["stream", "documents", "packed"])
def test_ranks_together_see_exactly_the_global_batch(stream_dir: Path, docs_dir: Path, mode: str) -> None:
    path, pack = (stream_dir, False) if mode == "stream" else (docs_dir, mode == "packed")
    whole = Batches(path, batch_size=8, block_size=16, seed=5, pack=pack).get(7)
    for world in (2, 4):
        parts = [
            Batches(path, batch_size=8, block_size=16, seed=5, rank=r, world_size=world, pack=pack).get(7)
            for r in range(world)
        ]
        assert all(p[0].shape == (8 // world, 16) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_document_rows_start_at_bos_and_mask_the_padding(docs_dir: Path) -> None:
    x, y = Batches(docs_dir, batch_size=16, block_size=12, seed=0).get(0)
    names = set(NAMES)
    for row in range(16):
        assert x[row, 0] == TOK.bos_id
        n = int((y[row] != IGNORE_INDEX).sum())
        assert torch.all(y[row, n:] == IGNORE_INDEX) and torch.all(x[row, n:] == 0)
        assert y[row, n - 1] == TOK.eos_id  # the document ends inside the row
        assert torch.equal(x[row, 1:n], y[row, : n - 1])
        assert TOK.decode(y[row, : n - 1].tolist()) in names


def test_documents_longer_than_the_block_are_cut_at_read_time(docs_dir: Path) -> None:
    x, y = Batches(docs_dir, batch_size=16, block_size=3, seed=0).get(0)
    assert x.shape == (16, 3)
    assert torch.all(x[:, 0] == TOK.bos_id)
    assert torch.all(y != IGNORE_INDEX)  # every name has >= 3 letters, so no row is padded


def test_packed_rows_run_on_into_the_next_documents(docs_dir: Path) -> None:
    x, y = Batches(docs_dir, batch_size=16, block_size=40, seed=0, pack=True).get(0)
    assert torch.all(x[:, 0] == TOK.bos_id)
    assert (x == TOK.bos_id).sum(dim=1).min() >= 3  # several documents per row
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_the_tokenizer_is_checked_against_the_shards(docs_dir: Path) -> None:
    Batches(docs_dir, batch_size=2, block_size=8, seed=0, tokenizer=TOK)
    with pytest.raises(ValueError, match="is not the one .* was prepared with"):
        Batches(docs_dir, batch_size=2, block_size=8, seed=0, tokenizer=CharTokenizer.train(["abc"]))


def test_bad_arguments_are_clear_errors(stream_dir: Path, docs_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="global batch; it must divide evenly over 3 ranks"):
        Batches(stream_dir, batch_size=8, block_size=8, seed=0, world_size=3)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        Batches(stream_dir, batch_size=8, block_size=8, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"fewer than block_size \+ 1"):
        Batches(stream_dir, batch_size=8, block_size=10**6, seed=0)
    with pytest.raises(ValueError, match="pack=True packs documents"):
        Batches(stream_dir, batch_size=8, block_size=8, seed=0, pack=True)
    with pytest.raises(ValueError, match="split must be one of train, val"):
        Batches(stream_dir, batch_size=8, block_size=8, seed=0, split="test")
    with pytest.raises(ValueError, match="not a prepared data directory"):
        Batches(tmp_path, batch_size=8, block_size=8, seed=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        Batches(docs_dir, batch_size=8, block_size=8, seed=0).get(-1)


def test_trim_padding_keeps_every_target_and_the_loss() -> None:
    from microgpt.config import GPTConfig
    from microgpt.data.batches import IGNORE_INDEX, trim_padding
    from microgpt.model import GPT

    y = torch.full((3, 10), IGNORE_INDEX)
    y[0, :4], y[1, :6], y[2, :2] = 1, 2, 3
    x = torch.zeros_like(y)
    x[y != IGNORE_INDEX] = 5
    tx, ty = trim_padding(x, y)
    assert tx.shape == ty.shape == (3, 6)
    assert torch.equal(ty, y[:, :6]) and torch.equal(tx, x[:, :6])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, block_size=10, n_layer=1, n_head=2, n_embd=8)).double()
    torch.testing.assert_close(model(tx, ty).loss, model(x, y).loss, rtol=1e-12, atol=0)
    assert trim_padding(x, torch.full_like(y, IGNORE_INDEX))[0].shape == (3, 1)
