"""Fixtures for the registry: real servers everywhere.

* PostgreSQL: a fresh database per session (created with psycopg, dropped after), one
  schema per registry; skipped when MICROGPT_TEST_DATABASE_URL is unset, a failure in CI.
* S3: moto's standalone server as a child process, reached over HTTP through the minio
  SDK; one bucket per registry.
* The registry itself: `create_app` under a real uvicorn server on a free port, in a
  thread, so the tests (httpx, RegistryClient, the CLI) talk HTTP to it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from registry_harness import BACKENDS, Registry, serve
from sqlalchemy.engine import make_url

from microgpt.settings import Settings
from services.registry.local import moto_s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


def _pg_schema_url(database_url: str) -> str:
    """A new schema in the session database, and a URL whose connections use it."""
    schema = f"reg_{secrets.token_hex(4)}"
    plain = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return (
        make_url(database_url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def registry_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a fresh registry on `backend` ("sqlite-disk", "postgres-s3", ...)."""

    def make(backend: str, **overrides: Any) -> Settings:
        database, store = backend.split("-")
        fields: dict[str, Any] = {
            "home": tmp_path / "home",
            "cache": tmp_path / "cache",
            "database_url": None,
            "s3_endpoint": None,
            "api_key": None,
        }
        if database == "postgres":
            fields["database_url"] = _pg_schema_url(request.getfixturevalue("postgres_database"))
        if store == "s3":
            fields |= {
                "s3_endpoint": request.getfixturevalue("s3_endpoint"),
                "s3_bucket": f"reg-{secrets.token_hex(6)}",
                "s3_access_key": "test",
                "s3_secret_key": "test",
                "s3_region": "us-east-1",
            }
        return Settings(**(fields | overrides))

    return make


@pytest.fixture(params=BACKENDS)
def registry(
    request: pytest.FixtureRequest, registry_settings: Callable[..., Settings]
) -> Iterator[Registry]:
    with serve(registry_settings(request.param)) as running:
        yield running


@pytest.fixture
def sqlite_registry(registry_settings: Callable[..., Settings]) -> Iterator[Registry]:
    with serve(registry_settings("sqlite-disk")) as running:
        yield running


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) microgpt checkpoint directory: config.json, model.safetensors, tokenizer.json."""
    import torch

    from microgpt.checkpoint import save_checkpoint
    from microgpt.config import GPTConfig
    from microgpt.model import GPT
    from microgpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyz")))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    path = tmp_path_factory.mktemp("ckpt") / "names"
    save_checkpoint(path, GPT(config), tokenizer=tokenizer, preset="micro")
    return path
