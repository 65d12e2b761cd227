"""Object storage behind one interface: local disk (the embedded default) or S3/MinIO via the minio SDK.

Keys are slash-separated segments of `[a-z0-9._-]` (no empty, `.`/`..` or dot-leading
segment, no leading `/`), checked by `validate_key` on every call, so no key can
escape the store's root or collide with its bookkeeping files. Callers derive keys from
ids and digests they validated, never from raw user strings.

Everything streams: `put_stream` reads its source in chunks while hashing it (it
returns the size and sha256 of what was stored), `get_stream` yields chunks. A write is
all or nothing: the local store writes to `.incoming/` and renames into place; the S3
store uploads in parts and aborts the multipart upload on error.

    store = object_store_from_settings(get_settings())
    size, sha = store.put_file("datasets/abc/train.bin", Path("train.bin"))
    for chunk in store.get_stream("datasets/abc/train.bin"): ...
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from microgpt.atomic import fsync_dir

if TYPE_CHECKING:
    from urllib3 import BaseHTTPResponse

    from microgpt.settings import Settings

CHUNK_BYTES = 1 << 20
S3_PART_BYTES = 5 << 20  # minio's minimum; one part (plus minio's copy of it) is in memory at a time
MAX_KEY_LENGTH = 1024
_SEGMENT = re.compile(r"[a-z0-9_-][a-z0-9._-]*")
_INCOMING = ".incoming"  # local store's partial writes; no valid key can name it


class ObjectNotFound(FileNotFoundError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime  # timezone-aware UTC


def validate_key(key: str) -> str:
    """Return `key` if it is a safe object key, else raise ValueError naming the problem."""
    if not isinstance(key, str) or not key:
        raise ValueError("an object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key is {len(key)} characters, over the limit of {MAX_KEY_LENGTH}")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} must not start with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"object key {key!r} has the segment {segment!r}; segments are [a-z0-9._-], "
                f"not empty, '.' or '..', and do not start with '.'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key optionally ending in '/'."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class Readable(Protocol):
    """What `put_stream` needs of its source: only `read`, so a wrapper or a spooled file will do."""

    def read(self, n: int = -1, /) -> bytes: ...


class _HashingReader:
    """Wraps a binary file object; counts and sha256-hashes what is read through it."""

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.size = 0
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.size += len(data)
        self.sha.update(data)
        return data


class ObjectStore(ABC):
    """Blobs by key. Implementations validate every key and stream every byte."""

    @abstractmethod
    def put_stream(self, key: str, fileobj: Readable, size: int | None = None) -> tuple[int, str]:
        """Store everything `fileobj.read()` yields under `key` (replacing it); return (size, sha256 hex).

        With `size` given, a source that ends early or runs long is an error and nothing is stored.
        """

    def put_file(self, key: str, path: str | os.PathLike[str]) -> tuple[int, str]:
        with open(path, "rb") as f:
            return self.put_stream(key, f, size=os.fstat(f.fileno()).st_size)

    def put_bytes(self, key: str, data: bytes) -> tuple[int, str]:
        import io

        return self.put_stream(key, io.BytesIO(data), size=len(data))

    @abstractmethod
    def get_stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The object's bytes in chunks; ObjectNotFound (raised at once, not on iteration) if missing."""

    def open(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        return self.get_stream(key, chunk_size)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.get_stream(key))

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time; ObjectNotFound if missing."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`."""

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst`, replacing `dst`; the new `dst` has a fresh modification time."""

    @abstractmethod
    def check(self) -> None:
        """Raise OSError unless the store is reachable and writable (for readiness probes)."""

    def remove_stale_partials(self, older_than_s: float) -> int:
        """Delete writes a crash left half-done, older than `older_than_s`; return how many."""
        return 0


class LocalDiskStore(ObjectStore):
    """Objects as files under `root`; writes go to `root/.incoming/` and are renamed into place."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalDiskStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put_stream(self, key: str, fileobj: Readable, size: int | None = None) -> tuple[int, str]:
        target = self._path(key)
        incoming = self.root / _INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        tmp = incoming / f"{secrets.token_hex(8)}"
        reader = _HashingReader(fileobj)
        try:
            with open(tmp, "xb") as out:
                while chunk := reader.read(CHUNK_BYTES):
                    out.write(chunk)
                    if size is not None and reader.size > size:
                        raise ValueError(f"{key}: the source is longer than the declared {size} bytes")
                out.flush()
                os.fsync(out.fileno())
            if size is not None and reader.size != size:
                raise ValueError(f"{key}: the source ended after {reader.size} of {size} bytes")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return reader.size, reader.sha.hexdigest()

    def get_stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self}") from None
        return _read_chunks(f, chunk_size)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self}") from None
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in {self}")
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
        for parent in path.parents:  # drop empty directories up to the root
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """In key order, like S3."""
        validate_prefix(prefix)
        base = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not base.is_dir():
            return
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not name.startswith(".") and key.startswith(prefix):
                    found.append((key, path))
        for key, path in sorted(found):
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                st = path.stat()
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def move(self, src: str, dst: str) -> None:
        src_path, dst_path = self._path(src), self._path(dst)
        if not src_path.is_file():
            raise ObjectNotFound(f"no object {src!r} in {self}")
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src_path, dst_path)
        os.utime(dst_path)  # a fresh mtime: the garbage collector's grace period starts now
        fsync_dir(dst_path.parent)
        self.delete(src)  # prunes the empty directories src leaves

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root} is not writable")

    def remove_stale_partials(self, older_than_s: float) -> int:
        incoming = self.root / _INCOMING
        if not incoming.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for path in incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def _read_chunks(f: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with f:
        while chunk := f.read(chunk_size):
            yield chunk


class S3Store(ObjectStore):
    """Objects in one bucket of an S3-compatible server (MinIO, AWS, moto), through the minio SDK."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        secure: bool | None = None,
    ) -> None:
        from minio import Minio

        if endpoint.startswith(("http://", "https://")):
            scheme, _, endpoint = endpoint.partition("://")
            secure = scheme == "https" if secure is None else secure
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.client = Minio(
            self.endpoint, access_key=access_key, secret_key=secret_key, region=region, secure=bool(secure)
        )
        self._bucket_ready = False

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r}, bucket={self.bucket!r})"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (once per store object)."""
        if self._bucket_ready:
            return
        from minio.error import S3Error

        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise OSError(f"{self}: cannot create the bucket: {e}") from e
        self._bucket_ready = True

    def _not_found(self, e: Exception, key: str) -> bool:
        return getattr(e, "code", None) in ("NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket")

    def put_stream(self, key: str, fileobj: Readable, size: int | None = None) -> tuple[int, str]:
        validate_key(key)
        self.ensure_bucket()
        reader = _HashingReader(fileobj)
        try:
            self.client.put_object(
                self.bucket,
                key,
                reader,  # type: ignore[arg-type]  # minio annotates BinaryIO but only calls read()
                length=-1 if size is None else size,
                part_size=S3_PART_BYTES,
            )
        except OSError:
            if size is not None and reader.size < size:
                raise ValueError(f"{key}: the source ended after {reader.size} of {size} bytes") from None
            raise
        if size is not None and reader.read(1):  # minio stops at `size`; anything left is an error
            self.delete(key)
            raise ValueError(f"{key}: the source is longer than the declared {size} bytes")
        return reader.size, reader.sha.hexdigest()

    def get_stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        from minio.error import S3Error

        validate_key(key)
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as e:
            if self._not_found(e, key):
                raise ObjectNotFound(f"no object {key!r} in {self}") from None
            raise OSError(f"{self}: cannot read {key!r}: {e}") from e
        return _stream_response(response, chunk_size)

    def stat(self, key: str) -> ObjectInfo:
        from minio.error import S3Error

        validate_key(key)
        try:
            st = self.client.stat_object(self.bucket, key)
        except S3Error as e:
            if self._not_found(e, key):
                raise ObjectNotFound(f"no object {key!r} in {self}") from None
            raise OSError(f"{self}: cannot stat {key!r}: {e}") from e
        modified = st.last_modified or datetime.now(UTC)
        return ObjectInfo(key, int(st.size or 0), modified.astimezone(UTC))

    def delete(self, key: str) -> None:
        validate_key(key)
        self.client.remove_object(self.bucket, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from minio.error import S3Error

        validate_prefix(prefix)
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                modified = (obj.last_modified or datetime.now(UTC)).astimezone(UTC)
                yield ObjectInfo(obj.object_name, int(obj.size or 0), modified)
        except S3Error as e:
            if e.code == "NoSuchBucket":
                return
            raise

    def move(self, src: str, dst: str) -> None:
        from minio.commonconfig import ComposeSource, CopySource

        info = self.stat(src)
        validate_key(dst)
        if info.size <= 5 << 30:  # a single server-side copy handles up to 5 GiB
            self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))
        else:
            self.client.compose_object(self.bucket, dst, [ComposeSource(self.bucket, src)])
        self.client.remove_object(self.bucket, src)

    def check(self) -> None:
        try:
            self.ensure_bucket()
            if not self.client.bucket_exists(self.bucket):
                raise OSError(f"{self}: the bucket does not exist")
        except OSError:
            raise
        except Exception as e:  # urllib3 and minio errors
            raise OSError(f"{self} is not reachable: {e}") from e


def _stream_response(response: BaseHTTPResponse, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from response.stream(chunk_size)
    finally:
        response.close()
        response.release_conn()


def object_store_from_settings(settings: Settings) -> ObjectStore:
    """S3 when `s3_endpoint` is set, else local disk under `settings.artifacts_dir()`."""
    if not settings.s3_endpoint:
        return LocalDiskStore(settings.artifacts_dir())
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    return S3Store(
        settings.s3_endpoint,
        settings.s3_bucket,
        access_key=access,
        secret_key=secret,
        region=settings.s3_region,
    )
