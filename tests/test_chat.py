"""`microgpt.chat`: the template, trimming the history to the context, and a session over a tiny model.

The trimmer is checked with a character counter (one token per character), the session with
a random 1-layer model and greedy decoding, so every reply is deterministic. The piped CLI
runs as a subprocess through `microgpt.cli.main`, with `chat` registered by
`microgpt.chat.register` if the main parser does not have it yet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from microgpt.chat import STOP, ChatSession, Turn, fit_prompt, render
from microgpt.checkpoint import save_checkpoint
from microgpt.config import GPTConfig
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.tokenizers import CharTokenizer

ALPHABET = "User: Assistant:\nabcdefghijklmnopqrstuvwxyz?!.,"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train([ALPHABET])


@pytest.fixture(scope="module")
def model(tokenizer: CharTokenizer) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16)
    return GPT(config).eval()


def greedy(max_new_tokens: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)


def test_render_is_the_documented_template() -> None:
    history = [Turn("hello", "hi there"), Turn("two\nlines", "ok")]
    assert render(history, "how are you") == (
        "User: hello\nAssistant: hi there\nUser: two lines\nAssistant: ok\nUser: how are you\nAssistant:"
    )


def test_fit_prompt_drops_the_oldest_whole_turns_first() -> None:
    history = [Turn(f"question {i}", f"answer {i}") for i in range(5)]
    full = render(history, "new")
    prompt, dropped = fit_prompt(history, "new", len, len(full))
    assert (prompt, dropped) == (full, 0)
    budget = len(render(history[2:], "new"))  # room for exactly the last three turns
    for b in (budget, budget + 5):
        prompt, dropped = fit_prompt(history, "new", len, b)
        assert (prompt, dropped) == (render(history[2:], "new"), 2), "whole turns, oldest first"
        assert len(prompt) <= b
    prompt, dropped = fit_prompt(history, "new", len, budget - 1)
    assert dropped == 3 and prompt.startswith("User: question 3\n")


def test_fit_prompt_keeps_the_tail_of_a_message_too_long_alone() -> None:
    message = "the start of a very long message and its end"
    budget = len(render([], "its end"))
    prompt, dropped = fit_prompt([Turn("a", "b")], message, len, budget)
    assert dropped == 1 and prompt == render([], "its end") and len(prompt) <= budget
    with pytest.raises(ValueError, match="too few"):
        fit_prompt([], message, len, len(render([], "")) - 1)


def test_session_replies_stream_and_the_history_accumulates(model: GPT, tokenizer: CharTokenizer) -> None:
    session = ChatSession(model, tokenizer, greedy())
    first = "".join(session.reply("hello"))
    assert session.history == [Turn("hello", first.strip())]
    assert STOP not in first and "\n" not in session.history[0].assistant
    prompt = session.prompt_for("how are you?")
    assert prompt == render([Turn("hello", first.strip())], "how are you?")
    second = list(session.reply("how are you?"))
    assert len(session.history) == 2 and session.history[1].assistant == "".join(second).strip()

    replay = ChatSession(model, tokenizer, greedy())
    assert "".join(replay.reply("hello")) == first, "greedy replies are deterministic"


def test_session_prompt_stays_within_the_context(model: GPT, tokenizer: CharTokenizer) -> None:
    session = ChatSession(model, tokenizer, greedy(max_new_tokens=20))
    block = model.config.block_size
    assert session.reply_room == 20 and session.budget == block - 20
    for i in range(10):
        prompt = session.prompt_for(f"question number {'abcdefghij'[i]}")
        n = len(tokenizer.encode(prompt, add_bos=True))
        assert n + session.reply_room <= block
        list(session.reply(f"question number {'abcdefghij'[i]}"))
    assert session.dropped > 0, "older turns were trimmed"
    assert len(session.history) == 10, "the history itself is kept whole"

    long_first = ChatSession(model, tokenizer, greedy(max_new_tokens=500))
    assert long_first.reply_room == block // 2, "the reply's room is capped at half the context"
    prompt = long_first.prompt_for("a" * 200)
    assert len(tokenizer.encode(prompt, add_bos=True)) <= block // 2 and prompt.endswith("a\nAssistant:")


def test_unencodable_text_is_a_clear_value_error(model: GPT, tokenizer: CharTokenizer) -> None:
    session = ChatSession(model, tokenizer, greedy())
    with pytest.raises(ValueError, match="'Z'"):
        session.reply("Zebra")
    assert session.history == []
    names_only = CharTokenizer.train(["abc"])
    with pytest.raises(ValueError, match="chat template"):
        ChatSession(model, names_only, greedy())


def test_seeded_sampling_replays_a_session(model: GPT, tokenizer: CharTokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7)
    runs = []
    for _ in range(2):
        session = ChatSession(model, tokenizer, params)
        runs.append(["".join(session.reply(m)) for m in ("hi", "hi")])
    assert runs[0] == runs[1]


def _cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    script = (
        "import argparse, sys\n"
        "from microgpt import chat, cli\n"
        "build = cli.build_parser\n"
        "def build_with_chat():\n"
        "    parser = build()\n"
        "    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))\n"
        "    if 'chat' not in commands.choices:\n"
        "        chat.register(commands)\n"
        "    return parser\n"
        "cli.build_parser = build_with_chat\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model: GPT, tokenizer: CharTokenizer) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt", model, tokenizer=tokenizer)


def test_cli_reads_piped_lines_until_quit(checkpoint: Path, model: GPT, tokenizer: CharTokenizer) -> None:
    out = _cli(
        str(checkpoint),
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        stdin="hello\n\nhow?\n/quit\nignored\n",
    )
    assert out.returncode == 0, out.stderr
    session = ChatSession(model, tokenizer, greedy(max_new_tokens=8))
    expected = ["".join(session.reply("hello")), "".join(session.reply("how?"))]
    assert out.stdout.splitlines() == expected


def test_cli_chats_with_an_int8_only_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    """A quantized version (what a quantize job pushes) chats from the CLI as its loaded model does."""
    from microgpt.loading import load_model
    from microgpt.quantize import quantize_checkpoint

    int8 = quantize_checkpoint(checkpoint, tmp_path / "int8", "int8")
    out = _cli(str(int8), "--temperature", "0", "--max-new-tokens", "8", stdin="hello\nhow?\n")
    assert out.returncode == 0, out.stderr
    loaded = load_model(int8)
    assert loaded.precision == "int8" and loaded.tokenizer is not None
    session = ChatSession(loaded.model, loaded.tokenizer, greedy(max_new_tokens=8))
    expected = ["".join(session.reply("hello")), "".join(session.reply("how?"))]
    assert out.stdout.splitlines() == expected


def test_cli_bad_message_is_reported_and_the_session_goes_on(checkpoint: Path) -> None:
    out = _cli(str(checkpoint), "--temperature", "0", "--max-new-tokens", "4", stdin="Zed\nhello\n")
    assert out.returncode == 0
    assert out.stderr.startswith("microgpt chat: error:") and "'Z'" in out.stderr
    assert len(out.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["/nonexistent/ckpt"], "/nonexistent/ckpt"), (["{ckpt}", "--top-p", "2"], "top_p")],
)
def test_cli_errors_are_one_line_with_exit_code_2(checkpoint: Path, args: list[str], message: str) -> None:
    out = _cli(*[a.format(ckpt=checkpoint) for a in args], stdin="hello\n")
    assert out.returncode == 2
    assert out.stderr.startswith("microgpt chat: error:") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_register_adds_the_chat_command() -> None:
    from microgpt import chat

    parser = argparse.ArgumentParser()
    chat.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["chat", "ckpt", "--top-k", "5", "--seed", "1"])
    assert (args.checkpoint, args.top_k, args.seed, args.backend) == ("ckpt", 5, 1, "eager")
