"""`RegistryClient`: the registry's HTTP API as Python calls, streaming both ways.

Uploads stream each file from disk in 1 MiB chunks with its size and sha256 declared
up front (the server refuses a mismatch); downloads stream to disk while hashing, and
a file whose sha256 differs from the registry's record is an error, never a pulled
checkpoint. Pulled versions are cached under `cache_dir/registry/<sha256 of the file
manifest>/`, so a second pull of the same content (under any ref) is free, and
written atomically, so a failed pull leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from microgpt.atomic import atomic_directory
from microgpt.digest import file_sha256

if TYPE_CHECKING:
    from microgpt.settings import Settings

CHUNK_BYTES = 1 << 20
CHECKSUM_HEADER = "X-Checksum-Sha256"


class RegistryError(ValueError):
    """The registry refused a request; `status`, `error` and `detail` are its JSON error."""

    def __init__(self, status: int, error: str, detail: Any) -> None:
        message = detail.get("message", detail) if isinstance(detail, dict) else detail
        super().__init__(f"registry: {error} ({status}): {message}")
        self.status, self.error, self.detail = status, error, detail


class FileEntry(BaseModel):
    size: int
    sha256: str


class VersionInfo(BaseModel):
    """One model version as the registry describes it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: int
    status: str
    files: dict[str, FileEntry]
    metrics: dict[str, float] = {}
    lineage: dict[str, Any] = {}
    preset: str | None = None
    aliases: list[str] = []
    created_at: datetime
    created_by: str | None = None
    description: str = ""
    tags: list[str] = []
    gpt_config: dict[str, Any] | None = None
    tokenizer_kind: str | None = None
    extra: dict[str, Any] = {}

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def content_hash(self) -> str:
        """sha256 of the sorted {path: sha256} manifest: equal for versions with identical files."""
        manifest = json.dumps({p: f.sha256 for p, f in sorted(self.files.items())}, separators=(",", ":"))
        return hashlib.sha256(manifest.encode()).hexdigest()


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def checkpoint_files(root: Path) -> dict[str, Path]:
    """Every regular file under `root` by relative POSIX path; hidden files and links are skipped."""
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.is_file() and not path.is_symlink():
                files[path.relative_to(root).as_posix()] = path
    if not files:
        raise ValueError(f"{root} holds no files to push")
    return files


def _checkpoint_metadata(root: Path) -> dict[str, Any]:
    """Preset, model config and tokenizer kind from a microgpt checkpoint's JSON files, when present."""
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict):
            meta["preset"] = config.get("preset")
            meta["gpt_config"] = config.get("model") if isinstance(config.get("model"), dict) else None
    with contextlib.suppress(OSError, ValueError):
        tokenizer = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
        if isinstance(tokenizer, dict):
            kind = tokenizer.get("kind") or (tokenizer.get("model") or {}).get("type")
            meta["tokenizer_kind"] = str(kind).lower() if kind else None
    return {k: v for k, v in meta.items() if v is not None}


class RegistryClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "microgpt"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RegistryClient:
        """The registry at `settings.registry_url`, with the first of `settings.api_key`'s keys."""
        return cls(
            settings.registry_url, api_key=settings.client_api_key(), cache_dir=settings.cache, **kwargs
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _send(self, method: str, url: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            request = self._http.build_request(method, url, **kwargs)
            response = self._http.send(request, stream=stream)
        except httpx.TransportError as e:
            raise ConnectionError(f"registry at {self.base_url} is not reachable: {e}") from e
        if response.status_code >= 400:
            response.read()
            try:
                body = response.json()
                error, detail = body.get("error", "error"), body.get("detail")
            except ValueError:
                error, detail = "error", response.text[:300]
            response.close()
            raise RegistryError(response.status_code, error, detail)
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self._send(method, url, **kwargs)
        return None if response.status_code == 204 else response.json()

    @staticmethod
    def _version_path(name: str, version: int | str) -> str:
        return f"/models/{quote(name)}/versions/{quote(str(version))}"

    # --- models and versions ----------------------------------------------------------

    def create_model(
        self, name: str, *, description: str = "", tags: list[str] | None = None
    ) -> dict[str, Any]:
        return self._json(
            "POST", "/models", json={"name": name, "description": description, "tags": tags or []}
        )

    def ensure_model(self, name: str) -> None:
        """Create the model unless it exists (a concurrent creator winning the race is fine)."""
        try:
            self.create_model(name)
        except RegistryError as e:
            if e.status != 409:
                raise

    def get_model(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/models/{quote(name)}")

    def list_models(
        self, *, prefix: str | None = None, tag: list[str] | None = None, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "offset": offset, "tag": tag or []}
        if prefix:
            params["prefix"] = prefix
        return self._json("GET", "/models", params=params)["data"]

    def list_versions(
        self,
        name: str,
        *,
        status: str | None = None,
        tag: list[str] | None = None,
        alias: str | None = None,
        metric: list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[VersionInfo]:
        params: dict[str, Any] = {"limit": limit, "offset": offset, "tag": tag or [], "metric": metric or []}
        if status:
            params["status"] = status
        if alias:
            params["alias"] = alias
        data = self._json("GET", f"/models/{quote(name)}/versions", params=params)["data"]
        return [VersionInfo.model_validate(v) for v in data]

    def resolve(self, ref: str) -> VersionInfo:
        """`name` (newest ready), `name/3` or `name@alias`."""
        return VersionInfo.model_validate(self._json("GET", "/resolve", params={"ref": ref}))

    def create_version(self, name: str, **metadata: Any) -> VersionInfo:
        return VersionInfo.model_validate(
            self._json("POST", f"/models/{quote(name)}/versions", json=metadata)
        )

    def upload_file(self, name: str, version: int, path: str, local: Path, sha256: str) -> FileEntry:
        size = local.stat().st_size
        response = self._json(
            "PUT",
            f"{self._version_path(name, version)}/files/{quote(path)}",
            content=_read_chunks(local),
            headers={
                "Content-Length": str(size),
                CHECKSUM_HEADER: sha256,
                "Content-Type": "application/octet-stream",
            },
        )
        return FileEntry.model_validate(response)

    def finalize(self, name: str, version: int, files: Mapping[str, str]) -> VersionInfo:
        body = {"files": dict(files)}
        return VersionInfo.model_validate(
            self._json("POST", f"{self._version_path(name, version)}/finalize", json=body)
        )

    def push(
        self,
        checkpoint_dir: str | os.PathLike[str],
        name: str,
        *,
        metrics: Mapping[str, float] | None = None,
        lineage: Mapping[str, Any] | None = None,
        preset: str | None = None,
        description: str | None = None,
        tags: list[str] | None = None,
        created_by: str | None = None,
        extra: Mapping[str, Any] | None = None,
        alias: str | None = None,
    ) -> VersionInfo:
        """Upload a checkpoint directory as a new ready version of `name` (created if missing).

        The model's preset, config and tokenizer kind are read from config.json and
        tokenizer.json when present. On failure the version stays pending; `gc` cleans up.
        """
        root = Path(checkpoint_dir)
        files = checkpoint_files(root)
        digests = {path: file_sha256(local) for path, local in files.items()}
        metadata: dict[str, Any] = {
            **_checkpoint_metadata(root),
            "metrics": dict(metrics or {}),
            "lineage": dict(lineage or {}),
            "tags": list(tags or []),
            "extra": dict(extra or {}),
            "created_by": created_by,
            "description": description or "",
        }
        if preset is not None:
            metadata["preset"] = preset
        self.ensure_model(name)
        version = self.create_version(name, **metadata)
        for path, local in files.items():
            self.upload_file(name, version.version, path, local, digests[path])
        info = self.finalize(name, version.version, digests)
        if alias:
            self.set_alias(name, alias, info.version)
            info = self.resolve(info.ref)
        return info

    def update_version(self, ref: str, **fields: Any) -> VersionInfo:
        info = self.resolve(ref)
        return VersionInfo.model_validate(
            self._json("PATCH", self._version_path(info.name, info.version), json=fields)
        )

    def delete_version(self, name: str, version: int | str, *, force: bool = False) -> None:
        self._json("DELETE", self._version_path(name, version), params={"force": str(force).lower()})

    def set_alias(self, name: str, alias: str, version: int | str) -> dict[str, Any]:
        """Point `name@alias` at `version` (a number, another alias or `latest`)."""
        target: int | str = int(version) if isinstance(version, str) and version.isdigit() else version
        return self._json("PUT", f"/models/{quote(name)}/aliases/{quote(alias)}", json={"version": target})

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/models/{quote(name)}/aliases/{quote(alias)}/history")["data"]

    def gc(self, *, grace_seconds: float = 3600) -> dict[str, Any]:
        return self._json("POST", "/gc", params={"grace_seconds": grace_seconds})

    # --- downloads --------------------------------------------------------------------

    def download_file(self, info: VersionInfo, path: str, dest: Path) -> None:
        """Stream one file of `info` to `dest`; OSError-free only if its sha256 and size match the record."""
        expected = info.files[path]
        url = f"{self._version_path(info.name, info.version)}/files/{quote(path)}"
        h = hashlib.sha256()
        size = 0
        response = self._send("GET", url, stream=True)
        try:
            header = response.headers.get(CHECKSUM_HEADER)
            with open(dest, "xb") as out:
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except httpx.TransportError as e:
            raise ConnectionError(f"download of {info.ref}:{path} broke off: {e}") from e
        finally:
            response.close()
        got = h.hexdigest()
        if got != expected.sha256 or size != expected.size or (header and header != expected.sha256):
            raise ValueError(
                f"{info.ref}:{path}: downloaded {size} bytes with sha256 {got}, but the registry records "
                f"{expected.size} bytes with sha256 {expected.sha256}; refusing the file"
            )

    def pull(self, ref: str, *, out: str | os.PathLike[str] | None = None) -> Path:
        """A local directory holding the files of `ref`, every one sha256-verified.

        Cached under `cache_dir/registry/<content hash>`; with `out`, also copied there
        (a missing or empty directory).
        """
        info = self.resolve(ref)
        if info.status != "ready":
            raise ValueError(f"{info.ref} is {info.status}, not ready")
        cached = self.cache_dir / "registry" / info.content_hash()
        if not self._complete(cached, info):
            if cached.exists():
                shutil.rmtree(cached)
            with atomic_directory(cached) as tmp:
                for path in info.files:
                    dest = tmp / path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.download_file(info, path, dest)
        if out is None:
            return cached
        target = Path(out)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} exists and is not an empty directory; choose another --out")
        with atomic_directory(target) as tmp:
            for path in info.files:
                (tmp / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cached / path, tmp / path)
        return target

    @staticmethod
    def _complete(cached: Path, info: VersionInfo) -> bool:
        """A cache entry is only ever renamed into place whole; sizes catch later tampering cheaply."""
        if not cached.is_dir():
            return False
        for path, entry in info.files.items():
            local = cached / path
            if not local.is_file() or local.stat().st_size != entry.size:
                return False
        return True
