"""Models: create, read, update, delete, tag, and list/search by name prefix and tags."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.common.schemas import SqlText
from services.registry.deps import ActorDep, RepoDep, Writer
from services.registry.routes.params import Force, Limit, NameDep, Offset, TagPath
from services.registry.schemas import ModelCreate, ModelPublic, ModelsPublic, ModelUpdate

router = APIRouter(tags=["models"])


@router.post("/models", status_code=201, dependencies=[Writer])
def create_model(body: ModelCreate, repo: RepoDep) -> ModelPublic:
    """Register a model name (409 if it exists)."""
    return repo.create_model(body)


@router.get("/models")
def list_models(
    repo: RepoDep,
    prefix: Annotated[SqlText | None, Query(description="name prefix")] = None,
    tag: Annotated[list[SqlText], Query(description="models having every one of these tags")] = [],  # noqa: B006
    limit: Limit = 50,
    offset: Offset = 0,
) -> ModelsPublic:
    return repo.list_models(prefix=prefix, tag=tag, limit=limit, offset=offset)


@router.get("/models/{name}")
def get_model(name: NameDep, repo: RepoDep) -> ModelPublic:
    return repo.get_model(name)


@router.patch("/models/{name}", dependencies=[Writer])
def update_model(name: NameDep, body: ModelUpdate, repo: RepoDep) -> ModelPublic:
    """Change the description and/or replace the tags."""
    return repo.update_model(name, body)


@router.delete("/models/{name}", status_code=204, dependencies=[Writer])
def delete_model(name: NameDep, repo: RepoDep, actor: ActorDep, force: Force = False) -> Response:
    """Delete a model and all its versions (409 while it has aliases, unless force=true)."""
    repo.delete_model(name, force=force, actor=actor)
    return Response(status_code=204)


@router.put("/models/{name}/tags/{tag}", dependencies=[Writer])
def add_model_tag(name: NameDep, tag: TagPath, repo: RepoDep) -> ModelPublic:
    return repo.set_model_tag(name, tag, present=True)


@router.delete("/models/{name}/tags/{tag}", dependencies=[Writer])
def remove_model_tag(name: NameDep, tag: TagPath, repo: RepoDep) -> ModelPublic:
    return repo.set_model_tag(name, tag, present=False)
