"""The registry's FastAPI app factory.

    uvicorn services.registry.app:create_app --factory --port 8001     # or: microgpt serve registry

`create_app` only wires things (engine and store objects connect lazily); start-up
(the lifespan) waits for the database, runs the Alembic migrations and checks the
object store, so a registry started before its database simply waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from microgpt.settings import Settings, get_settings
from microgpt.storage import ObjectStore, object_store_from_settings
from services.common.database import create_db_engine, run_migrations, wait_for_database
from services.common.errors import error_response, install_error_handlers
from services.common.http_metrics import instrument
from services.common.openapi import create_api, document_errors
from services.registry.metrics import RegistryMetrics
from services.registry.repository import Repository
from services.registry.routes import aliases, artifacts, health, models, versions

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_registry"
log = logging.getLogger(__name__)

ERROR_STATUSES = [400, 401, 403, 404, 409, 410, 413, 422, 500, 503]


def migrate(engine: Engine, *, timeout_s: float = 30) -> None:
    """Wait for the database, then bring the registry's tables to the newest revision."""
    wait_for_database(engine, timeout_s=timeout_s)
    run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)


def _start(engine: Engine, store: ObjectStore) -> None:
    migrate(engine)
    store.check()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = create_db_engine(settings.resolved_database_url())
    store = object_store_from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(_start, engine, store)
        yield
        engine.dispose()

    app = create_api(
        title="microgpt registry",
        description="Models, versions, aliases and sha256-checked artifacts. Mutating routes need a bearer "
        "key when MICROGPT_API_KEY is set. Refs: `name`, `name/3`, `name@alias`.",
        lifespan=lifespan,
    )
    repo = Repository(engine)
    registry = prometheus_client.CollectorRegistry()
    app.state.settings = settings
    app.state.repo = repo
    app.state.metrics = RegistryMetrics(registry, repo, store)
    app.state.store = store = app.state.metrics.store  # the lifespan's check is counted too
    app.state.api_keys = settings.api_keys()
    install_error_handlers(app)
    app.add_exception_handler(OSError, _storage_unavailable)
    instrument(app, registry, "registry")
    for module in (health, models, versions, aliases, artifacts):
        app.include_router(module.router)
    document_errors(app, ERROR_STATUSES)
    return app


async def _storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The object store failed (disk, S3): the client may retry later, so 503 rather than 500.

    Every store failure surfaces as an OSError (`microgpt.storage`); a missing object is
    handled by the routes before it gets here.
    """
    log.error("object store error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(503, "storage_unavailable", "the artifact store failed; see the registry log")
