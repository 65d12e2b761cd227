"""Receiving artifacts: request body -> temporary object -> content-addressed blob, and finalize.

Routes that upload are plain (sync) functions running in a worker thread; `BodyReader`
is a file object whose `read()` pulls the next chunk of the request body from the event
loop (`anyio.from_thread.run`), so the object store's streaming `put_stream` consumes
the body as it arrives: memory stays at a chunk or an S3 part, whatever the file size.

A version becomes `ready` only in `finalize_version`, after every artifact's sha256
(computed on the way in) equals what the client declared, every blob is in the store
with its size, a `config.json`, if present, agrees with the files it lists, and every
`*.safetensors` header is valid and (for a checkpoint's weights) describes exactly the model
config.json gives, within sane sizes (`microgpt.checkpoint_check`, reading only each blob's
first bytes): a version that could only fail, or exhaust memory, when loaded is refused with
a 400 naming the file and field. A disconnect or crash before that leaves a `pending`
version, which `gc` fails later.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio.from_thread
from fastapi import Request
from starlette.requests import ClientDisconnect

from microgpt.checkpoint_check import CheckpointError, check_checkpoint
from microgpt.storage import ObjectNotFound, ObjectStore
from services.common.errors import ApiError, iter_limited_body
from services.registry.blobs import blob_key, tmp_key
from services.registry.repository import Repository
from services.registry.schemas import FileInfo, VersionPublic, VersionRef, check_artifact_path

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 4 << 20
HEADER_CHUNK_BYTES = 64 << 10  # a checkpoint's safetensors header is a few KB: one chunk mostly


class BodyReader:
    """A blocking file object over a request body, for code running in a worker thread."""

    def __init__(self, request: Request, limit: int, on_bytes: Callable[[int], None]) -> None:
        self._chunks: AsyncIterator[bytes] = iter_limited_body(request, limit)
        self._pending: list[bytes] = []  # received, not yet read; joined only when read (one copy)
        self._pending_bytes = 0
        self._done = False
        self._on_bytes = on_bytes

    async def _next(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or self._pending_bytes < n):
            chunk = anyio.from_thread.run(self._next)
            if chunk is None:
                self._done = True
            else:
                self._on_bytes(len(chunk))
                self._pending.append(chunk)
                self._pending_bytes += len(chunk)
        data = b"".join(self._pending)
        if 0 <= n < len(data):
            data, rest = data[:n], data[n:]
            self._pending, self._pending_bytes = [rest], len(rest)
        else:
            self._pending, self._pending_bytes = [], 0
        return data

    def close(self) -> None:
        anyio.from_thread.run(self._chunks.aclose)  # type: ignore[attr-defined]


def store_blob(
    store: ObjectStore, source: Any, *, size: int | None = None, expected: str | None = None
) -> FileInfo:
    """Stream `source` into the store under its sha256; 400 if it is not `expected`."""
    temporary = tmp_key()
    try:
        got_size, sha = store.put_stream(temporary, source, size=size)
        if expected is not None and sha != expected:
            raise ApiError(
                400, "checksum_mismatch", f"the upload's sha256 is {sha}, not the declared {expected}"
            )
        store.move(temporary, blob_key(sha))  # replaces an identical blob: same bytes, fresh mtime for gc
    finally:
        store.delete(temporary)
    return FileInfo(size=got_size, sha256=sha)


def receive_file(
    request: Request,
    store: ObjectStore,
    repo: Repository,
    version: VersionPublic,
    path: str,
    *,
    limit: int,
    expected: str | None,
    on_bytes: Callable[[int], None],
) -> FileInfo:
    """Stream one artifact of a pending version into the store and record it."""
    reader = BodyReader(request, limit, on_bytes)
    try:
        info = store_blob(store, reader, expected=expected)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
    finally:
        reader.close()
    repo.record_artifact(version.name, version.version, path, info.size, info.sha256)
    return info


def tar_member_path(member: tarfile.TarInfo) -> str | None:
    """The artifact path of a safe tar member, None for a directory entry; 400 for anything unsafe."""
    name = member.name
    if name.startswith("/") or "\\" in name:
        raise ApiError(400, "unsafe_tar_member", f"tar member {name!r} has an absolute or Windows path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ApiError(400, "unsafe_tar_member", f"tar member {name!r} climbs out with '..'")
    if member.isdir():
        return None
    if not member.isreg():
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise ApiError(
            400, "unsafe_tar_member", f"tar member {name!r} is a {kind}; only regular files are accepted"
        )
    path = "/".join(parts)
    try:
        return check_artifact_path(path)
    except ValueError as e:
        raise ApiError(400, "bad_artifact_path", str(e)) from None


def receive_tar(
    request: Request,
    store: ObjectStore,
    repo: Repository,
    version: VersionPublic,
    *,
    limit: int,
    on_bytes: Callable[[int], None],
) -> dict[str, FileInfo]:
    """Stream every regular file of a (possibly compressed) tar body into the store."""
    reader = BodyReader(request, limit, on_bytes)
    received: dict[str, FileInfo] = {}
    try:
        with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
            for member in tar:
                path = tar_member_path(member)
                if path is None:
                    continue
                if path in received:
                    raise ApiError(400, "duplicate_tar_member", f"tar member {path!r} appears twice")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has one
                received[path] = store_blob(store, source, size=member.size)
                repo.record_artifact(version.name, version.version, path, **received[path].model_dump())
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
    except tarfile.TarError as e:
        raise ApiError(400, "bad_tar", f"the body is not a readable tar stream: {e}") from None
    finally:
        reader.close()
    if not received:
        raise ApiError(400, "bad_tar", "the tar stream holds no files")
    return received


def read_checkpoint_config(store: ObjectStore, files: dict[str, FileInfo]) -> dict[str, Any] | None:
    """The parsed config.json among `files`, or None if there is none."""
    info = files.get(CONFIG_FILE)
    if info is None:
        return None
    if info.size > MAX_CONFIG_BYTES:
        raise ApiError(400, "bad_checkpoint", f"{CONFIG_FILE} is {info.size} bytes, over {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(store.get_bytes(blob_key(info.sha256)))
    except ObjectNotFound:
        raise ApiError(
            400, "blob_missing", f"{CONFIG_FILE} is not in the object store; upload it again"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "bad_checkpoint", f"{CONFIG_FILE} is not valid JSON: {e}") from None
    return config if isinstance(config, dict) else None


class _ChunkReader:
    """`read(n)` over a blob's chunk stream, for the header checks: reads only what they ask for."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, n: int, /) -> bytes:
        parts, have = [self._buffer], len(self._buffer)
        while have < n and (chunk := next(self._chunks, b"")):
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        data, self._buffer = data[:n], data[n:]
        return data


