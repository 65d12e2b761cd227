"""Task evaluation: accuracy per task on held-out conversations, answered with greedy decoding.

    microgpt eval runs/chat-tiny/checkpoint --tasks add,reverse,names     # the built-in test split
    microgpt eval chat-tiny@production --tasks all --split validation --limit 200
    microgpt eval CKPT --tasks all --data held_out.jsonl                 # your messages JSONL

    records = load_task_records("add,names", cache_dir=cache)            # the built-in test split
    scores = evaluate_tasks(model, tokenizer, records)                  # {"add": TaskScore, ...}

Design choices a reader must know:

- The prompt is the conversation up to its last assistant message, rendered with the chat
  template exactly as `microgpt chat` and the inference service render it (`microgpt.chat`);
  the reply is the greedy continuation until EOS, the template's stop string or the token
  limit (the reference's length in tokens plus a margin), without the space after the colon.
- A reply is right when it equals the reference answer after trimming spaces (exact match),
  or, for tasks scored by a rule (a name from the list that starts with the letter asked
  for), when it keeps the rule: `microgpt.data.tasks.score`.
- The built-in test split is the default: its keys (sums, words, names) were never trained
  on (`microgpt.data.tasks`). A record's task is its `task` field; records without one (your
  own data) count as the task `chat`. `limit` takes the first N of each task, in the file's
  (shuffled) order, so a quick evaluation is a fixed subset, not a fresh sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when an evaluation runs
    from microgpt.model import GPT
    from microgpt.tokenizers import Tokenizer

DEFAULT_BATCH_SIZE = 64
REPLY_MARGIN = 8  # tokens past the longest reference a reply may run before it is cut
UNLABELLED_TASK = "chat"
SHOWN_MISTAKES = 3


@dataclass
class TaskScore:
    """One task's figures: how many replies were right, of how many, and a few that were not."""

    task: str
    correct: int = 0
    total: int = 0
    mistakes: list[tuple[str, str, str]] = field(default_factory=list)  # (question, reply, expected)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def load_task_records(
    tasks: str | Sequence[str] | None,
    *,
    cache_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str = "test",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The records to evaluate: the built-in `split` (or the messages JSONL `data`), filtered to `tasks`.

    `tasks` is "add,reverse", a list, "all" or None (all). With the built-in data a task must
    be one of `microgpt.data.tasks.TASKS` the cache's `chat` data holds; with `data`, one the
    file has. `limit` keeps the first N records of each task.
    """
    from microgpt.data.conversations import read_conversations
    from microgpt.data.tasks import builtin_split, parse_tasks

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    names = None if tasks is None else _names(tasks)
    wanted = None if names in (None, ("all",)) else names
    if data is None:
        path = builtin_split(cache_dir, split)
        if wanted is not None:
            wanted = parse_tasks(wanted)  # each a built-in task's name
    else:
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"no such messages file: {path}")
    records = read_conversations(path)
    present = {_task(r) for r in records}
    missing = [t for t in wanted or () if t not in present]
    if missing:
        raise ValueError(
            f"{path} has no conversations of the task {missing[0]!r}; it has {', '.join(sorted(present))}"
        )
    kept: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for record in records:
        task = _task(record)
        if (wanted is None or task in wanted) and (limit is None or counts.get(task, 0) < limit):
            counts[task] = counts.get(task, 0) + 1
            kept.append(record)
    return kept


def _names(tasks: str | Sequence[str]) -> tuple[str, ...]:
    names = [n.strip() for n in (tasks.split(",") if isinstance(tasks, str) else tasks) if n.strip()]
    if not names:
        raise ValueError("name at least one task")
    return tuple(names)


def _task(record: dict[str, Any]) -> str:
    return str(record.get("task") or UNLABELLED_TASK)


def prompt_of(record: dict[str, Any]) -> str:
    """The chat prompt of a record: its conversation up to the last reply, rendered (no BOS)."""
    from microgpt.chat import render, to_turns

    messages = record["messages"]
    turns, user = to_turns((m["role"], m["content"]) for m in messages[:-1])
    return render(turns, user)


def evaluate_tasks(
    model: GPT,
    tokenizer: Tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, TaskScore]:
    """Each task's score over `records`, answered greedily in batches; see the module docstring."""
    from microgpt.chat import STOP
    from microgpt.data.tasks import load_inputs, reference, score
    from microgpt.sampling import SamplingParams
    from microgpt.textgen import complete

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = load_inputs()
    scores: dict[str, TaskScore] = {}
    room = model.config.block_size
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        prompts = [prompt_of(r) for r in batch]
        longest = max(len(tokenizer.encode(" " + reference(r))) for r in batch)
        longest_prompt = max(len(tokenizer.encode(p, add_bos=tokenizer.bos_id is not None)) for p in prompts)
        limit = max(1, min(longest + REPLY_MARGIN, room - longest_prompt))
        params = SamplingParams(max_new_tokens=limit, temperature=0.0, stop=[STOP])
        for record, completion in zip(batch, complete(model, tokenizer, prompts, params)):
            reply = completion.text[1:] if completion.text.startswith(" ") else completion.text
            entry = scores.setdefault(_task(record), TaskScore(_task(record)))
            entry.total += 1
            if score(record, reply, names):
                entry.correct += 1
            elif len(entry.mistakes) < SHOWN_MISTAKES:
                entry.mistakes.append((record["messages"][-2]["content"], reply, reference(record)))
    return dict(sorted(scores.items()))


def evaluate_checkpoint_tasks(
    ckpt_path: str | os.PathLike[str],
    tasks: str | Sequence[str] | None,
    *,
    cache_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    precision: Any = None,
) -> dict[str, TaskScore]:
    """Load a checkpoint (a directory or registry ref) and score it on the tasks' records."""
    from microgpt.loading import load_model

    records = load_task_records(tasks, cache_dir=cache_dir, data=data, split=split, limit=limit)
    ckpt = load_model(ckpt_path, precision=precision, device=device)
    return evaluate_tasks(ckpt.model, ckpt.text_tokenizer(), records, batch_size=batch_size)


def metrics_of(scores: dict[str, TaskScore]) -> dict[str, float]:
    """Registry metrics: `accuracy.<task>` for each task (a fraction)."""
    return {f"accuracy.{task}": s.accuracy for task, s in scores.items()}


def report(scores: dict[str, TaskScore]) -> str:
    """A table of the scores, then a few wrong replies of each task."""
    width = max([len(t) for t in scores] + [4])
    lines = [f"{'task':<{width}}  accuracy  correct / total"]
    lines += [f"{t:<{width}}  {s.accuracy:8.1%}  {s.correct:>7} / {s.total}" for t, s in scores.items()]
    for task, s in scores.items():
        for question, reply, expected in s.mistakes:
            lines.append(f"  {task}: {question!r} -> {reply!r} (expected {expected!r})")
    return "\n".join(lines)
