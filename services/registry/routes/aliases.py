"""Aliases (`name@production`): set/move atomically, delete, list, and the audit trail of moves."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.common.errors import ApiError
from services.registry.deps import ActorDep, RepoDep, Writer
from services.registry.routes.params import AliasPath, Limit, NameDep, Offset
from services.registry.schemas import AliasEventsPublic, AliasPublic, AliasSet, check_alias

router = APIRouter(tags=["aliases"])


def _alias(alias: str) -> str:
    """The pattern is checked by the schema; this refuses the reserved names (`latest`)."""
    try:
        return check_alias(alias)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None


@router.get("/models/{name}/aliases")
def list_aliases(name: NameDep, repo: RepoDep) -> list[AliasPublic]:
    return repo.list_aliases(name)


@router.put("/models/{name}/aliases/{alias}", dependencies=[Writer])
def set_alias(name: NameDep, alias: AliasPath, body: AliasSet, repo: RepoDep, actor: ActorDep) -> AliasPublic:
    """Point the alias at a ready version (a number, another alias, or `latest`); recorded in the history."""
    return repo.set_alias(name, _alias(alias), body.version, actor)


@router.delete("/models/{name}/aliases/{alias}", status_code=204, dependencies=[Writer])
def delete_alias(name: NameDep, alias: AliasPath, repo: RepoDep, actor: ActorDep) -> Response:
    repo.delete_alias(name, _alias(alias), actor)
    return Response(status_code=204)


@router.get("/models/{name}/aliases/{alias}/history")
def alias_history(
    name: NameDep, alias: AliasPath, repo: RepoDep, limit: Limit = 50, offset: Offset = 0
) -> AliasEventsPublic:
    """Every move of this alias, newest first."""
    return repo.alias_history(name, _alias(alias), limit=limit, offset=offset)


@router.get("/models/{name}/alias-history")
def model_alias_history(
    name: NameDep, repo: RepoDep, limit: Limit = 50, offset: Offset = 0
) -> AliasEventsPublic:
    """Every alias move of this model, newest first."""
    return repo.alias_history(name, None, limit=limit, offset=offset)
