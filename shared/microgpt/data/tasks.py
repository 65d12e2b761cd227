"""Built-in conversation tasks: seeded generators of chat data, their train/validation/test splits, scorers.

    microgpt data chat --out data/chat                  # train.jsonl, validation.jsonl, test.jsonl
    microgpt data chat --out data/chat --tasks add,reverse --seed 7
    records = generate_splits(seed=1337)["test"]        # in memory; see `score` for exact match

Every task makes short, regular conversations from what an installed machine has, one user
question in one fixed phrasing and one assistant answer (OpenAI `messages` records,
`microgpt.data.conversations`): a small model learns the task, not the wording.

    add      "What is 47 + 38?" -> "85"                 every pair of two-digit numbers
    sub      "What is 83 - 27?" -> "56"                 two-digit, never negative
    mul      "What is 7 times 12?" -> "84"              the times tables to 12
    reverse  "Reverse the word emma." -> "amme"         the names list's words of 2 to 6 letters
    count    "Count the letter m in emma." -> "2"
    spell    "Spell emma." -> "e-m-m-a"
    case     "Write emma in capital letters." -> "EMMA"  (and lowercase, capitalised)
    repeat   "Repeat after me: a#b{Q" -> "a#b{Q"      random printable ASCII: every character the
                                                     tokenizer needs, so a chat model can read any
    names    "Tell me a girl's name starting with K." -> "Kate"   the `names` package's commonest
    pydoc    "What does json.dumps do?" -> the first line of its docstring (this Python's stdlib)
    shakespeare  "Continue this line from Shakespeare: ..." -> the next line (needs the text)

Design choices a reader must know:

- Deterministic: a record depends only on (seed, task, the inputs), never on order or time,
  so the same seed writes the same bytes. `pydoc` reads this Python's standard library by
  parsing (`ast`, nothing is imported), so its items follow the Python version.
- The mixture's weights are the tasks' sizes: every sum (the task that takes a small model
  longest), seeded samples of the others (`Task.items`), and the common names repeated in
  train (`Task.copies`). `chat-tiny` learns sums, names and reversal within its budget with
  these weights (docs/benchmarks.md has the runs that set them).
- Splits are disjoint by a task's key (the sum's operands, the word, the name, the function):
  a key's split is a hash of (seed, task, key), 80% train, 10% validation, 10% test. Names are
  keyed by the answer, so a test question has answers never seen in training, and its score
  is whether the reply is a name from the list that fits (`check`), not one reference answer.
- Every question fits MAX_CHARS characters rendered (longer docstrings and lines are left
  out). Validation and test conversations are one question each; train conversations chain
  questions of any tasks, in a seeded order, into conversations of up to TRAIN_CHARS
  characters, so a block of 128 is full of replies to learn (no padding) and a model learns
  to answer the latest question after others, as in a chat. A record's `task` and `check`
  describe its last reply, the one `score` judges.
- The built-in data set `chat` (`microgpt.data.builtin`) is the train split of every task that
  needs no download, generated once into the cache; `shakespeare` needs the tinyshakespeare
  text (`microgpt data chat --tasks all` fetches it like `data prepare shakespeare`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import string
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microgpt.atomic import atomic_directory
from microgpt.data.conversations import conversation_text

GENERATOR_VERSION = 8  # bump when a task's output changes, so cached data sets are made again
DEFAULT_SEED = 1337
SPLITS = ("train", "validation", "test")
SPLIT_FILES = {split: f"{split}.jsonl" for split in SPLITS}
HELD_OUT = {"test": 0.1, "validation": 0.1}  # the rest is train
MAX_CHARS = 80  # characters of a rendered one-question conversation
TRAIN_CHARS = 126  # a train conversation of several questions: BOS + it + EOS fit a block of 128
MAX_WORD = 6
PYDOC_SKIP = frozenset({"test", "tests", "idlelib", "tkinter", "lib2to3", "ensurepip", "turtledemo"})


@dataclass(frozen=True)
class Item:
    """One conversation before rendering: the split key, the question, the answer, what scores it."""

    key: str
    question: str
    answer: str
    check: dict[str, Any] = field(default_factory=dict)  # for tasks scored by a rule, not the answer


@dataclass(frozen=True)
class Inputs:
    """What the generators read from the machine, loaded once."""

    female: tuple[str, ...]
    male: tuple[str, ...]
    shakespeare: Path | None = None

    @property
    def words(self) -> list[str]:
        """Lowercase names of 2 to MAX_WORD letters, in the lists' order: the string tasks' words."""
        return [n for n in dict.fromkeys((*self.female, *self.male)) if 2 <= len(n) <= MAX_WORD]


Generator = Callable[[Inputs, random.Random], Iterator[Item]]


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    generate: Generator
    needs_shakespeare: bool = False
    items: int | None = None  # a seeded sample of this many, else every item: the mixture's weights
    copies: int = 1  # times each train item is repeated: weight for a task with few items


def _arithmetic(
    symbol: str, pairs: Callable[[], Iterator[tuple[int, int]]], value: Callable[[int, int], int]
) -> Generator:
    def generate(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
        for a, b in pairs():
            yield Item(f"{a}{symbol}{b}", f"What is {a} {symbol} {b}?", str(value(a, b)))

    return generate


def _two_digit() -> Iterator[tuple[int, int]]:
    return ((a, b) for a in range(10, 100) for b in range(10, 100))


def _two_digit_ordered() -> Iterator[tuple[int, int]]:
    return ((a, b) for a in range(10, 100) for b in range(10, a + 1))


def _mul(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    for a in range(1, 13):
        for b in range(1, 13):
            yield Item(f"{a}x{b}", f"What is {a} times {b}?", str(a * b))


REPEAT_ITEMS = 500
REPEAT_CHARS = string.ascii_letters + string.digits + string.punctuation


def _repeat(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    """Random strings of printable ASCII: copying, and every character in the data's alphabet."""
    for _ in range(REPEAT_ITEMS):
        text = "".join(rng.choice(REPEAT_CHARS) for _ in range(rng.randint(3, 8)))
        yield Item(text, f"Repeat after me: {text}", text)


