"""The registry and an S3 server as local child processes: for `microgpt bench registry` and the tests.

Both are real processes on free ports, reached over HTTP exactly as MinIO and a deployed
registry would be; the context managers stop them (and only them) on exit. moto (the S3
server) is a dev dependency, so only the benchmark's `--store s3` and the tests need it.

    with moto_s3_server() as endpoint:            # "http://127.0.0.1:PORT"
        store = S3Store(endpoint, "bucket", access_key="test", secret_key="test")
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping

from microgpt.processes import child_server, free_port


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
