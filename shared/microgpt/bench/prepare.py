"""Data preparation throughput and peak memory on a synthetic corpus of a gigabyte or more.

    python -m microgpt.bench.prepare                 # 1 GiB, char tokenizer, stream mode
    python -m microgpt.bench.prepare --tokenizer byte --size-gb 4 --dir /mnt/scratch

The corpus (random lowercase words, spaces and line breaks, generated in 16 MiB blocks)
is written to a temporary directory, prepared by `microgpt.data.prepare.prepare` in a
child process, and deleted. The child runs nothing else, so its peak resident set size
(VmHWM) is the preparation's memory, imports included; the claim under test is that
it stays far below the corpus size (under 1 GB for any size). MB/s is corpus bytes
(10^6) per second of the whole `prepare` call: source hash pass, decoding, tokenizing,
writing shards and manifest.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK_BYTES = 16 << 20
ALPHABET = "\n abcdefghijklmnopqrstuvwxyz"
RSS_LIMIT_BYTES = 1 << 30


def make_corpus(path: Path, size_bytes: int, *, seed: int = 0) -> int:
    """Write at least `size_bytes` of random words to `path` block by block; return the size."""
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "wb") as f:
        while written < size_bytes:
            block = rng.integers(ord("a"), ord("z") + 1, size=BLOCK_BYTES, dtype=np.uint8)
            r = rng.random(BLOCK_BYTES, dtype=np.float32)
            block[r < 0.16] = ord(" ")  # words of about six letters
            block[r < 0.012] = ord("\n")  # lines of about twelve words
            f.write(block.tobytes())
            written += BLOCK_BYTES
    return written


def _child(corpus: str, out: str, tokenizer_path: str) -> None:
    """Prepare `corpus` and print one JSON line: seconds, tokens, and this process's peak RSS."""
    from microgpt.data.prepare import prepare
    from microgpt.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    manifest = prepare(corpus, tokenizer, out, mode="stream")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": manifest.tokens, "peak_rss_bytes": peak_rss_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux's VmHWM belongs to this process image; `ru_maxrss` would also count the parent's
    peak, which a forked child inherits and keeps across exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run(size_gb: float = 1.0, *, tokenizer: str = "char", workdir: str | None = None) -> dict[str, float]:
    """Generate, prepare in a child process, print and return the figures; delete the files."""
    from microgpt.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, load_tokenizer

    size = int(size_gb * (1 << 30))
    tmp = Path(tempfile.mkdtemp(prefix="microgpt-bench-prepare-", dir=workdir))
    try:
        corpus = tmp / "corpus.txt"
        start = time.perf_counter()
        size = make_corpus(corpus, size)
        print(f"wrote a {size / 1e9:.2f} GB synthetic corpus in {time.perf_counter() - start:.1f} s")
        tok: Tokenizer
        if tokenizer in ("char", "byte"):
            tok = CharTokenizer(sorted(ALPHABET)) if tokenizer == "char" else ByteTokenizer()
        else:
            tok = load_tokenizer(tokenizer)
        tok_path = tok.save(tmp / "tokenizer.json")
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "microgpt.bench.prepare",
                "--child",
                str(corpus),
                str(tmp / "out"),
                str(tok_path),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"the preparing process failed:\n{child.stderr}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb_s = size / 1e6 / figures["seconds"]
    peak = figures["peak_rss_bytes"]
    verdict = "under" if peak < RSS_LIMIT_BYTES else "OVER"
    print(
        f"prepare ({tok.kind} tokenizer, stream mode): {size / 1e6:,.0f} MB -> {figures['tokens']:,} tokens "
        f"in {figures['seconds']:.1f} s = {mb_s:,.1f} MB/s"
    )
    print(f"peak RSS of the preparing process: {peak / 2**20:,.0f} MiB ({verdict} the 1 GiB limit)")
    return {"size_bytes": size, "seconds": figures["seconds"], "mb_per_s": mb_s, "peak_rss_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m microgpt.bench.prepare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size-gb", type=float, default=1.0, help="corpus size in GiB (default 1)")
    parser.add_argument("--tokenizer", default="char", help="char, byte, or a tokenizer.json path")
    parser.add_argument("--dir", default=None, help="where to write the temporary corpus and shards")
    parser.add_argument("--child", nargs=3, metavar=("CORPUS", "OUT", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    figures = run(args.size_gb, tokenizer=args.tokenizer, workdir=args.dir)
    return 0 if figures["peak_rss_bytes"] < RSS_LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
