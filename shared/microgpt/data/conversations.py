"""Conversations: OpenAI-style `messages` JSONL, checked, and rendered with the chat template for training.

    {"messages": [{"role": "user", "content": "What is 47 + 38?"}, {"role": "assistant", "content": "85"}]}

One conversation per line, as OpenAI's fine-tuning format has it. Roles are system,
developer, user and assistant; content is a string. A conversation holds at least one
assistant message and ends with one (the last thing trained is a reply); other keys on the
record (the built-in tasks add `task` and `check`) are ignored by training.

Rendering is `microgpt.chat`'s, the one the chat service prompts with: `to_turns` maps the
roles, `render_segments` gives the text in pieces marked where the assistant writes. A
messages file read as plain text (a `text` pretraining run, `microgpt.data.sources`) becomes
the joined pieces; supervised finetuning (`loss_on="assistant"`, `microgpt.data.prepare`)
keeps the marks, so that the loss falls on the replies only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from microgpt.chat import Turn, render_segments, to_turns

MESSAGES_FIELD = "messages"
ROLES = ("system", "developer", "user", "assistant")
Segments = list[tuple[str, bool]]  # (text, the assistant writes it)


def parse_conversation(record: Any) -> list[Turn]:
    """The template turns of one record; a ValueError saying what is wrong with it."""
    if not isinstance(record, dict) or MESSAGES_FIELD not in record:
        keys = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"it has no {MESSAGES_FIELD!r} list (it has {keys or 'nothing'})")
    messages = record[MESSAGES_FIELD]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{MESSAGES_FIELD!r} must be a non-empty list of messages")
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} is {type(message).__name__}, not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}'s content is {type(content).__name__}, not a string")
        if "\x00" in content:
            raise ValueError(f"message {i}'s content holds a NUL character")
        pairs.append((role, content))
    if pairs[-1][0] != "assistant":
        raise ValueError(f"the last message must be the assistant's (the reply trained on), not {role!r}")
    turns, _ = to_turns(pairs)
    return turns


def conversation_segments(record: Any) -> Segments:
    """One record rendered for training: (text, trained) pieces; see `microgpt.chat.render_segments`."""
    return render_segments(parse_conversation(record))


def conversation_text(record: Any) -> str:
    """One record as the plain text a language model reads (the pieces joined)."""
    return "".join(text for text, _ in conversation_segments(record))


def iter_records(path: Path, lines: Iterator[str]) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line; bad JSON is an error naming file and line."""
    for number, line in enumerate(lines, start=1):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: record {number} is not JSON ({e.msg})") from None


def iter_segments(path: Path, lines: Iterator[str]) -> Iterator[Segments]:
    """Each conversation of a messages JSONL file, rendered; a bad record names file and line."""
    for number, record in iter_records(path, lines):
        try:
            yield conversation_segments(record)
        except ValueError as e:
            raise ValueError(f"{path}: record {number}: {e}") from None


def read_conversations(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a messages JSONL file, each checked (`parse_conversation`)."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for number, record in iter_records(path, (line for line in f if line.strip())):
            try:
                parse_conversation(record)
            except ValueError as e:
                raise ValueError(f"{path}: record {number}: {e}") from None
            records.append(record)
    return records