def _reverse(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    for word in inputs.words:
        yield Item(word, f"Reverse the word {word}.", word[::-1])


def _count(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    for word in inputs.words:
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        yield Item(word, f"Count the letter {letter} in {word}.", str(word.count(letter)))


def _spell(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    for word in inputs.words:
        yield Item(word, f"Spell {word}.", "-".join(word))


def _case(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    for word in inputs.words:
        how = rng.randrange(3)
        if how == 0:
            yield Item(word, f"Write {word} in capital letters.", word.upper())
        elif how == 1:
            yield Item(word, f"Write {word.upper()} in lowercase.", word)
        else:
            yield Item(word, f"Capitalize {word}.", word.capitalize())


NAME_MIN_PER_LETTER = 5  # (letter, gender) pairs with fewer names are never asked for
NAMES_PER_LETTER = 6  # the most common names of each letter and gender (the lists go by frequency)
_GENDERS = {"female": "girl's", "male": "boy's"}


def _names(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    """Each common name answers two questions, one for its gender and one for any name.

    Common names only: a greedy reply is the model's likeliest name, and a few names per
    letter make that a real one sooner than thousands of rare ones would.
    """
    for gender, names in (("female", inputs.female), ("male", inputs.male)):
        by_letter: dict[str, list[str]] = {}
        for name in names:
            by_letter.setdefault(name[0], []).append(name)
        for first, group in by_letter.items():
            if len(group) < NAME_MIN_PER_LETTER:
                continue
            letter = first.upper()
            for name in group[:NAMES_PER_LETTER]:
                for asked in (gender, None):
                    kind = f"a {_GENDERS[asked]} name" if asked else "a name"
                    check = {"starts_with": letter, "gender": asked}
                    yield Item(
                        f"{gender}:{name}",
                        f"Tell me {kind} starting with {letter}.",
                        name.capitalize(),
                        check,
                    )


def pydoc_items(root: Path, files: Sequence[Path]) -> Iterator[tuple[str, str]]:
    """(module.name, first docstring line) of the public functions and classes of stdlib modules.

    Sources are parsed, never imported (importing some modules does things). Private modules
    and names, tests and GUI packages are skipped; so is a first line that is not one short
    ASCII sentence.
    """
    for path in files:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if PYDOC_SKIP.intersection(parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or any(p.startswith("_") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                first = doc.strip().splitlines()[0].strip()
                if len(first) >= 10 and first.isascii() and first.isprintable() and first.endswith("."):
                    yield ".".join([*parts, node.name]), first


def _pydoc(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    from microgpt.data.builtin import stdlib_files

    files = stdlib_files()
    assert files.root is not None
    for name, first in pydoc_items(files.root, files.paths):
        yield Item(name, f"What does {name} do?", first)


def _shakespeare(inputs: Inputs, rng: random.Random) -> Iterator[Item]:
    if inputs.shakespeare is None:
        raise ValueError("the shakespeare task needs the tinyshakespeare text")
    lines = inputs.shakespeare.read_text(encoding="utf-8").splitlines()
    for i, (line, following) in enumerate(zip(lines, lines[1:])):
        speech = line and following and not line.endswith(":") and not following.endswith(":")
        if speech and not line.isupper():
            yield Item(f"{i}", f"Continue this line from Shakespeare: {line.strip()}", following.strip())


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("add", "two-digit addition", _arithmetic("+", _two_digit, lambda a, b: a + b)),
        Task(
            "sub",
            "two-digit subtraction, never negative",
            _arithmetic("-", _two_digit_ordered, lambda a, b: a - b),
            items=800,
        ),
        Task("mul", "the times tables to 12", _mul),
        Task("reverse", "reverse a word of 2 to 6 letters", _reverse, items=2500),
        Task("repeat", "repeat a random string of printable characters", _repeat),
        Task("count", "count a letter in a word", _count, items=400),
        Task("spell", "spell a word letter by letter", _spell, items=400),
        Task("case", "upper, lower or capitalised case", _case, items=400),
        Task("names", "a (girl's or boy's) name starting with a letter", _names, copies=5),
        Task("pydoc", "what a stdlib function or class does: its docstring's first line", _pydoc),
        Task("shakespeare", "the next line of a Shakespeare speech", _shakespeare, needs_shakespeare=True),
    )
}
OFFLINE_TASKS = tuple(name for name, t in TASKS.items() if not t.needs_shakespeare)


def parse_tasks(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Task names from "add,reverse", a list, "all", or None (every task that needs no download)."""
    if spec is None:
        return OFFLINE_TASKS
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["all"]:
        return tuple(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task {unknown[0] if unknown else ''!r}; tasks: {', '.join(TASKS)}, or all")
    return tuple(dict.fromkeys(names))


def split_of(seed: int, task: str, key: str) -> str:
    """The split of a key: a hash of (seed, task, key), so disjoint and independent of order."""
    digest = hashlib.sha256(f"{seed}\0{task}\0{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < HELD_OUT["test"]:
        return "test"
    if u < HELD_OUT["test"] + HELD_OUT["validation"]:
        return "validation"
    return "train"


def load_inputs(shakespeare: Path | None = None) -> Inputs:
    from microgpt.data.builtin import builtin_names_by_gender

    lists = builtin_names_by_gender()
    return Inputs(tuple(lists["female"]), tuple(lists["male"]), shakespeare)


def _record(task: str, item: Item) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task": task,
        "messages": [
            {"role": "user", "content": item.question},
            {"role": "assistant", "content": item.answer},
        ],
    }
    if item.check:
        record["check"] = item.check
    return record


def _fits(record: dict[str, Any]) -> bool:
    return _chars(record) <= MAX_CHARS


def generate_splits(
    *, seed: int = DEFAULT_SEED, tasks: Sequence[str] | None = None, inputs: Inputs | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every task's records by split, shuffled (seeded); train records chained (`chained`)."""
    names = parse_tasks(tasks)
    if inputs is None:
        inputs = load_inputs()
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for name in names:
        rng = random.Random(f"{seed}:{name}")  # str seeds hash with sha512: the same on every run
        task = TASKS[name]
        kept = [(item, record) for item in task.generate(inputs, rng) if _fits(record := _record(name, item))]
        if task.items is not None and task.items < len(kept):
            kept = rng.sample(kept, task.items)
        for item, record in kept:
            split = split_of(seed, name, item.key)
            splits[split] += [record] * (task.copies if split == "train" else 1)
    for split, records in splits.items():
        random.Random(f"{seed}:shuffle:{split}").shuffle(records)
    splits["train"] = chained(splits["train"])
    return splits


def chained(records: Sequence[dict[str, Any]], limit: int = TRAIN_CHARS) -> list[dict[str, Any]]:
    """Consecutive one-question records joined into conversations of at most `limit` characters."""
    out: list[dict[str, Any]] = []
    for record in records:
        if out and _chars(out[-1]) + 1 + _chars(record) <= limit:  # + 1: the newline between turns
            out[-1] = {**record, "messages": out[-1]["messages"] + record["messages"]}
        else:
            out.append(record)
    return out


def _chars(record: dict[str, Any]) -> int:
    return len(conversation_text(record))


def write_splits(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = DEFAULT_SEED,
    tasks: Sequence[str] | None = None,
    inputs: Inputs | None = None,
) -> dict[str, int]:
    """`out_dir/{train,validation,test}.jsonl`, written whole or not at all; the records per split."""
    splits = generate_splits(seed=seed, tasks=tasks, inputs=inputs)
    with atomic_directory(Path(out_dir)) as tmp:
        for split, records in splits.items():
            lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
            (tmp / SPLIT_FILES[split]).write_text(lines, encoding="utf-8")
    return {split: len(records) for split, records in splits.items()}


def builtin_dir(cache_dir: str | os.PathLike[str], seed: int = DEFAULT_SEED) -> Path:
    """Where the built-in `chat` data set's splits live: named by generator, Python version and seed."""
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(cache_dir) / "datasets" / f"chat-v{GENERATOR_VERSION}-{python}-seed{seed}"


def builtin_split(cache_dir: str | os.PathLike[str], split: str = "train") -> Path:
    """The built-in `chat` data set's file for `split`, generated into the cache on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    directory = builtin_dir(cache_dir)
    if not (directory / SPLIT_FILES[split]).is_file():
        write_splits(directory)  # two processes racing here write the same bytes
    return directory / SPLIT_FILES[split]


# --- scoring ----------------------------------------------------------------------------


def reference(record: dict[str, Any]) -> str:
    """The record's answer: its last assistant message."""
    return str(record["messages"][-1]["content"])


def score(record: dict[str, Any], reply: str, names: Inputs | None = None) -> bool:
    """Whether `reply` answers the record: exact match (after trimming spaces), or its rule.

    A names question is right when the reply is one name from the list (of the gender asked
    for, else either) that starts with the letter asked for.
    """
    reply = reply.strip()
    check = record.get("check")
    if not check:
        return reply == reference(record).strip()
    if names is None:
        names = load_inputs()
    gender = check.get("gender")
    allowed = set(
        names.female if gender == "female" else names.male if gender == "male" else names.female + names.male
    )
    return reply[:1] == check["starts_with"] and reply.lower() in allowed
