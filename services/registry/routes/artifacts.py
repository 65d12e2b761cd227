"""Artifact bytes: streamed upload of one file, one-call tar upload of a checkpoint, streamed download, gc.

Uploads go through `services.registry.uploads` (streamed into the store while hashed);
downloads stream the blob back with its sha256 in `X-Checksum-Sha256` (and as the ETag),
so a client can verify what it received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from microgpt.storage import ObjectNotFound
from services.common.errors import ApiError, check_content_length
from services.common.openapi import raw_body
from services.registry.blobs import blob_key
from services.registry.deps import MetricsDep, RepoDep, SettingsDep, StoreDep, Writer
from services.registry.gc import collect_garbage
from services.registry.routes.params import NameDep, VersionRefDep
from services.registry.schemas import (
    SHA256_RE,
    ArtifactPath,
    FileInfo,
    GcReport,
    VersionCreate,
    VersionPublic,
    anchored,
)
from services.registry.uploads import finalize_version, receive_file, receive_tar, tar_manifest

router = APIRouter(tags=["artifacts"])
CHECKSUM_HEADER = "X-Checksum-Sha256"
MAX_GRACE_S = 100 * 365 * 24 * 3600  # beyond this, "now minus grace" is not a date
FilePath = Annotated[ArtifactPath, Path(description="the file's path inside the version")]


@router.put(
    "/models/{name}/versions/{version}/files/{path:path}",
    status_code=201,
    dependencies=[Writer],
    openapi_extra=raw_body("application/octet-stream", "the file's bytes"),
)
def upload_file(
    ref: VersionRefDep,
    path: FilePath,
    request: Request,
    repo: RepoDep,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    x_checksum_sha256: Annotated[
        str | None,
        Header(
            pattern=anchored(SHA256_RE),
            description="the file's sha256; a mismatch is refused with 400 at once",
        ),
    ] = None,
) -> FileInfo:
    """Stream one file of a pending version (the raw body; any size up to the limit, in chunks)."""
    check_content_length(request, settings.registry_max_upload_bytes)
    version = repo.pending_version(ref)
    return receive_file(
        request,
        store,
        repo,
        version,
        path,
        limit=settings.registry_max_upload_bytes,
        expected=x_checksum_sha256,
        on_bytes=metrics.bytes_in.inc,
    )


@router.get(
    "/models/{name}/versions/{version}/files/{path:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file, streamed"}},
)
def download_file(
    ref: VersionRefDep, path: FilePath, repo: RepoDep, store: StoreDep, metrics: MetricsDep
) -> StreamingResponse:
    """Stream one file of a ready version, with its sha256 in `X-Checksum-Sha256`."""
    version, info = repo.artifact(ref, path)
    try:
        chunks = store.get_stream(blob_key(info.sha256))
    except ObjectNotFound:
        raise ApiError(
            410, "blob_missing", f"{version.name}/{version.version}:{path} is recorded but its blob is gone"
        ) from None

    def counted() -> Iterator[bytes]:
        for chunk in chunks:
            metrics.bytes_out.inc(len(chunk))
            yield chunk

    filename = path.rsplit("/", 1)[-1]
    headers = {
        CHECKSUM_HEADER: info.sha256,
        "ETag": f'"{info.sha256}"',
        "Content-Length": str(info.size),
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Registry-Version": f"{version.name}/{version.version}",
    }
    return StreamingResponse(counted(), media_type="application/octet-stream", headers=headers)


@router.post(
    "/models/{name}/tar",
    status_code=201,
    dependencies=[Writer],
    openapi_extra=raw_body("application/octet-stream", "a tar (or tar.gz) of a checkpoint directory"),
)
def upload_tar(
    name: NameDep,
    request: Request,
    repo: RepoDep,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    metadata: Annotated[str | None, Query(description="a VersionCreate body as JSON")] = None,
) -> VersionPublic:
    """Create, fill and finalize a version from one tar stream of a checkpoint directory (gzip allowed).

    Members must be regular files with plain relative paths (absolute paths, `..`,
    links and devices are refused with 400); the checkpoint's config.json must list
    every other file with its sha256. On any failure the version is marked failed.
    """
    try:
        body = VersionCreate.model_validate(json.loads(metadata or "{}"))
    except (ValueError, ValidationError) as e:
        raise ApiError(422, "validation_error", f"metadata: {e}") from None
    check_content_length(request, settings.registry_max_upload_bytes)
    version = repo.create_version(name, body)
    try:
        files = receive_tar(
            request,
            store,
            repo,
            version,
            limit=settings.registry_max_upload_bytes,
            on_bytes=metrics.bytes_in.inc,
        )
        return finalize_version(store, repo, version, tar_manifest(store, files))
    except BaseException:
        repo.mark_failed(version.name, version.version)
        raise


@router.post("/gc", dependencies=[Writer])
def gc(
    repo: RepoDep,
    store: StoreDep,
    grace_seconds: Annotated[
        float, Query(ge=0, le=MAX_GRACE_S, description="spare anything younger than this")
    ] = 3600,
) -> GcReport:
    """Fail pending versions idle for the grace period, then delete blobs no ready/pending version uses."""
    return collect_garbage(repo, store, grace_s=grace_seconds)
