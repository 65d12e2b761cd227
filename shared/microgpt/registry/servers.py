"""Local servers the registry benchmark and tests start as child processes: moto's S3, and the registry.

Both are real processes on free ports, reached over HTTP exactly as MinIO and a
deployed registry would be; the context managers stop them (and only them) on exit.

    with moto_s3_server() as endpoint:            # "http://127.0.0.1:PORT"
        store = S3Store(endpoint, "bucket", access_key="test", secret_key="test")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Poll `url` until it answers below 500; fail early if `process` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with code {process.returncode} while starting")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def child_server(
    args: list[str], probe_url: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `args` as a child process until the block ends; ready once `probe_url` answers."""
    process = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(probe_url, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto's standalone S3 server on a free port; yields its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with child_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], url + "/"):
        yield url


@contextlib.contextmanager
def registry_server(env: Mapping[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The registry service under uvicorn on a free port, configured by `MICROGPT_*` variables in `env`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable, "-m", "uvicorn", "services.registry.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with child_server(args, url + "/healthz", env) as process:
        yield url, process
