"""Building the C++ kernels in `csrc/`: on first use, with this machine's own instruction set.

`torch.utils.cpp_extension` compiles each one (a C++ compiler and ninja are needed) and caches
the build per machine. Its cache key covers a source and its flags but not the headers it
includes, so the flags carry the headers' digest: editing `csrc/fast_math.h` rebuilds every
kernel that includes it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

from torch.utils.cpp_extension import load

CSRC = Path(__file__).parent / "csrc"
# Without trapping math and errno, GCC vectorises floor, rounding and polynomial exp/erf loops;
# no kernel reads floating-point flags or errno. at::parallel_for is OpenMP inside.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]


def build(name: str, source: str) -> ModuleType:
    """Compile `csrc/<source>` as the extension `name` (cached after the first time) and import it."""
    headers = hashlib.sha256(b"".join(h.read_bytes() for h in sorted(CSRC.glob("*.h")))).hexdigest()[:16]
    return load(
        name=name,
        sources=[str(CSRC / source)],
        extra_cflags=[*FLAGS, f"-DMICROGPT_HEADERS_{headers}"],
        extra_ldflags=["-fopenmp"],
    )
