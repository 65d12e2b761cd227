"""Versions: create (pending), finalize (ready), read, update, tag, delete, search, resolve refs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from services.common.errors import ApiError
from services.common.schemas import SqlText
from services.registry.deps import ActorDep, RepoDep, StoreDep, Writer
from services.registry.routes.params import Force, Limit, NameDep, Offset, TagPath, VersionRefDep
from services.registry.schemas import (
    FinalizeRequest,
    MetricBound,
    MetricBoundText,
    Ref,
    Status,
    VersionCreate,
    VersionFilter,
    VersionPublic,
    VersionRef,
    VersionsPublic,
    VersionUpdate,
)
from services.registry.uploads import finalize_version

router = APIRouter(tags=["versions"])

MetricQuery = Annotated[
    list[MetricBoundText],
    Query(description="metric bounds such as `val_loss<1.5` or `params>=1e6`; all must hold"),
]
TagQuery = Annotated[list[SqlText], Query(description="versions having every one of these tags")]


def _filter(metric: list[str], **fields: Any) -> VersionFilter:
    try:
        bounds = [MetricBound.parse(m) for m in metric]
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None
    return VersionFilter(metrics=bounds, **fields)


@router.post("/models/{name}/versions", status_code=201, dependencies=[Writer])
def create_version(name: NameDep, body: VersionCreate, repo: RepoDep) -> VersionPublic:
    """Start a version: it is `pending` until its files are uploaded and finalized."""
    return repo.create_version(name, body)


@router.get("/models/{name}/versions")
def list_versions(
    name: NameDep,
    repo: RepoDep,
    status: Status | None = None,
    tag: TagQuery = [],  # noqa: B006
    alias: SqlText | None = None,
    metric: MetricQuery = [],  # noqa: B006
    limit: Limit = 50,
    offset: Offset = 0,
) -> VersionsPublic:
    repo.get_model(name)  # 404 for an unknown model, not an empty list
    return repo.search_versions(
        _filter(name=name, status=status, tag=tag, alias=alias, metric=metric, limit=limit, offset=offset)
    )


@router.get("/versions")
def search_versions(
    repo: RepoDep,
    name_prefix: SqlText | None = None,
    status: Status | None = None,
    tag: TagQuery = [],  # noqa: B006
    alias: SqlText | None = None,
    metric: MetricQuery = [],  # noqa: B006
    limit: Limit = 50,
    offset: Offset = 0,
) -> VersionsPublic:
    """Search versions across all models, newest first."""
    return repo.search_versions(
        _filter(
            name_prefix=name_prefix,
            status=status,
            tag=tag,
            alias=alias,
            metric=metric,
            limit=limit,
            offset=offset,
        )
    )


@router.get("/resolve")
def resolve(repo: RepoDep, ref: Annotated[Ref, Query()]) -> VersionPublic:
    """The version a ref names; `name` alone is the newest ready version."""
    try:
        parsed = VersionRef.parse(ref)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None
    return repo.get_version(parsed)


@router.get("/models/{name}/versions/{version}")
def get_version(ref: VersionRefDep, repo: RepoDep) -> VersionPublic:
    return repo.get_version(ref)


@router.patch("/models/{name}/versions/{version}", dependencies=[Writer])
def update_version(ref: VersionRefDep, body: VersionUpdate, repo: RepoDep) -> VersionPublic:
    """Change the description or extra, merge metrics, replace tags."""
    return repo.update_version(ref, body)


@router.delete("/models/{name}/versions/{version}", status_code=204, dependencies=[Writer])
def delete_version(ref: VersionRefDep, repo: RepoDep, actor: ActorDep, force: Force = False) -> Response:
    """Delete a version (409 while an alias points at it, unless force=true); `gc` frees its blobs."""
    repo.delete_version(ref, force=force, actor=actor)
    return Response(status_code=204)


@router.put("/models/{name}/versions/{version}/tags/{tag}", dependencies=[Writer])
def add_version_tag(ref: VersionRefDep, tag: TagPath, repo: RepoDep) -> VersionPublic:
    return repo.set_version_tag(ref, tag, present=True)


@router.delete("/models/{name}/versions/{version}/tags/{tag}", dependencies=[Writer])
def remove_version_tag(ref: VersionRefDep, tag: TagPath, repo: RepoDep) -> VersionPublic:
    return repo.set_version_tag(ref, tag, present=False)


@router.post("/models/{name}/versions/{version}/finalize", dependencies=[Writer])
def finalize(ref: VersionRefDep, body: FinalizeRequest, repo: RepoDep, store: StoreDep) -> VersionPublic:
    """Check every uploaded file against `files` (path -> sha256) and make the version ready.

    400 on a missing, extra or mismatched file (the version stays pending, so the client
    can upload again); 409 if it is not pending (a second finalize).
    """
    version = repo.get_version(ref)
    return finalize_version(store, repo, version, dict(body.files))
