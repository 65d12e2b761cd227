"""The same ObjectStore behaviour on local disk and on S3 (moto over HTTP, through the minio SDK)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from microgpt.storage import CHUNK_BYTES, LocalDiskStore, ObjectNotFound, ObjectStore, validate_key


class _Chunks(io.RawIOBase):
    """A source that never offers more than one chunk: proof the store reads incrementally."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data, self.pos, self.fail_after = data, 0, fail_after

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("source went away")
        n = CHUNK_BYTES if n < 0 else min(n, CHUNK_BYTES)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def test_round_trip_hash_list_move_delete(store: ObjectStore) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 123)
    size, sha = store.put_stream("a/b/blob.bin", _Chunks(data))
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join(store.get_stream("a/b/blob.bin", chunk_size=65536)) == data
    assert store.stat("a/b/blob.bin").size == len(data)
    store.put_bytes("a/c.txt", b"hi")
    assert [o.key for o in store.list("a/")] == ["a/b/blob.bin", "a/c.txt"]
    store.move("a/c.txt", "z/c.txt")
    assert not store.exists("a/c.txt") and store.get_bytes("z/c.txt") == b"hi"
    store.delete("a/b/blob.bin")
    store.delete("a/b/blob.bin")  # missing is fine
    with pytest.raises(ObjectNotFound):
        store.get_stream("a/b/blob.bin")
    with pytest.raises(ObjectNotFound):
        store.stat("nope")
    store.check()


def test_declared_size_must_match(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.put_stream("short", io.BytesIO(b"abc"), size=10)
    assert not store.exists("short")


def test_failed_source_stores_nothing(store: ObjectStore) -> None:
    data = os.urandom(12 * CHUNK_BYTES)  # over one S3 part: a multipart upload that must be aborted
    with pytest.raises(ConnectionResetError):
        store.put_stream("broken", _Chunks(data, fail_after=10 * CHUNK_BYTES))
    assert not store.exists("broken")
    assert list(store.list("")) == []


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "..", "a//b", "A/b", "a/.hidden", "a b", "a/b/", "é", "x" * 1100]
)
def test_bad_keys_refused(key: str, tmp_path) -> None:
    with pytest.raises(ValueError):
        validate_key(key)
    with pytest.raises(ValueError):
        LocalDiskStore(tmp_path).put_bytes(key, b"x")


def test_local_partials_are_cleaned(tmp_path) -> None:
    store = LocalDiskStore(tmp_path)
    (tmp_path / ".incoming").mkdir()
    (tmp_path / ".incoming" / "dead").write_bytes(b"half")
    assert list(store.list("")) == []
    assert store.remove_stale_partials(older_than_s=3600) == 0
    assert store.remove_stale_partials(older_than_s=-1) == 1
