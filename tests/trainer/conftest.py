"""Real servers for the trainer tests: PostgreSQL, Redis, the registry, the trainer API and Celery workers.

Server mode needs MICROGPT_TEST_DATABASE_URL and MICROGPT_TEST_REDIS_URL (exported by
`.ci/run`); without them those tests are skipped with the reason, and with `CI` set their
absence is a failure. Each session gets a fresh PostgreSQL database (dropped after) and
its own Celery queue name on the Redis it is given, so parallel runs never share state.
The registry and the trainer API run under uvicorn as child processes on free ports, and
every worker is a `python -m microgpt worker` child process: a test kills or signals it
exactly as an operator would. Workers run torch on one thread (tiny models; the machine
is shared).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainer_platform import REPO, Platform

from microgpt.processes import child_server, free_port


def _platform_env(home: Path, cache: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MICROGPT_") or k.startswith("MICROGPT_TEST")
    }
    env |= {
        "MICROGPT_HOME": str(home),
        "MICROGPT_CACHE": str(cache),
        "MICROGPT_JOB_LEASE_S": "3",
        "MICROGPT_BROKER_VISIBILITY_TIMEOUT_S": "5",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO), env.get("PYTHONPATH", "")]),
        **extra,
    }
    return env


def _serve(module: str, env: dict[str, str]) -> tuple[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable, "-m", "uvicorn", f"services.{module}.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    return url, child_server(args, url + "/healthz", env)


@pytest.fixture(scope="session")
def platform(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: str, redis_url: str
) -> Iterator[Platform]:
    """Server mode: PostgreSQL + Redis + registry + trainer API, one session queue; workers per test."""
    root = tmp_path_factory.mktemp("trainer-platform")
    queue = f"trainer-test-{secrets.token_hex(4)}"
    env = _platform_env(
        root / "home",
        root / "cache",
        {
            "MICROGPT_DATABASE_URL": postgres_database,
            "MICROGPT_BROKER_URL": redis_url,
            "MICROGPT_TRAINER_QUEUE": queue,
        },
    )
    yield from _run_platform(root, env)
    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete(queue)


@pytest.fixture(scope="session")
def embedded_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The embedded default: SQLite, kombu's SQLAlchemy broker over SQLite and local disk; no servers."""
    root = tmp_path_factory.mktemp("trainer-embedded")
    yield from _run_platform(root, _platform_env(root / "home", root / "cache", {}))


def _run_platform(root: Path, env: dict[str, str]) -> Iterator[Platform]:
    logs = root / "logs"
    logs.mkdir()
    registry_url, registry = _serve("registry", env)
    with registry:
        env = {**env, "MICROGPT_REGISTRY_URL": registry_url}
        trainer_url, trainer = _serve("trainer", env)
        with trainer:
            env = {**env, "MICROGPT_TRAINER_URL": trainer_url}
            platform = Platform(env, trainer_url, registry_url, root / "home", logs)
            try:
                yield platform
            finally:
                platform.stop_workers()


@pytest.fixture
def workers(platform: Platform) -> Iterator[Platform]:
    """The platform, with every worker a test starts stopped (SIGTERM, then SIGKILL) after it."""
    try:
        yield platform
    finally:
        platform.stop_workers()
