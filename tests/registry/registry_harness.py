"""The registry test harness: a live server per test, and small HTTP helpers the test modules share."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from microgpt.processes import free_port
from microgpt.registry.client import RegistryClient
from microgpt.settings import Settings
from microgpt.storage import ObjectStore
from services.registry.app import create_app

BACKENDS = ["sqlite-disk", "postgres-s3"]
ALL_BACKENDS = ["sqlite-disk", "sqlite-s3", "postgres-disk", "postgres-s3"]


@dataclass
class Registry:
    url: str
    settings: Settings
    app: Any

    def client(self, cache_dir: Path | None = None, **kwargs: Any) -> RegistryClient:
        return RegistryClient(self.url, cache_dir=cache_dir or self.settings.cache, **kwargs)

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    @property
    def store(self) -> ObjectStore:
        return self.app.state.store


@contextmanager
def serve(settings: Settings) -> Iterator[Registry]:
    """The registry app for `settings` under uvicorn on a free port, until the block ends."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the registry server did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield Registry(f"http://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_of(response: httpx.Response) -> str:
    """The `error` code of a JSON error body, checking the body has exactly the two keys."""
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    return body["error"]


def new_version(http: httpx.Client, name: str, **body: object) -> int:
    r = http.post(f"/models/{name}/versions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["version"]


def ready_version(http: httpx.Client, name: str, files: dict[str, bytes], **body: object) -> int:
    number = new_version(http, name, **body)
    for path, data in files.items():
        r = http.put(f"/models/{name}/versions/{number}/files/{path}", content=data)
        assert r.status_code == 201, r.text
    manifest = {p: sha(d) for p, d in files.items()}
    r = http.post(f"/models/{name}/versions/{number}/finalize", json={"files": manifest})
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    return number
