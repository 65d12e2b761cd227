"""`microgpt serve inference` as a newcomer starts it: never silent, ready only when it can answer fast.

The service runs as a real process from the CLI. A first kernel build is simulated without
compiling anything: the already-built native kernel is copied into a private extensions
directory whose build lock is held, as torch holds it while another process compiles. Until
the lock goes, `/readyz` must say the kernel is being built; the model load must be logged
at INFO (ref, precision, seconds); uvicorn must close a WebSocket frame over REST's 1 MiB
body limit (code 1009).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from microgpt.cpp import build_all, build_directory
from microgpt.processes import free_port

NATIVE = "microgpt_native_decode"


def readiness(base: str, timeout_s: float, want: int) -> httpx.Response:
    """The first `/readyz` answer with status `want` (the process may still be importing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/readyz", timeout=5)
            if response.status_code == want:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base}/readyz did not answer {want} within {timeout_s} s")


def test_ready_only_once_kernels_are_built_and_model_loads_are_logged(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    build_all([NATIVE])  # built once per machine (the kernel's own tests need it too)
    extensions = tmp_path / "torch_extensions"
    built = build_directory(NATIVE)
    private = extensions / built.name
    shutil.copytree(built, private)
    lock = private / "lock"
    lock.touch()  # "another process is compiling": torch waits for the lock to go
    port = free_port()
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": str(extensions),
        "MICROGPT_HOME": str(tmp_path / "home"),
        "MICROGPT_INFERENCE_MODELS": f"tiny={tiny_checkpoint}",
        "MICROGPT_INFERENCE_BACKEND": "native",
        "MICROGPT_INFERENCE_POLL_SECONDS": "0",
        "MICROGPT_API_KEY": "",
    }
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "microgpt", "serve", "inference", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        building = readiness(base, 90, want=503)
        time.sleep(1)  # however long the build takes, the service is not ready before it ends
        building = readiness(base, 10, want=503)
        assert "native decode kernel" in building.json()["detail"]
        lock.unlink()
        ready = readiness(base, 90, want=200)
        assert ready.json()["models"] == ["tiny:fp32"]

        with connect(f"ws://127.0.0.1:{port}/ws/chat") as ws:
            ws.send("x" * ((1 << 20) + 1))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        lock.unlink(missing_ok=True)
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    text = log.read_text()
    assert "loaded tiny (version None) at fp32 in" in text, text[-2000:]
