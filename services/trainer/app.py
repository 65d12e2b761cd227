"""The trainer service: the job API in front of Celery workers, with its state in SQL.

    microgpt serve trainer           # or: uvicorn services.trainer.app:create_app --factory --port 8002
    microgpt worker                  # one or more workers, anywhere that reaches the same servers

`create_app(settings)` builds everything from the settings it is given (get_settings()
when None) and connects to nothing until start-up, when it waits for the database and
runs the trainer's Alembic migrations (version table `alembic_version_trainer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import prometheus_client
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from microgpt.settings import Settings, get_settings
from services.common.errors import ApiError, install_error_handlers
from services.common.http_metrics import instrument
from services.common.openapi import create_api, document_errors
from services.common.readiness import ReadinessCollector

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_trainer"
ERROR_STATUSES = [400, 401, 403, 404, 413, 422, 500, 503]


def migrate(engine: Engine) -> None:
    from services.common.database import run_migrations, wait_for_database

    wait_for_database(engine)
    run_migrations(engine, MIGRATIONS, VERSION_TABLE)


def create_app(settings: Settings | None = None) -> FastAPI:
    from microgpt.registry import RegistryClient
    from microgpt.storage import object_store_from_settings
    from services.common.database import create_db_engine
    from services.trainer.api import router
    from services.trainer.celery_app import make_celery, queue_length
    from services.trainer.logs import configure_logging
    from services.trainer.observability import TrainerCollector
    from services.trainer.repository import TrainerRepository

    settings = settings or get_settings()
    engine = create_db_engine(settings.resolved_database_url())
    repo = TrainerRepository(sessionmaker(engine, expire_on_commit=False))
    celery = make_celery(settings)
    store = object_store_from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        await run_in_threadpool(migrate, engine)
        yield
        engine.dispose()

    app = create_api(title="microgpt trainer", lifespan=lifespan)
    app.state.settings, app.state.repo, app.state.store = settings, repo, store
    app.state.celery, app.state.registry = celery, RegistryClient.from_settings(settings)
    app.state.api_keys = settings.api_keys()
    install_error_handlers(app)
    checks = {
        "database": lambda: repo.counts_by_state(),
        "object_store": store.check,
        "broker": lambda: queue_length(celery, settings.trainer_queue),
    }
    metrics = prometheus_client.CollectorRegistry()
    metrics.register(
        TrainerCollector(repo, lambda: queue_length(celery, settings.trainer_queue), settings.job_lease_s)
    )
    metrics.register(ReadinessCollector("trainer", checks))
    instrument(app, metrics, "trainer")
    app.include_router(router)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        for name, check in checks.items():
            try:
                check()
            except Exception as e:
                raise ApiError(503, "not_ready", f"{name}: {' '.join(str(e).split())}") from None
        return {"status": "ready"}

    document_errors(app, ERROR_STATUSES)
    return app
