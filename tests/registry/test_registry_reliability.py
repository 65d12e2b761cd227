"""Reliability: concurrent version numbers, restarts, disconnects mid-upload, and gc of orphaned blobs."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from registry_harness import Registry, new_version, ready_version, serve, sha, unique

from microgpt.checkpoint import load_checkpoint
from services.registry.blobs import blob_key


@pytest.mark.parametrize("backend", ["postgres-disk", "sqlite-disk"])
def test_concurrent_version_creation_is_consecutive(backend: str, registry_settings) -> None:
    name = unique("race")
    n = 24
    with serve(registry_settings(backend)) as registry, registry.http() as http:
        http.post("/models", json={"name": name})

        def create(i: int) -> int:
            with httpx.Client(
                base_url=registry.url, timeout=60
            ) as own:  # one connection each: truly parallel
                r = own.post(f"/models/{name}/versions", json={"description": f"racer {i}"})
                assert r.status_code == 201, r.text
                return r.json()["version"]

        with ThreadPoolExecutor(max_workers=n) as pool:
            numbers = list(pool.map(create, range(n)))
        assert sorted(numbers) == list(range(1, n + 1))
        assert http.get(f"/models/{name}").json()["version_count"] == n


@pytest.mark.parametrize("backend", ["postgres-s3", "sqlite-disk"])
def test_restart_loses_nothing(backend: str, registry_settings, checkpoint: Path, tmp_path: Path) -> None:
    settings = registry_settings(backend)
    name = unique("restart")
    with serve(settings) as registry, registry.client() as client:
        pushed = client.push(checkpoint, name, metrics={"val_loss": 2.0})
        client.set_alias(name, "production", pushed.version)
    with serve(settings) as registry, registry.client(cache_dir=tmp_path / "fresh-cache") as client:
        again = client.resolve(f"{name}@production")
        assert again.files == pushed.files and again.metrics == {"val_loss": 2.0}
        assert load_checkpoint(client.pull(f"{name}@production")).preset == "micro"
        assert client.create_version(name).version == 2  # the counter survived too


def _send_partial_upload(registry: Registry, path: str, declared: int, sent: int) -> None:
    """Start a PUT that promises `declared` bytes, send `sent`, then drop the connection."""
    url = urlsplit(registry.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        head = f"PUT {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {declared}\r\n\r\n"
        sock.sendall(head.encode() + b"p" * sent)
        time.sleep(0.3)  # let the server start streaming into the store


def _wait_for(predicate, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_disconnect_mid_upload_then_gc(registry: Registry) -> None:
    name = unique("cut")
    first = b"first file " * 1000
    with registry.http() as http:
        http.post("/models", json={"name": name})
        kept = ready_version(http, name, {"kept.bin": b"a ready version's file"})
        n = new_version(http, name)
        assert http.put(f"/models/{name}/versions/{n}/files/a.bin", content=first).status_code == 201
        route = 'route="/models/{name}/versions/{version}/files/{path}",service="registry",status="400"'

        _send_partial_upload(registry, f"/models/{name}/versions/{n}/files/b.bin", 20 << 20, 6 << 20)
        _wait_for(lambda: route in http.get("/metrics").text)  # the server saw the disconnect

        version = http.get(f"/models/{name}/versions/{n}").json()
        assert version["status"] == "pending" and set(version["files"]) == {"a.bin"}
        assert http.get(f"/models/{name}/versions/latest").json()["version"] == kept  # no new ready version
        assert list(registry.store.list("registry/tmp/")) == []  # the partial write was discarded
        assert registry.store.exists(blob_key(sha(first)))

        report = http.post("/gc").json()  # default grace: nothing is old enough
        assert report["deleted_blobs"] == 0 and report["failed_versions"] == []
        report = http.post("/gc", params={"grace_seconds": 0}).json()
        assert report["failed_versions"] == [f"{name}/{n}"] and report["deleted_blobs"] == 1
        assert report["deleted_bytes"] == len(first)
        assert not registry.store.exists(blob_key(sha(first)))
        assert http.get(f"/models/{name}/versions/{n}").json()["status"] == "failed"
        assert http.get(f"/models/{name}/versions/{kept}/files/kept.bin").content == b"a ready version's file"


def test_gc_removes_blobs_of_deleted_versions_and_temporaries(sqlite_registry: Registry) -> None:
    name = unique("gc")
    store = sqlite_registry.store
    with sqlite_registry.http() as http:
        http.post("/models", json={"name": name})
        shared = b"shared tokenizer"
        v1 = ready_version(http, name, {"tok.json": shared, "w.bin": b"weights one"})
        ready_version(http, name, {"tok.json": shared, "w.bin": b"weights two"})
        store.put_bytes("registry/tmp/leftover", b"crashed upload")
        assert http.delete(f"/models/{name}/versions/{v1}").status_code == 204
        report = http.post("/gc", params={"grace_seconds": 0}).json()
        assert report["deleted_blobs"] == 1 and report["deleted_temp"] == 1 and report["kept_blobs"] == 2
        assert not store.exists(blob_key(sha(b"weights one")))
        assert store.exists(blob_key(sha(shared))) and store.exists(blob_key(sha(b"weights two")))
