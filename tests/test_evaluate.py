"""`microgpt.evaluate`: loss, perplexity and bits per byte agree with a direct computation.

The direct computation encodes the text with the tokenizer itself (not the prepared shards)
and takes the model's own mean loss per window, so the windowing, padding, batching and
byte counting of `evaluate` are checked against an independent path. Tolerance: 1e-6 on the
loss (fp32 logits and per-batch sums; evaluate adds the batches in fp64). The CLI runs as a subprocess through
`microgpt.cli.main`, with `eval` registered by `microgpt.evaluate.register` if the main
parser does not have it yet.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt.checkpoint import save_checkpoint
from microgpt.data.prepare import prepare
from microgpt.evaluate import _ByteCounter, evaluate_checkpoint, evaluate_prepared
from microgpt.model import GPT
from microgpt.tokenizers import ByteTokenizer, CharTokenizer
from microgpt.zoo import get_preset

TEXT = "".join(f"the {w} sat on the mat, said {n}.\n" for w, n in zip(["cat", "dog", "émû"] * 6, range(18)))


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_model(tokenizer: CharTokenizer) -> GPT:
    """micro's shape (block 16), a few Adam steps on TEXT so the figures are not those of chance."""
    torch.manual_seed(0)
    model = GPT(get_preset("micro").model.updated(vocab_size=tokenizer.vocab_size))
    ids = torch.tensor(tokenizer.encode(TEXT))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        starts = torch.randint(0, len(ids) - 17, (8,), generator=torch.Generator().manual_seed(step))
        x = torch.stack([ids[s : s + 16] for s in starts])
        y = torch.stack([ids[s + 1 : s + 17] for s in starts])
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, CharTokenizer, GPT]:
    root = tmp_path_factory.mktemp("eval")
    tokenizer = CharTokenizer.train([TEXT])
    model = _trained_model(tokenizer)
    ckpt = save_checkpoint(root / "ckpt", model, tokenizer=tokenizer, preset="micro")
    (root / "small.txt").write_text(TEXT, encoding="utf-8")  # for the direct computations
    data = root / "text.txt"
    data.write_text(TEXT * 40, encoding="utf-8")  # enough for a validation split
    return ckpt, data, tokenizer, model


def _direct(model: GPT, ranges: list[list[int]], block: int) -> tuple[float, int]:
    """Total nats and target count: windows of block + 1 overlapping by one, the model's mean loss."""
    nats, count = 0.0, 0
    with torch.no_grad():
        for ids in ranges:
            for start in range(0, len(ids) - 1, block):
                w = torch.tensor(ids[start : start + block + 1])
                n = len(w) - 1
                nats += float(model(w[None, :-1], w[None, 1:]).loss) * n
                count += n
    return nats, count


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_stream_loss_matches_direct_computation(setup, tmp_path: Path, batch_size: int) -> None:
    _, data, tokenizer, model = setup
    prepared = tmp_path / "prep"
    prepare(str(data.with_name("small.txt")), tokenizer, prepared, mode="stream", val_fraction=0.0)
    result = evaluate_prepared(model, tokenizer, prepared, split="train", batch_size=batch_size)
    ids = tokenizer.encode(TEXT)
    nats, count = _direct(model, [ids], model.config.block_size)
    assert result.tokens == count == len(ids) - 1
    assert result.loss == pytest.approx(nats / count, abs=1e-6)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-12)
    n_bytes = len(TEXT[1:].encode("utf-8"))  # every char but the first is a target
    assert result.bytes == n_bytes
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / n_bytes, abs=1e-6)
    assert result.loss < math.log(tokenizer.vocab_size), "a trained model beats the uniform guess"


def test_documents_every_document_once_padding_ignored(setup, tmp_path: Path) -> None:
    _, data, tokenizer, model = setup
    prepared = tmp_path / "prep"
    prepare(str(data.with_name("small.txt")), tokenizer, prepared, mode="documents", val_fraction=0.0)
    result = evaluate_prepared(model, tokenizer, prepared, split="train", batch_size=4)
    docs = [tokenizer.encode(line, add_bos=True, add_eos=True) for line in TEXT.splitlines()]
    assert max(map(len, docs)) > model.config.block_size + 1, "some documents span several windows"
    nats, count = _direct(model, docs, model.config.block_size)
    assert result.tokens == count
    assert result.loss == pytest.approx(nats / count, abs=1e-6)
    assert result.bytes == sum(len(line.encode("utf-8")) for line in TEXT.splitlines())  # BOS/EOS: 0 bytes


