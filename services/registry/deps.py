"""FastAPI dependencies of the registry, as `Annotated` aliases: what a route needs, by name.

The app factory puts the settings, repository, store and metrics on `app.state`;
these aliases hand them to routes. `Writer` guards every mutating route with the
bearer keys; `ActorDep` is who is acting, for the alias audit trail.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request

from microgpt.settings import Settings
from microgpt.storage import ObjectStore
from services.common.auth import check_bearer
from services.registry.metrics import RegistryMetrics
from services.registry.repository import Repository


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _repo(request: Request) -> Repository:
    return request.app.state.repo


def _store(request: Request) -> ObjectStore:
    return request.app.state.store


def _metrics(request: Request) -> RegistryMetrics:
    return request.app.state.metrics


def require_writer(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer(authorization, request.app.state.api_keys)


def _actor(
    authorization: Annotated[str | None, Header()] = None,
    x_actor: Annotated[
        str | None, Header(max_length=128, description="who is acting, for the audit trail")
    ] = None,
) -> str | None:
    """`X-Actor` if given, else a fingerprint of the bearer key (never the key itself)."""
    if x_actor:
        return x_actor
    if authorization and authorization.lower().startswith("bearer "):
        return "key:" + hashlib.sha256(authorization[7:].strip().encode()).hexdigest()[:12]
    return None


SettingsDep = Annotated[Settings, Depends(_settings)]
RepoDep = Annotated[Repository, Depends(_repo)]
StoreDep = Annotated[ObjectStore, Depends(_store)]
MetricsDep = Annotated[RegistryMetrics, Depends(_metrics)]
ActorDep = Annotated[str | None, Depends(_actor)]
Writer = Depends(require_writer)
