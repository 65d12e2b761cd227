"""Registry throughput and memory: upload and download one large artifact through the client.

    microgpt bench registry --size-mb 200              # embedded: SQLite + local disk
    microgpt bench registry --size-mb 200 --store s3   # objects in moto's S3 server (a child process)

The registry runs as a child process (uvicorn) with a fresh `MICROGPT_HOME`, so its
peak resident set (VmHWM in /proc/<pid>/status) is the server's alone. Growth is the
peak after the transfers minus the peak after start-up and a warm-up request; the
claim under test is that uploads and downloads stream, so growth stays under 64 MiB
whatever the artifact size. MB/s is 10^6 bytes per second of the upload (PUT of the
file plus finalize; the client hashes the file beforehand) and of the verified download.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from microgpt.digest import file_sha256
from microgpt.registry.client import RegistryClient
from services.registry.local import moto_s3_server, registry_server

RSS_TARGET_BYTES = 64 << 20
BLOCK_BYTES = 16 << 20


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: its peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no VmHWM (not Linux?)")


def make_artifact(path: Path, size_bytes: int) -> None:
    with open(path, "wb") as f:
        left = size_bytes
        while left > 0:
            n = min(BLOCK_BYTES, left)
            f.write(os.urandom(n))
            left -= n


def _measure(url: str, pid: int, artifact: Path, cache: Path) -> dict[str, Any]:
    size = artifact.stat().st_size
    sha = file_sha256(artifact)
    with RegistryClient(url, cache_dir=cache, timeout=600) as client:
        client.create_model("bench")
        warm = client.create_version("bench")  # touches every code path once before the baseline
        client.upload_file(
            "bench", warm.version, "warmup.bin", artifact.parent / "warmup.bin", _warmup(artifact)
        )
        before = peak_rss_bytes(pid)
        start = time.perf_counter()
        version = client.create_version("bench")
        client.upload_file("bench", version.version, "model.bin", artifact, sha)
        info = client.finalize("bench", version.version, {"model.bin": sha})
        up_s = time.perf_counter() - start
        start = time.perf_counter()
        pulled = client.pull(info.ref)
        down_s = time.perf_counter() - start
        after = peak_rss_bytes(pid)
    if file_sha256(pulled / "model.bin") != sha:
        raise ValueError("the pulled artifact differs from the uploaded one")
    return {
        "size_bytes": size,
        "upload_mb_s": size / up_s / 1e6,
        "download_mb_s": size / down_s / 1e6,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": after - before,
    }


def _warmup(artifact: Path) -> str:
    path = artifact.parent / "warmup.bin"
    path.write_bytes(b"warm-up" * 1000)
    return file_sha256(path)


def run(size_mb: int = 200, *, store: str = "disk", workdir: str | None = None) -> dict[str, Any]:
    """Upload and download a `size_mb` MB random artifact; print and return the figures."""
    if size_mb < 1:
        raise ValueError(f"--size-mb must be at least 1, got {size_mb}")
    if store not in ("disk", "s3"):
        raise ValueError(f"store must be 'disk' or 's3', got {store!r}")
    with tempfile.TemporaryDirectory(prefix="microgpt-bench-registry-", dir=workdir) as tmp:
        root = Path(tmp)
        artifact = root / "model.bin"
        make_artifact(artifact, size_mb * 1_000_000)
        env = {
            "MICROGPT_HOME": str(root / "home"),
            "MICROGPT_DATABASE_URL": "",
            "MICROGPT_S3_ENDPOINT": "",
            "MICROGPT_API_KEY": "",
        }
        if store == "s3":
            with moto_s3_server() as endpoint:
                env |= {
                    "MICROGPT_S3_ENDPOINT": endpoint,
                    "MICROGPT_S3_ACCESS_KEY": "bench",
                    "MICROGPT_S3_SECRET_KEY": "bench",
                    "MICROGPT_S3_REGION": "us-east-1",
                }
                with registry_server(env) as (url, process):
                    result = _measure(url, process.pid, artifact, root / "cache")
        else:
            with registry_server(env) as (url, process):
                result = _measure(url, process.pid, artifact, root / "cache")
    verdict = "streamed" if result["rss_growth_bytes"] < RSS_TARGET_BYTES else "NOT streamed"
    print(
        f"registry ({store}): {size_mb} MB artifact, upload {result['upload_mb_s']:.1f} MB/s, "
        f"download {result['download_mb_s']:.1f} MB/s (verified), server peak RSS growth "
        f"{result['rss_growth_bytes'] / 2**20:.1f} MiB (target < {RSS_TARGET_BYTES >> 20} MiB: {verdict})"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--store", choices=["disk", "s3"], default="disk")
    args = parser.parse_args()
    run(args.size_mb, store=args.store)


if __name__ == "__main__":
    main()


def cmd_bench(args: argparse.Namespace) -> None:
    """`microgpt bench registry`: fails (exit 2) when the server's peak RSS grew past the target."""
    result = run(size_mb=args.size_mb, store=args.store)
    if result["rss_growth_bytes"] >= RSS_TARGET_BYTES:
        raise ValueError(
            f"the registry's peak RSS grew {result['rss_growth_bytes'] / 2**20:.0f} MiB: "
            "uploads are not streaming"
        )
