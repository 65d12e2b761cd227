"""FastAPI dependencies of the trainer API, as `Annotated` aliases: what a route needs, by name.

The app factory puts the settings, repository, object store, Celery app, registry client
and bearer keys on `app.state`, as the registry's and the inference service's factories
do; these aliases hand them to routes (`services.common.deps`). `Authorized` guards every
mutating route.
"""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from microgpt.registry import RegistryClient
from microgpt.settings import Settings
from microgpt.storage import ObjectStore
from services.common.auth import check_bearer
from services.common.deps import from_state
from services.trainer.repository import TrainerRepository

SettingsDep = Annotated[Settings, from_state("settings")]
RepoDep = Annotated[TrainerRepository, from_state("repo")]
StoreDep = Annotated[ObjectStore, from_state("store")]
CeleryDep = Annotated[Celery, from_state("celery")]
RegistryDep = Annotated[RegistryClient, from_state("registry")]


def _authorized(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer(authorization, request.app.state.api_keys)


Authorized = Depends(_authorized)  # for mutating routes: `dependencies=[Authorized]`
