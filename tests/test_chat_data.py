"""Conversation data: the built-in tasks are deterministic and their splits disjoint, a conversation
renders as the chat prompt plus its reply, the loss mask covers exactly what the assistant writes,
and bad messages records are errors that name the line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from microgpt.chat import Turn, render, render_segments, to_turns
from microgpt.data.batches import IGNORE_INDEX, Batches
from microgpt.data.conversations import parse_conversation, read_conversations
from microgpt.data.manifest import LossOn
from microgpt.data.prepare import prepare
from microgpt.data.tasks import (
    SPLIT_FILES,
    SPLITS,
    chained,
    generate_splits,
    load_inputs,
    score,
    write_splits,
)
from microgpt.task_eval import prompt_of
from microgpt.tokenizers import CharTokenizer

FAST_TASKS = ("add", "reverse", "names")  # the generators that read nothing slow


def _messages(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


def test_the_same_seed_writes_the_same_bytes_and_splits_are_disjoint(tmp_path: Path) -> None:
    counts = write_splits(tmp_path / "a", seed=5, tasks=FAST_TASKS)
    write_splits(tmp_path / "b", seed=5, tasks=FAST_TASKS)
    write_splits(tmp_path / "c", seed=6, tasks=FAST_TASKS)
    for name in SPLIT_FILES.values():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (tmp_path / "c" / "test.jsonl").read_bytes()
    assert counts["train"] > counts["test"] > 0 and counts["validation"] > 0  # 80 / 10 / 10, train chained

    keys: dict[str, dict[str, set[str]]] = {split: {t: set() for t in FAST_TASKS} for split in SPLITS}
    for split in SPLITS:
        for record in read_conversations(tmp_path / "a" / SPLIT_FILES[split]):
            messages = record["messages"]
            assert split == "train" or len(messages) == 2, "held-out conversations ask one question"
            for question, answer in zip(messages[::2], messages[1::2]):
                q, a = question["content"], answer["content"]
                if q.startswith("What is"):
                    x, y = map(int, re.findall(r"\d+", q))
                    assert a == str(x + y)
                    keys[split]["add"].add(f"{x}+{y}")
                elif q.startswith("Reverse"):
                    keys[split]["reverse"].add(a[::-1])
                elif "girl's" in q:  # a girl's name: keyed by the name
                    keys[split]["names"].add(a)
    for task in FAST_TASKS:
        train, validation, test = (keys[split][task] for split in SPLITS)
        assert train and test and not (train & test) and not (train & validation) and not (validation & test)


def test_a_conversation_renders_as_its_chat_prompt_then_the_reply() -> None:
    record = _messages(
        ("system", "Be brief."),
        ("user", "What is 2 + 2?"),
        ("assistant", "4"),
        ("user", "And\n3 + 3?"),
        ("assistant", "6"),
    )
    turns = parse_conversation(record)
    assert turns == [Turn("Be brief. What is 2 + 2?", "4"), Turn("And\n3 + 3?", "6")]
    pieces = render_segments(turns)
    text = "".join(piece for piece, _ in pieces)
    prompt = render(turns[:1], turns[1].user)  # what the chat service sends for the last turn
    assert text == prompt + " 6" and prompt_of(record) == prompt
    assert (
        "".join(piece for piece, trained in pieces if trained) == " 4\nUser: 6"
    )  # the stop string ends a turn
    assert to_turns([("user", "hi")]) == ([], "hi")


def test_the_loss_mask_counts_the_replies_and_the_end_marker_only(tmp_path: Path) -> None:
    record = _messages(
        ("system", "Be brief."), ("user", "hi"), ("assistant", "yo"), ("user", "ok?"), ("assistant", "ok")
    )
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(record) + "\n")
    text = "".join(piece for piece, _ in render_segments(parse_conversation(record)))
    tok = CharTokenizer.train([text])
    cases: list[tuple[LossOn, str]] = [("assistant", " yo\nUser: ok"), ("all", text)]
    for loss_on, expected in cases:
        prepared = tmp_path / loss_on
        prepare(path, tok, prepared, mode="documents", val_fraction=0.0, loss_on=loss_on)
        x, y = Batches(prepared, batch_size=1, block_size=64, seed=0).get(0)
        n = len(text) + 1  # positions with a target: every character, then EOS
        assert x[0, 0] == tok.bos_id and tok.decode(x[0, 1:n].tolist()) == text
        targets = [t for t in y[0, :n].tolist() if t != IGNORE_INDEX]
        assert tok.decode(targets[:-1]) == expected and targets[-1] == tok.eos_id  # EOS is learned
        assert (y[0, n:] == IGNORE_INDEX).all()
    unmasked = Batches(tmp_path / "assistant", batch_size=1, block_size=64, seed=0, loss_on="all").get(0)[1]
    assert (unmasked[0, : len(text) + 1] != IGNORE_INDEX).all(), "a pretraining phase reads every target"
    with pytest.raises(ValueError, match="no loss mask"):
        Batches(tmp_path / "all", batch_size=1, block_size=64, seed=0, loss_on="assistant")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "hi"}', "no 'messages'"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "must be the assistant's"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "roles are"),
        ('{"messages": [{"role": "assistant", "content": 3}]}', "not a string"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_conversations_are_errors_naming_the_record(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_messages(("user", "a"), ("assistant", "b"))) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"record 2.*{re.escape(message)}"):
        read_conversations(path)


def test_replies_score_by_exact_match_or_by_the_names_rule() -> None:
    names = load_inputs()
    splits = generate_splits(tasks=("add", "names"), inputs=names)
    add = next(r for r in splits["test"] if r["task"] == "add")
    girl = next(r for r in splits["test"] if r["task"] == "names" and r["check"]["gender"] == "female")
    answer = add["messages"][-1]["content"]
    assert score(add, f" {answer} ", names) and not score(add, answer + "0", names)
    letter = girl["check"]["starts_with"]
    other = next(
        n
        for n in names.female
        if n[0] == letter.lower() and n.capitalize() != girl["messages"][-1]["content"]
    )
    assert score(girl, other.capitalize(), names), "any girl's name with the letter will do"
    boy_only = next(n for n in names.male if n not in names.female and n[0] == letter.lower())
    assert not score(girl, boy_only.capitalize(), names) and not score(girl, "Zzz", names)


def test_train_conversations_chain_questions_in_order_within_the_limit() -> None:
    singles = generate_splits(tasks=("add", "reverse"))["test"][:50]
    chains = chained(singles, limit=100)
    assert [m for c in chains for m in c["messages"]] == [m for r in singles for m in r["messages"]]
    assert len(chains) < len(singles) and all(
        sum(len(t) for t, _ in render_segments(parse_conversation(c))) <= 100 for c in chains
    )
    assert chains[-1]["task"] == singles[-1]["task"], "a chain's task is its last reply's"
