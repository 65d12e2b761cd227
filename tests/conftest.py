"""Fixtures shared across test files: the read-only public data sets beside the repository, and the
PostgreSQL and Redis servers that .ci/run provides."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from prerequisites import unavailable


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`$MICROGPT_SHARED_DATA`, else `<repo>/../shared/data` (names.txt, tinyshakespeare.txt).

    Tests copy from it into their own temporary directories and never write to it. On a
    laptop without it the tests that need it are skipped with this reason; in CI (`CI` set)
    its absence is a failure, since nothing may be skipped there.
    """
    env = os.environ.get("MICROGPT_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "names.txt").is_file() or not (path / "tinyshakespeare.txt").is_file():
        unavailable(f"the shared data sets are not at {path} (set MICROGPT_SHARED_DATA to their folder)")
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls on one thread: on a loaded machine, thread hand-offs cost 1000x the math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _server_url(var: str) -> str:
    """The URL of a test server from `var` (exported by .ci/run); a skip with the reason on a
    laptop without it, a failure in CI, where nothing may be skipped."""
    url = os.environ.get(var)
    if not url:
        unavailable(f"{var} is not set, so there is no server to test against (.ci/run exports it)")
    return url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (dropped after): its SQLAlchemy URL.

    Its own database, so parallel sessions and other suites sharing the server never collide.
    """
    import secrets

    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(_server_url("MICROGPT_TEST_DATABASE_URL"))
    name = f"microgpt_test_{secrets.token_hex(4)}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (`MICROGPT_TEST_REDIS_URL`); users keep to their own db number or prefix."""
    return _server_url("MICROGPT_TEST_REDIS_URL")
