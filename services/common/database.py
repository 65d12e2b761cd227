"""The SQL engine, the wait for the database at start-up, and Alembic migrations run from code.

SQLite (the embedded default) gets WAL, foreign keys, a busy timeout and `BEGIN
IMMEDIATE` transactions: a transaction that takes the write lock up front waits its
turn (busy timeout) instead of failing with "database is locked" when it later tries
to upgrade a read lock. PostgreSQL gets pre-ping so a restarted server costs one retry.

Several services share one database: each has its own Alembic directory, its own
version table (`alembic_version_<service>`) and its own table prefix. A service's
`env.py` is two lines: `run_alembic_env(context, target_metadata)`.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30


def create_db_engine(url: str) -> Engine:
    """An engine for `url`; for a SQLite file its parent directory is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, issues BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def wait_for_database(engine: Engine, timeout_s: float = 30) -> None:
    """Return once `SELECT 1` succeeds; retry with backoff, raise ConnectionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return
        except sa.exc.OperationalError as e:
            if time.monotonic() + delay > deadline:
                raise ConnectionError(
                    f"the database at {engine.url.render_as_string(hide_password=True)} is not reachable "
                    f"after {timeout_s:.0f} s: {' '.join(str(e.orig or e).split())}"
                ) from e
            log.warning("database not reachable yet, retrying in %.1f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def run_migrations(engine: Engine, script_location: Path, version_table: str) -> None:
    """Upgrade the database to the newest revision in `script_location` (an Alembic directory).

    On PostgreSQL an advisory lock keyed on `version_table` makes concurrent start-ups of
    the same service migrate one after the other instead of racing on CREATE TABLE.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(version_table.encode())}
            )
        config.attributes["connection"] = conn
        config.attributes["version_table"] = version_table
        command.upgrade(config, "head")


def run_alembic_env(context: Any, target_metadata: sa.MetaData) -> None:
    """The body of a service's Alembic `env.py`: migrate on the connection `run_migrations` passes."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with services.common.database.run_migrations (or the CLI)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=context.config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
