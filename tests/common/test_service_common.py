"""services.common: the JSON error shape, bearer auth, route-template metrics and the SQL helpers."""

from __future__ import annotations

from pathlib import Path

import prometheus_client
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from microgpt.errors import Conflict, DomainError, Invalid, InvalidFields, NotFound, Unavailable
from services.common.auth import require_api_key
from services.common.database import create_db_engine, wait_for_database
from services.common.errors import ApiError, install_error_handlers, iter_limited_body
from services.common.http_metrics import instrument


class Item(BaseModel):
    n: int


def make_app(keys: frozenset[str] = frozenset()) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    instrument(app, prometheus_client.CollectorRegistry(), "test")

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise ApiError(404, "not_found", "no item 0")
        if item_id == 13:
            raise RuntimeError("secret internals")
        return {"id": item_id}

    @app.post("/items", dependencies=[Depends(require_api_key(keys))])
    def post_item(item: Item) -> Item:
        return item

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": sum([len(c) async for c in iter_limited_body(request, 10)])}

    return app


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("model_not_found", "no model named 'x'"), 404),
        (Conflict("version_not_ready", "x/1 is pending"), 409),
        (Invalid("invalid_request", "the last message must be the user's"), 400),
        (InvalidFields([{"loc": ["body", "preset"], "msg": "unknown", "type": "value_error"}]), 422),
        (Unavailable("registry_unavailable", "connection refused"), 503),
    ],
)
def test_domain_errors_map_to_their_http_status_once(error: DomainError, status: int) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fails")
    def fails() -> None:
        raise error

    r = TestClient(app, raise_server_exceptions=False).get("/fails")
    assert r.status_code == status
    assert r.json() == {"error": error.code, "detail": error.detail}


def test_errors_are_json_with_codes() -> None:
    client = TestClient(make_app(), raise_server_exceptions=False)
    assert client.get("/items/0").json() == {"error": "not_found", "detail": "no item 0"}
    r = client.get("/items/x")
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.get("/items/13")
    assert r.status_code == 500 and "secret" not in r.text and r.json()["error"] == "internal_error"
    r = client.post("/upload", content=b"x" * 11)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert client.post("/upload", content=b"x" * 10).json() == {"size": 10}


def test_bearer_auth() -> None:
    client = TestClient(make_app(frozenset({"k1", "k2"})))
    r = client.post("/items", json={"n": 1})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized" and r.headers["www-authenticate"]
    assert client.post("/items", json={"n": 1}, headers={"Authorization": "Basic k1"}).status_code == 401
    r = client.post("/items", json={"n": 1}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert client.post("/items", json={"n": 1}, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert TestClient(make_app()).post("/items", json={"n": 1}).status_code == 200  # no keys: auth off


def test_metrics_use_route_templates() -> None:
    client = TestClient(make_app())
    client.get("/items/5")
    client.get("/items/6")
    client.get("/random/path/42")
    text = client.get("/metrics").text
    assert 'route="/items/{item_id}",service="test",status="200"} 2.0' in text
    assert "/items/5" not in text and "/random/path/42" not in text
    assert 'route="<unmatched>"' in text


def test_sqlite_engine_pragmas_and_wait(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    wait_for_database(engine, timeout_s=5)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    unreachable = create_db_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(ConnectionError):
        wait_for_database(unreachable, timeout_s=0.5)


def test_postgres_engine(postgres_database: str) -> None:
    engine = create_db_engine(postgres_database)
    wait_for_database(engine, timeout_s=10)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
