"""The registry's FastAPI app factory.

    uvicorn services.registry.app:create_app --factory --port 8001     # or: microgpt serve registry

`create_app` only wires things (engine and store objects connect lazily); start-up
(the lifespan) waits for the database, runs the Alembic migrations and checks the
object store, so a registry started before its database simply waits for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import prometheus_client
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from microgpt import __version__
from microgpt.settings import Settings, get_settings
from microgpt.storage import ObjectStore, object_store_from_settings
from services.common.database import create_db_engine, run_migrations, wait_for_database
from services.common.errors import install_error_handlers
from services.common.http_metrics import instrument
from services.registry.metrics import RegistryMetrics
from services.registry.repository import Repository
from services.registry.routes import aliases, artifacts, health, models, versions

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_registry"


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

    app = FastAPI(
        title="microgpt registry",
        version=__version__,
        description="Models, versions, aliases and sha256-checked artifacts. Mutating routes need a bearer "
        "key when MICROGPT_API_KEY is set. Refs: `name`, `name/3`, `name@alias`.",
        lifespan=lifespan,
    )
    repo = Repository(engine)
    registry = prometheus_client.CollectorRegistry()
    app.state.settings = settings
    app.state.repo = repo
    app.state.store = store
    app.state.api_keys = settings.api_keys()
    app.state.metrics = RegistryMetrics(registry, repo)
    install_error_handlers(app)
    instrument(app, registry, "registry")
    for module in (health, models, versions, aliases, artifacts):
        app.include_router(module.router)
    return app