def check_blobs_load(
    store: ObjectStore, files: dict[str, FileInfo], config: dict[str, Any] | None, label: str
) -> None:
    """400 `bad_checkpoint` unless every safetensors file would load (see the module docstring)."""

    @contextlib.contextmanager
    def open_blob(path: str) -> Iterator[_ChunkReader]:
        try:
            chunks = store.get_stream(blob_key(files[path].sha256), chunk_size=HEADER_CHUNK_BYTES)
        except ObjectNotFound:
            raise ApiError(
                400, "blob_missing", f"{path} is not in the object store; upload it again"
            ) from None
        try:
            yield _ChunkReader(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()  # stop the download: the rest is not needed

    try:
        check_checkpoint(config, {path: info.size for path, info in files.items()}, open_blob, label)
    except CheckpointError as e:
        raise ApiError(400, "bad_checkpoint", str(e)) from None


def finalize_version(
    store: ObjectStore, repo: Repository, version: VersionPublic, expected: dict[str, str]
) -> VersionPublic:
    """Check everything, then mark the version ready (see the module docstring)."""
    current = repo.get_version(VersionRef(name=version.name, version=version.version))
    if current.status != "pending":
        raise ApiError(
            409, "version_not_pending", f"{version.name}/{version.version} is already {current.status}"
        )
    fill: dict[str, Any] = {}
    config = read_checkpoint_config(store, current.files)
    if config is not None:
        listed = config.get("files")
        if isinstance(listed, dict):
            wrong = {
                name: digest
                for name, digest in listed.items()
                if name not in current.files or current.files[name].sha256 != digest
            }
            if wrong:
                raise ApiError(
                    400,
                    "checkpoint_inconsistent",
                    f"{CONFIG_FILE} lists files that are missing or differ: {', '.join(sorted(wrong))}",
                )
        model = config.get("model")
        fill = {"preset": config.get("preset"), "gpt_config": model if isinstance(model, dict) else None}
    check_blobs_load(store, current.files, config, f"{version.name}/{version.version}")

    def check_blob(sha256: str, size: int) -> None:
        try:
            stored = store.stat(blob_key(sha256)).size
        except ObjectNotFound:
            raise ApiError(
                400, "blob_missing", f"blob {sha256} is not in the object store; upload again"
            ) from None
        if stored != size:
            raise ApiError(400, "blob_corrupt", f"blob {sha256} has {stored} bytes, not {size}; upload again")

    return repo.finalize(version.name, version.version, expected, check_blob, fill)


def tar_manifest(store: ObjectStore, files: dict[str, FileInfo]) -> dict[str, str]:
    """What a tar upload must contain: config.json plus exactly the files it lists, by sha256."""
    config = read_checkpoint_config(store, files)
    if config is None or not isinstance(config.get("files"), dict):
        raise ApiError(
            400, "bad_checkpoint", f"a tar upload must hold a checkpoint's {CONFIG_FILE} listing its files"
        )
    unlisted = sorted(set(files) - set(config["files"]) - {CONFIG_FILE})
    if unlisted:
        raise ApiError(
            400, "unverifiable_files", f"not listed in {CONFIG_FILE}, so unverifiable: {', '.join(unlisted)}"
        )
    return {CONFIG_FILE: files[CONFIG_FILE].sha256, **{str(k): str(v) for k, v in config["files"].items()}}
