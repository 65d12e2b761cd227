"""`microgpt data ...`: prepare a data set into token shards, and list what is known and prepared.

    microgpt data prepare shakespeare                   # download once, verify, shard (stream, char)
    microgpt data prepare names-32k --local-path names.txt
    microgpt data prepare corpus/ --mode stream --tokenizer tok.json --out prepared/corpus
    microgpt data ls
    microgpt data chat --out data/chat                  # the built-in tasks' conversations, 3 splits

`register(subparsers)` adds the `data` command to the main parser; handlers raise
ValueError for anything the user can fix, which the main CLI prints as one line (exit 2).
The cache directory comes from the settings (`MICROGPT_CACHE`) here and nowhere below.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing numpy for every `microgpt` command would slow them all
    from microgpt.data.manifest import Manifest


def cmd_prepare(args: argparse.Namespace) -> None:
    from microgpt.data.prepare import prepare_dataset
    from microgpt.settings import get_settings

    given = {"seed": args.seed, "val_fraction": args.val_fraction}  # unset: the library's defaults
    out, manifest = prepare_dataset(
        args.source,
        cache_dir=get_settings().cache,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        mode=args.mode,
        out_dir=args.out,
        block_size=args.block_size,
        long_documents=args.long_documents,
        text_field=args.text_field,
        local_path=args.local_path,
        **{k: v for k, v in given.items() if v is not None},
    )
    print(f"{'reused' if manifest.reused else 'prepared'} {out}")
    print(f"  {summary(manifest)}")


def cmd_chat(args: argparse.Namespace) -> None:
    from microgpt.data.builtin import fetch
    from microgpt.data.tasks import SPLIT_FILES, TASKS, load_inputs, parse_tasks, write_splits
    from microgpt.settings import get_settings

    tasks = parse_tasks(args.tasks)
    shakespeare = None
    if any(TASKS[t].needs_shakespeare for t in tasks):
        shakespeare = fetch("shakespeare", get_settings().cache, local_path=args.local_path)
    elif args.local_path is not None:
        raise ValueError("--local-path is the shakespeare text, for the shakespeare task")
    counts = write_splits(args.out, seed=args.seed, tasks=tasks, inputs=load_inputs(shakespeare))
    for split, n in counts.items():
        print(f"{Path(args.out) / SPLIT_FILES[split]}: {n:,} conversations")


def summary(manifest: Manifest) -> str:
    """One line: what the shards hold and how they were made."""
    parts = [
        f"source {manifest.source} (sha256 {manifest.source_sha256[:12]})",
        f"{manifest.options.mode} mode",
        f"{manifest.tokenizer_kind} tokenizer ({manifest.vocab_size:,} ids, {manifest.dtype})",
        f"train {manifest.train.tokens:,} tokens",
        f"val {manifest.val.tokens:,} tokens",
    ]
    if manifest.options.mode == "documents":
        parts.append(f"{manifest.train.documents:,}/{manifest.val.documents:,} documents")
    if manifest.truncated_documents or manifest.split_documents:
        parts.append(f"{manifest.truncated_documents} truncated, {manifest.split_documents} split")
    return ", ".join(parts)


def cmd_ls(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from microgpt.data.builtin import DATASETS, cached_path
    from microgpt.data.manifest import MANIFEST_FILE, read_manifest
    from microgpt.settings import get_settings

    cache = get_settings().cache
    console = Console(width=max(Console().width, 120))
    table = Table("data set", "mode", "tokenizer", "where", "description", title="built-in data sets")
    for d in DATASETS.values():
        if d.downloadable:
            where = "cached" if cached_path(d.name, cache).is_file() else "downloaded on first use"
        else:
            where = "offline"
        table.add_row(d.name, d.mode, d.tokenizer, where, d.description)
    console.print(table)

    prepared = Table("directory", "summary", title=f"prepared under {cache / 'prepared'}")
    root = Path(cache) / "prepared"
    for manifest_path in sorted(root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []:
        try:
            prepared.add_row(manifest_path.parent.name, summary(read_manifest(manifest_path.parent)))
        except ValueError as e:
            prepared.add_row(manifest_path.parent.name, f"unreadable: {e}")
    console.print(
        prepared if prepared.row_count else "no prepared data sets yet: try `microgpt data prepare names`"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data prepare`, `data ls` and `data chat` to the main parser's subcommands."""
    data = subparsers.add_parser("data", help="prepare data sets into token shards, list them")
    commands = data.add_subparsers(dest="data_command", required=True)

    prep = commands.add_parser(
        "prepare",
        help="tokenize a data set once into shards (reused while source and tokenizer are unchanged)",
    )
    prep.add_argument(
        "source", help="built-in data set (see `microgpt data ls`), text/JSONL file, directory or glob"
    )
    prep.add_argument(
        "--tokenizer",
        default=None,
        help="char, another kind to train (byte, bpe, ...), or a tokenizer.json (default: the data set's)",
    )
    prep.add_argument("--vocab-size", type=int, default=None, help="vocabulary size for a trained kind")
    prep.add_argument(
        "--mode",
        choices=["documents", "stream"],
        default=None,
        help="documents: each wrapped in BOS...EOS; stream: one text in random windows "
        "(default: the data set's, else stream)",
    )
    prep.add_argument("--out", default=None, help="output directory (default: under the cache directory)")
    prep.add_argument("--seed", type=int, default=None, help="seed of the train/val split (default 1337)")
    prep.add_argument("--val-fraction", type=float, default=None, help="share held out (default 0.1)")
    prep.add_argument(
        "--block-size", type=int, default=None, help="documents mode: the longest document, in tokens + 1"
    )
    prep.add_argument(
        "--long-documents",
        choices=["truncate", "split"],
        default="truncate",
        help="documents longer than --block-size: cut them, or split them into overlapping windows",
    )
    prep.add_argument("--text-field", default="text", help="the field holding the text in JSONL records")
    prep.add_argument(
        "--local-path", default=None, help="a copy of a downloadable data set, used instead of downloading"
    )
    prep.set_defaults(run=cmd_prepare)

    commands.add_parser("ls", help="built-in data sets, and the prepared ones in the cache").set_defaults(
        run=cmd_ls
    )

    chat = commands.add_parser(
        "chat",
        help="write the built-in tasks' conversations (messages JSONL: train, validation, test splits)",
    )
    chat.add_argument("--out", required=True, help="directory for train.jsonl, validation.jsonl, test.jsonl")
    chat.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks, or all (default: every task that needs no download)",
    )
    chat.add_argument("--seed", type=int, default=1337, help="the same seed writes the same bytes")
    chat.add_argument(
        "--local-path",
        default=None,
        help="the shakespeare task: a copy of tinyshakespeare instead of downloading",
    )
    chat.set_defaults(run=cmd_chat)