def test_max_batches_evaluates_the_first_windows(setup, tmp_path: Path) -> None:
    _, data, tokenizer, model = setup
    prepared = tmp_path / "prep"
    prepare(str(data.with_name("small.txt")), tokenizer, prepared, mode="stream", val_fraction=0.0)
    result = evaluate_prepared(model, tokenizer, prepared, split="train", batch_size=2, max_batches=3)
    block = model.config.block_size
    assert result.windows == 6 and result.tokens == 6 * block
    nats, count = _direct(model, [tokenizer.encode(TEXT)[: 6 * block + 1]], block)
    assert result.loss == pytest.approx(nats / count, abs=1e-6)


def test_byte_counter_carries_characters_split_across_windows() -> None:
    tok = ByteTokenizer()
    text = "aé€😀b" * 3
    ids = tok.encode(text)
    for cut in range(1, 8):
        counter = _ByteCounter(tok)
        for i in range(0, len(ids), cut):
            counter.add(ids[i : i + cut], new_range=i == 0)
        assert counter.finish() == len(text.encode("utf-8")), cut


def test_evaluate_checkpoint_prepares_with_the_checkpoints_tokenizer(setup, tmp_path: Path) -> None:
    ckpt, data, _, _ = setup
    result = evaluate_checkpoint(ckpt, str(data), cache_dir=tmp_path / "cache", split="val")
    assert result.split == "val" and result.tokens > 0 and result.mode == "stream"
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    again = evaluate_checkpoint(ckpt, str(result.prepared), cache_dir=tmp_path / "cache", batch_size=5)
    # another batch size only changes the fp32 summation order
    assert again.loss == pytest.approx(result.loss, abs=1e-6), "deterministic; a prepared dir works too"
    assert again.tokens == result.tokens and again.bytes == result.bytes


def test_data_the_tokenizer_cannot_encode_is_a_value_error(setup, tmp_path: Path) -> None:
    ckpt, *_ = setup
    other = tmp_path / "other.txt"
    other.write_text("ZZZ QQQ\n" * 50, encoding="utf-8")
    with pytest.raises(ValueError, match="'Z'"):
        evaluate_checkpoint(ckpt, str(other), cache_dir=tmp_path / "cache")


def test_prepared_with_another_tokenizer_is_refused(setup, tmp_path: Path) -> None:
    ckpt, data, _, _ = setup
    prepare(str(data), CharTokenizer.train([TEXT + "XYZ"]), tmp_path / "prep", mode="stream")
    with pytest.raises(ValueError, match="not the one"):
        evaluate_checkpoint(ckpt, str(tmp_path / "prep"), cache_dir=tmp_path / "cache")


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    script = (
        "import argparse, sys\n"
        "from microgpt import cli, evaluate\n"
        "build = cli.build_parser\n"
        "def build_with_eval():\n"
        "    parser = build()\n"
        "    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))\n"
        "    if 'eval' not in commands.choices:\n"
        "        evaluate.register(commands)\n"
        "    return parser\n"
        "cli.build_parser = build_with_eval\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "MICROGPT_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", script, "eval", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_prints_the_figures(setup, tmp_path: Path) -> None:
    ckpt, data, _, _ = setup
    out = _cli(str(ckpt), "--data", str(data), "--split", "train", "--batch-size", "4", cache=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        lines[0].startswith("loss") and lines[1].startswith("perplexity") and lines[2].startswith("bits/byte")
    )
    loss, ppl = float(lines[0].split()[1]), float(lines[1].split()[1])
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/ckpt", "--data", "{data}"], "/nonexistent/ckpt"),
        (["{ckpt}", "--data", "/nonexistent.txt"], "/nonexistent.txt"),
        (["{ckpt}", "--data", "{data}", "--max-batches", "0"], "max_batches"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(
    setup, tmp_path: Path, args: list[str], message: str
) -> None:
    ckpt, data, _, _ = setup
    out = _cli(*[a.format(ckpt=ckpt, data=data) for a in args], cache=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("microgpt eval: error:") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_the_checkpoints_training_mode_is_the_default(setup, tmp_path: Path) -> None:
    _, data, tokenizer, model = setup
    state = {"train": {"data_mode": "documents"}}
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tokenizer, trainer_state=state)
    result = evaluate_checkpoint(ckpt, str(data), cache_dir=tmp_path / "cache")
    assert result.mode == "documents"
    streamed = evaluate_checkpoint(ckpt, str(data), cache_dir=tmp_path / "cache", mode="stream")
    assert streamed.mode == "stream"
    again = evaluate_checkpoint(ckpt, str(streamed.prepared), cache_dir=tmp_path / "cache")
    assert again.mode == "stream", "a prepared directory keeps its own mode"
    with pytest.raises(ValueError, match="prepared in stream mode"):
        evaluate_checkpoint(ckpt, str(streamed.prepared), cache_dir=tmp_path / "cache", mode="documents")
