"""Byte-level BPE batch-encoding speed, in MB/s of UTF-8 text.

    microgpt bench tokenizer                    # vocab 4096, >= 20 MB, best of 3
    python -m microgpt.bench.tokenizer

The text is this Python's standard library source, which every install has, so the
benchmark needs no network or data files: a bytelevel-bpe tokenizer is trained on
the top-level modules (about 5 MB), then `encode_batch` (Rust, one text per task on
the library's thread pool) encodes the other modules, packages and tests (about
27 MB on CPython 3.11; repeated if an install has less), one file per text. Beside
it is the same call with TOKENIZERS_PARALLELISM=false, i.e. on one thread: the
reference that shows what the thread pool adds on this machine. The thread count is
the library's: every CPU this process may use, or RAYON_NUM_THREADS, which `threads`
sets (it must be set before the first parallel call in the process, so it is set
before training).
"""

from __future__ import annotations

import contextlib
import os
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MB = 1e6


@dataclass(frozen=True)
class TokenizerBench:
    vocab_size: int
    train_bytes: int
    encode_bytes: int
    texts: int
    tokens: int
    threads: int
    batch_mb_s: float  # encode_batch, best of the runs
    single_mb_s: float  # encode_batch on one thread, best of the runs


def stdlib_sources() -> tuple[list[str], list[str]]:
    """(top-level modules, everything else) of the standard library, as text, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    top: list[str] = []
    rest: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if {"site-packages", "dist-packages"} & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")  # a few test files are not UTF-8
        except OSError:
            continue
        (top if path.parent == root else rest).append(text)
    if not top or not rest:
        raise ValueError(f"found no standard-library sources under {root}")
    return top, rest


def library_threads() -> int:
    """The threads the `tokenizers` library's pool will use in this process."""
    setting = os.environ.get("TOKENIZERS_PARALLELISM", "").lower()
    if setting in {"0", "false", "f", "off", "no", "n"}:
        return 1
    rayon = os.environ.get("RAYON_NUM_THREADS", "")
    if rayon.isdigit() and int(rayon) > 0:
        return int(rayon)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(
    *, vocab_size: int = 4096, megabytes: float = 20.0, runs: int = 3, threads: int | None = None
) -> TokenizerBench:
    """Train, encode at least `megabytes` MB `runs` times, print and return the figures."""
    if runs < 1 or megabytes <= 0:
        raise ValueError(f"runs must be >= 1 and megabytes > 0, got {runs} and {megabytes}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    from microgpt.tokenizers.hf import ByteLevelBPETokenizer

    train_texts, held = stdlib_sources()
    start = time.perf_counter()
    tok = ByteLevelBPETokenizer.train(train_texts, vocab_size=vocab_size)
    train_s = time.perf_counter() - start
    texts, size = [], 0
    while size < megabytes * MB:
        for text in held:
            texts.append(text)
            size += len(text.encode("utf-8"))
            if size >= megabytes * MB:
                break
    train_bytes = sum(len(t.encode("utf-8")) for t in train_texts)
    threads_used = library_threads()
    print(
        f"bytelevel-bpe, {tok.vocab_size} ids, trained on {train_bytes / MB:.1f} MB of standard-library "
        f"source in {train_s:.1f} s; encoding {size / MB:.1f} MB in {len(texts)} texts"
    )

    def best_mb_s() -> float:
        best = 0.0
        for _ in range(runs):
            start = time.perf_counter()
            tok.encode_batch(texts)
            best = max(best, size / MB / (time.perf_counter() - start))
        return best

    tokens = sum(map(len, tok.encode_batch(texts)))  # also warms the pool and the BPE cache
    batch = best_mb_s()
    print(
        f"  encode_batch  {batch:6.2f} MB/s on {threads_used} threads (best of {runs}), "
        f"{size / tokens:.2f} bytes per token"
    )
    with _parallelism_off():
        single = best_mb_s()
    print(f"  same, 1 thread {single:5.2f} MB/s ({batch / single:.1f}x from the thread pool)")
    return TokenizerBench(
        vocab_size=tok.vocab_size,
        train_bytes=train_bytes,
        encode_bytes=size,
        texts=len(texts),
        tokens=tokens,
        threads=threads_used,
        batch_mb_s=batch,
        single_mb_s=single,
    )


@contextlib.contextmanager
def _parallelism_off() -> Iterator[None]:
    """The library reads TOKENIZERS_PARALLELISM on every call, so this makes batches serial."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


if __name__ == "__main__":
    run()
