"""Building the C++ kernels in `csrc/`: with this machine's own instruction set, once per install.

`torch.utils.cpp_extension` compiles each kernel (a C++ compiler and ninja are needed). Each is
built in a directory of its own, named by a digest of everything the binary depends on: the
source, the headers it includes (torch's own key misses those), the flags, the torch and
Python versions. Two installs sharing `~/.cache/torch_extensions` (or `TORCH_EXTENSIONS_DIR`)
then keep a build each instead of rebuilding over each other's on every switch, and an edited
source builds afresh.

A build takes tens of seconds, so it is never silent: a line on stderr says which kernel is
being built and how long it took. `microgpt build-kernels` (run by `make install`) builds
them all ahead of time; the inference service and the training worker build the ones they
use before they report ready or take a first step.

    microgpt build-kernels          # once after installing: ~40 s, then nothing to do
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).parent / "csrc"
# Without trapping math and errno, GCC vectorises floor, rounding and polynomial exp/erf loops;
# no kernel reads floating-point flags or errno. at::parallel_for is OpenMP inside.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
LDFLAGS = ["-fopenmp"]
# Every kernel: extension name -> source in csrc/.
KERNELS = {
    "microgpt_gelu": "gelu.cpp",
    "microgpt_hash_dropout": "hash_dropout.cpp",
    "microgpt_native_decode": "native_decode.cpp",
}
TRAINING_KERNELS = ("microgpt_gelu", "microgpt_hash_dropout")  # what a CPU training step may call


def build_key(source: bytes, headers: Iterable[bytes], flags: Sequence[str], toolchain: str) -> str:
    """A digest of what a kernel's binary depends on; any change to one of them changes it."""
    digest = hashlib.sha256()
    for part in (source, *headers, "\0".join(flags).encode(), toolchain.encode()):
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two inputs run together
        digest.update(part)
    return digest.hexdigest()[:16]


@functools.cache
def _sources_key(name: str) -> str:
    """Kernel `name`'s build key, read and hashed once per process (its sources do not change)."""
    import torch

    headers = [h.read_bytes() for h in sorted(CSRC.glob("*.h"))]
    toolchain = f"torch {torch.__version__}, python {sys.version_info[0]}.{sys.version_info[1]}"
    return build_key((CSRC / KERNELS[name]).read_bytes(), headers, [*FLAGS, *LDFLAGS], toolchain)


def build_directory(name: str) -> Path:
    """Where kernel `name` is built: `<torch extensions root>/<name>-<build key>`."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return root / f"{name}-{_sources_key(name)}"


def is_built(name: str) -> bool:
    """Whether kernel `name`'s binary for these sources is already in the cache."""
    return (build_directory(name) / f"{name}.so").is_file()


def announce(message: str) -> None:
    """A line on stderr: a build is long enough that whoever waits must know why (services log it)."""
    print(f"microgpt: {message}", file=sys.stderr, flush=True)


@functools.cache
def build(name: str) -> ModuleType:
    """Kernel `name` imported, compiled first (with a line on stderr) unless already built."""
    from torch.utils.cpp_extension import load

    directory = build_directory(name)
    directory.mkdir(parents=True, exist_ok=True)
    fresh = not is_built(name)
    if fresh:
        announce(f"building native kernel {name} (once, 15-60 s) in {directory}...")
    started = time.perf_counter()
    module = load(
        name=name,
        sources=[str(CSRC / KERNELS[name])],
        extra_cflags=list(FLAGS),  # copies: torch appends to the lists it is given
        extra_ldflags=list(LDFLAGS),
        build_directory=str(directory),
    )
    if fresh:
        announce(f"built {name} in {time.perf_counter() - started:.0f} s")
    return module


def build_all(names: Iterable[str] = KERNELS, say: Callable[[str], None] = announce) -> float:
    """Build (or find built) each kernel of `names`, telling `say` when that means compiling; seconds."""
    started = time.perf_counter()
    names = list(names)
    missing = [n for n in names if not is_built(n)]
    if missing:
        say(f"building native kernels {', '.join(missing)} (once per install, ~{40 * len(missing)} s)...")
    for name in names:
        build(name)
    seconds = time.perf_counter() - started
    if missing:
        say(f"built native kernels in {seconds:.0f} s")
    return seconds


def cmd_build_kernels(args: argparse.Namespace) -> None:
    seconds = build_all()
    for name in KERNELS:
        print(f"{name}: {build_directory(name)}")
    print(f"native kernels ready ({seconds:.1f} s)")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build-kernels", help="compile the C++ kernels now (make install does), not on first use"
    )
    parser.set_defaults(run=cmd_build_kernels)
