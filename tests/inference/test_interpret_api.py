"""`POST /v1/interpret` through a real server: the reports equal the library's on the same
weights, every bound answers a 400 in the shared ErrorResponse shape, the API key guards it,
and OpenAPI documents it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from microgpt import interpret
from microgpt.loading import load_model

TINY = "tiny@production"  # 1 layer, 2 heads, 64-token context (conftest)
pytestmark = pytest.mark.usefixtures("one_thread_session")
ALL = ["tokens", "attention", "lens", "attribution", "patch", "heads", "embeddings"]


def post(base: str, **body: object) -> httpx.Response:
    return httpx.post(f"{base}/v1/interpret", json={"model": TINY, **body}, timeout=60)


def test_every_analysis_equals_the_library_on_the_same_weights(base: str, tiny_checkpoint: Path) -> None:
    text = "ROMEO: But soft"
    r = post(base, text=text, analyses=ALL, corrupted="JOMEO: But soft", top_k=3, seq_len=8, batch=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", *ALL}
    ckpt = load_model(tiny_checkpoint)
    tokens = interpret.tokens(ckpt.model, ckpt.text_tokenizer(), text, top_k=3)
    assert body["tokens"]["loss"][:-1] == pytest.approx(tokens.loss[:-1], abs=1e-5)
    assert len(body["attention"]["patterns"]) == 1 and len(body["attention"]["patterns"][0]) == 2
    assert body["lens"]["layers"] == ["embed", "0"]
    assert body["patch"]["residual"][0][0] == pytest.approx(
        1.0, abs=1e-4
    )  # position 0 is the whole difference
    assert len(body["heads"]["induction"][0]) == 2
    assert body["attribution"]["position"] == len(tokens.ids) - 1


def test_only_the_analyses_asked_for_come_back(base: str) -> None:
    body = post(base, text="To be", analyses=["lens"]).json()
    assert set(body) == {"model", "lens"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": "x" * 65, "analyses": ["tokens"]}, "at most 64"),
        ({"text": "To be", "analyses": ["patch"]}, "needs `corrupted`"),
        ({"text": "To be", "analyses": ["patch"], "corrupted": "To be or"}, "as many tokens"),
        ({"text": "To be", "analyses": ["heads"], "seq_len": 40}, "exceeds the context"),
        ({"text": "To be", "analyses": ["attribution"], "target": "ab"}, "give one token"),
        ({"text": "To be", "analyses": ["attribution"], "position": 9}, "outside the text"),
    ],
)
def test_bad_requests_are_400_with_the_reason(base: str, body: dict[str, object], fragment: str) -> None:
    r = post(base, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request" and fragment in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"text": "", "analyses": ["tokens"]},
        {"text": "To be", "analyses": []},
        {"text": "To be", "analyses": ["tokens", "tokens"]},
        {"text": "To be", "analyses": ["mind-reading"]},
        {"text": "To be", "analyses": ["tokens"], "top_k": 0},
        {"text": "To be", "analyses": ["heads"], "batch": 1000},
        {"text": "x" * 5000, "analyses": ["tokens"]},
    ],
)
def test_invalid_fields_are_422(base: str, body: dict[str, object]) -> None:
    r = post(base, **body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"


def test_an_unknown_model_is_a_clear_4xx(base: str) -> None:
    r = httpx.post(
        f"{base}/v1/interpret", json={"model": "nope@production", "text": "a", "analyses": ["tokens"]}
    )
    assert 400 <= r.status_code < 500 and isinstance(r.json()["error"], str)


def test_openapi_documents_the_route_with_the_shared_error(base: str) -> None:
    schema = httpx.get(f"{base}/openapi.json").json()
    op = schema["paths"]["/v1/interpret"]["post"]
    assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "InterpretRequest" in schema["components"]["schemas"]


def test_the_api_key_guards_it(serve: Callable[..., contextlib.AbstractContextManager[str]]) -> None:
    with serve(api_key="sesame") as base:
        body = {"model": TINY, "text": "To be", "analyses": ["tokens"]}
        assert httpx.post(f"{base}/v1/interpret", json=body).status_code == 401
        ok = httpx.post(f"{base}/v1/interpret", json=body, headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 200, ok.text
