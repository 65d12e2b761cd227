"""FastAPI dependencies of the trainer API, as `Annotated` aliases over what `create_app` built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Header, Request

from microgpt.settings import Settings
from microgpt.storage import ObjectStore
from services.common.auth import check_bearer
from services.trainer.repository import TrainerRepository


@dataclass
class TrainerServices:
    """Everything a route needs, made once per app by `create_app`."""

    settings: Settings
    repo: TrainerRepository
    store: ObjectStore
    celery: Celery
    registry: Any  # microgpt.registry.RegistryClient
    api_keys: frozenset[str]


def _services(request: Request) -> TrainerServices:
    return request.app.state.trainer


def _repo(request: Request) -> TrainerRepository:
    return request.app.state.trainer.repo


ServicesDep = Annotated[TrainerServices, Depends(_services)]
RepoDep = Annotated[TrainerRepository, Depends(_repo)]


def _authorized(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer(authorization, request.app.state.trainer.api_keys)


Authorized = Depends(_authorized)  # for mutating routes: `dependencies=[Authorized]`
