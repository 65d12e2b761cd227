"""The `microgpt tokenizer` commands, and `microgpt bench tokenizer`.

    microgpt tokenizer train --kind bpe --vocab-size 4096 --data corpus.txt --out tok.json
    microgpt tokenizer encode tok.json --text "hello"      # prints ids; stdin without --text
    microgpt tokenizer decode tok.json --ids "5 17 3"      # prints text; stdin without --ids
    microgpt tokenizer stats tok.json --data corpus.txt    # vocab size, bytes/token, UNK rate

`train` holds out the same hash-chosen documents that `stats` measures on
(`--holdout-fraction`, 0.1 by default in both), so the figures are for unseen text.
`--data` is a built-in data set or a text file with one document per line
(`microgpt.data.sources.load_documents`). `microgpt.cli` calls `register` and
`register_bench`; handlers raise ValueError for expected failures, which it prints
as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys

DEFAULT_HOLDOUT = 0.1


def cmd_train(args: argparse.Namespace) -> None:
    from microgpt.data.sources import load_documents
    from microgpt.tokenizers import TOKENIZER_KINDS, train_tokenizer
    from microgpt.tokenizers.stats import holdout_split

    if args.kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {args.kind!r}; choose from {', '.join(TOKENIZER_KINDS)}")
    if not 0.0 <= args.holdout_fraction < 1.0:
        raise ValueError(f"--holdout-fraction must be in [0, 1), got {args.holdout_fraction}")
    docs = load_documents(args.data)
    kept, held = holdout_split(docs, args.holdout_fraction)
    tok = train_tokenizer(args.kind, kept, args.vocab_size)
    path = tok.save(args.out)
    asked = ""
    if args.vocab_size is not None:
        asked = (
            f" (asked for {args.vocab_size})"
            if args.kind not in {"char", "byte"}
            else " (--vocab-size does not apply)"
        )
    print(
        f"trained a {tok.kind} tokenizer with {tok.vocab_size} ids{asked} on {len(kept)} documents "
        f"({len(held)} held out for stats); saved to {path}"
    )
    print(f"content hash {tok.content_hash}")


def cmd_encode(args: argparse.Namespace) -> None:
    from microgpt.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else sys.stdin.read()
    print(" ".join(map(str, tok.encode(text, add_bos=args.bos, add_eos=args.eos))))


def parse_ids(text: str) -> list[int]:
    """Integers separated by spaces and/or commas ("1 2 3", "[1, 2, 3]")."""
    ids = []
    for field in re.split(r"[\s,]+", text.strip().strip("[]")):
        if field:
            try:
                ids.append(int(field))
            except ValueError:
                raise ValueError(
                    f"ids must be integers separated by spaces or commas; {field!r} is not one"
                ) from None
    return ids


def cmd_decode(args: argparse.Namespace) -> None:
    from microgpt.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = parse_ids(args.ids if args.ids is not None else sys.stdin.read())
    print(tok.decode(ids, skip_special=not args.keep_special))


def cmd_stats(args: argparse.Namespace) -> None:
    from microgpt.data.sources import load_documents
    from microgpt.tokenizers import load_tokenizer
    from microgpt.tokenizers.stats import holdout_split, measure

    if not 0.0 < args.holdout_fraction <= 1.0:
        raise ValueError(f"--holdout-fraction must be in (0, 1], got {args.holdout_fraction}")
    tok = load_tokenizer(args.tokenizer)
    docs = load_documents(args.data)
    _, held = holdout_split(docs, args.holdout_fraction)
    if not held:
        raise ValueError(
            f"none of the {len(docs)} documents fall in the held-out {args.holdout_fraction:.0%}; "
            f"use more data or a larger --holdout-fraction (1 measures on everything)"
        )
    stats = measure(tok, held)
    which = "all" if args.holdout_fraction == 1.0 else f"held-out {args.holdout_fraction:g}"
    print(f"kind             {stats.kind}")
    print(f"vocab size       {stats.vocab_size}")
    print(f"documents        {stats.documents} of {len(docs)} ({which}), {stats.bytes:,} bytes")
    print(f"tokens           {stats.tokens:,}")
    print(f"bytes per token  {stats.bytes_per_token:.3f}")
    if tok.unk_id is None and tok.kind != "char":
        unknown = "0 (this kind has no UNK: it encodes any text)"
    elif tok.unk_id is None:  # a strict char tokenizer: `measure` counted what encode would refuse
        unknown = f"{stats.unknown_rate:.4%} ({stats.unknown:,} characters outside the vocabulary)"
    else:
        unknown = f"{stats.unknown_rate:.4%} ({stats.unknown:,} tokens)"
    print(f"unknown rate     {unknown}")


def cmd_bench_tokenizer(args: argparse.Namespace) -> None:
    from microgpt.bench.tokenizer import run

    run(vocab_size=args.vocab_size, megabytes=args.megabytes, runs=args.runs, threads=args.threads)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `tokenizer train|encode|decode|stats` to the top-level subcommands."""
    from microgpt.tokenizers import TOKENIZER_KINDS

    group = commands.add_parser("tokenizer", help="train, apply and measure tokenizers").add_subparsers(
        dest="tokenizer", required=True
    )
    train = group.add_parser("train", help="train a tokenizer and save its tokenizer.json")
    train.add_argument("--kind", required=True, choices=list(TOKENIZER_KINDS))
    train.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="ids, specials included (required except for char and byte)",
    )
    train.add_argument("--data", required=True, help="built-in data set or text file, one document per line")
    train.add_argument("--out", required=True, help="where to write the tokenizer.json")
    train.add_argument(
        "--holdout-fraction", type=float, default=DEFAULT_HOLDOUT, help="documents kept out for `stats`"
    )
    train.set_defaults(run=cmd_train)

    encode = group.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("tokenizer", help="tokenizer.json")
    encode.add_argument("--text", default=None, help="text to encode (default: all of stdin, as is)")
    encode.add_argument("--bos", action="store_true", help="start with BOS")
    encode.add_argument("--eos", action="store_true", help="end with EOS")
    encode.set_defaults(run=cmd_encode)

    decode = group.add_parser("decode", help="print the text of token ids")
    decode.add_argument("tokenizer", help="tokenizer.json")
    decode.add_argument("--ids", default=None, help='ids such as "1 2 3" (default: read from stdin)')
    decode.add_argument("--keep-special", action="store_true", help="show BOS/EOS/PAD as their tokens")
    decode.set_defaults(run=cmd_decode)

    stats = group.add_parser("stats", help="vocab size, bytes per token and unknown rate on held-out text")
    stats.add_argument("tokenizer", help="tokenizer.json")
    stats.add_argument("--data", required=True, help="built-in data set or text file, one document per line")
    stats.add_argument(
        "--holdout-fraction", type=float, default=DEFAULT_HOLDOUT, help="as given to train (1: all documents)"
    )
    stats.set_defaults(run=cmd_stats)


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add `tokenizer` to the `microgpt bench` subcommands."""
    parser = bench.add_parser("tokenizer", help="byte-level BPE batch-encoding MB/s")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--megabytes", type=float, default=20.0, help="text encoded per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="library threads (default: all CPUs)")
    parser.set_defaults(run=cmd_bench_tokenizer)
