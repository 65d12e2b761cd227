"""FastAPI dependencies of the registry, as `Annotated` aliases: what a route needs, by name.

The app factory puts the settings, repository, store and metrics on `app.state`;
these aliases hand them to routes (`services.common.deps`). `Writer` guards every mutating route with the
bearer keys; `ActorDep` is who is acting, for the alias audit trail.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request

from microgpt.settings import Settings
from microgpt.storage import ObjectStore
from services.common.auth import check_bearer
from services.common.deps import from_state
from services.registry.metrics import RegistryMetrics
from services.registry.repository import Repository


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


SettingsDep = Annotated[Settings, from_state("settings")]
RepoDep = Annotated[Repository, from_state("repo")]
StoreDep = Annotated[ObjectStore, from_state("store")]
MetricsDep = Annotated[RegistryMetrics, from_state("metrics")]
ActorDep = Annotated[str | None, Depends(_actor)]
Writer = Depends(require_writer)
