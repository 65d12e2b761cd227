"""Built-in data sets: the download cache seeded from ../shared/data (this machine has no internet),
checksums verified on every use, truncated and corrupted copies refused, `local_path` instead of a
download, and the download itself through httpx against a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from microgpt.data.builtin import DATASETS, cached_path, fetch
from microgpt.data.manifest import read_manifest
from microgpt.data.prepare import prepare_dataset
from microgpt.tokenizers import load_tokenizer

FILES = {"names-32k": "names.txt", "shakespeare": "tinyshakespeare.txt"}


def pinned(shared_data: Path) -> dict[str, str]:
    lines = (shared_data / "SHA256SUMS").read_text().split("\n")
    return {name: sha for sha, name in (line.split() for line in lines if line.strip())}


@pytest.fixture
def cache(tmp_path: Path, shared_data: Path) -> Path:
    """A cache directory seeded as a download would leave it."""
    cache = tmp_path / "cache"
    for name, filename in FILES.items():
        target = cached_path(name, cache)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / filename, target)
    return cache


def test_pinned_checksums_match_the_shared_sums_file(shared_data: Path) -> None:
    sums = pinned(shared_data)
    for name, filename in FILES.items():
        assert DATASETS[name].sha256 == sums[filename]
        assert DATASETS[name].size == (shared_data / filename).stat().st_size


@pytest.mark.parametrize("name", ["names-32k", "shakespeare"])
def test_prepare_verifies_the_cached_file_and_writes_shards(cache: Path, name: str) -> None:
    out, manifest = prepare_dataset(name, cache_dir=cache)
    assert out == cache / "prepared" / f"{name}-{DATASETS[name].mode}-char"
    assert manifest.source_sha256 == DATASETS[name].sha256
    assert manifest.mode == DATASETS[name].mode and manifest.dtype == "uint16"
    assert read_manifest(out) == manifest
    assert (out / "train_000000.bin").stat().st_size == 2 * manifest.train.tokens
    tok = load_tokenizer(out / "tokenizer.json")
    if name == "names-32k":
        assert manifest.source_documents == 32_033 and tok.vocab_size == 27
        assert manifest.train.documents + manifest.val.documents == 32_033
        assert manifest.tokens == 32_033 * 2 + sum(
            len(line) for line in cached_path(name, cache).read_text().split()
        )
    else:
        assert manifest.source_documents == 1 and tok.vocab_size == 66  # 65 characters + BOS
        assert manifest.tokens == 1_115_394
        assert 0.05 < manifest.val.tokens / manifest.tokens < 0.15
        first = np.fromfile(out / "train_000000.bin", dtype="<u2", count=200)
        text = tok.decode(first.tolist())
        assert text in cached_path(name, cache).read_text()


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_cached_file_is_refused_with_both_hashes_and_the_remedy(cache: Path, damage: str) -> None:
    path = cached_path("shakespeare", cache)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:1000]
    else:
        data[500] ^= 0x20  # one flipped bit, same size
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ValueError) as error:
        prepare_dataset("shakespeare", cache_dir=cache)
    message = str(error.value)
    assert str(path) in message and damage in message
    assert actual in message and DATASETS["shakespeare"].sha256 in message
    assert "delete it to download it again" in message and "--local-path" in message
    assert not (cache / "prepared").exists()


def test_local_path_is_verified_then_copied_into_the_cache(tmp_path: Path, shared_data: Path) -> None:
    cache = tmp_path / "cache"
    path = fetch("names-32k", cache, local_path=shared_data / "names.txt")
    assert path == cached_path("names-32k", cache)
    assert path.read_bytes() == (shared_data / "names.txt").read_bytes()
    assert fetch("names-32k", cache) == path  # reused afterwards, no network needed


def test_a_wrong_local_path_is_refused_and_nothing_is_cached(tmp_path: Path, shared_data: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"not names-32k's pinned file.*expected 0a30b555"):
        fetch("names-32k", cache, local_path=shared_data / "tinyshakespeare.txt")
    assert not cached_path("names-32k", cache).exists()
    with pytest.raises(ValueError, match="is not a file"):
        fetch("names-32k", cache, local_path=tmp_path / "missing.txt")


def test_local_path_is_only_for_downloadable_data_sets(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ValueError, match="nothing to download"):
        prepare_dataset("names", cache_dir=tmp_path, local_path=shared_data / "names.txt")


def test_names_prepares_with_an_empty_cache_and_no_network(tmp_path: Path) -> None:
    out, manifest = prepare_dataset("names", cache_dir=tmp_path / "cache")
    assert manifest.mode == "documents" and manifest.source_documents > 5000
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["prepared"]  # nothing downloaded


# --- the download path, against a real HTTP server on loopback -------------------------


@pytest.fixture
def server(shared_data: Path) -> Iterator[str]:
    """Serves /names.txt (the real file), /wrong.txt (other bytes) and 404 for anything else."""
    files = {"/names.txt": (shared_data / "names.txt").read_bytes(), "/wrong.txt": b"not names\n" * 100}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_streams_verifies_and_renames_into_the_cache(tmp_path: Path, server: str) -> None:
    cache = tmp_path / "cache"
    path = fetch("names-32k", cache, url=f"{server}/names.txt")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DATASETS["names-32k"].sha256
    assert [p.name for p in path.parent.iterdir()] == ["names.txt"]  # no temporary file left


def test_a_download_with_the_wrong_checksum_is_not_cached(tmp_path: Path, server: str) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="does not match its pinned checksum.*nothing was cached"):
        fetch("names-32k", cache, url=f"{server}/wrong.txt")
    assert list(cached_path("names-32k", cache).parent.iterdir()) == []


def test_download_failures_say_how_to_work_offline(tmp_path: Path, server: str) -> None:
    with pytest.raises(ValueError, match=r"HTTP 404.*--local-path"):
        fetch("names-32k", tmp_path, url=f"{server}/missing.txt")
    with socket.socket() as s:  # a port nothing listens on: bound, never listened to
        s.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match=r"could not download names-32k.*--local-path"):
            fetch("names-32k", tmp_path, url=f"http://127.0.0.1:{s.getsockname()[1]}/names.txt", timeout=5)
    assert list(cached_path("names-32k", tmp_path).parent.iterdir()) == []


def test_pystdlib_prepares_offline_into_a_multi_megabyte_stream(tmp_path: Path) -> None:
    out, manifest = prepare_dataset("pystdlib", cache_dir=tmp_path)
    assert manifest.mode == "stream" and manifest.source_documents > 500  # one document per file
    assert manifest.tokens > 5_000_000
    assert prepare_dataset("pystdlib", cache_dir=tmp_path)[1].reused
