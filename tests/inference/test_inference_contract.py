"""The inference service's request and error contract: strict bodies, 405s, and an OpenAPI that says
what the service really answers (OpenAI's error object under /v1, the project's elsewhere)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from microgpt import __version__
from services.inference.app import ERROR_STATUSES, openai_path

TINY = "tiny@production"  # the conftest's registry model


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/detokenize", {"model": TINY, "tokens": [False]}),
        ("/detokenize", {"model": TINY, "tokens": ["1"]}),
        ("/generate", {"model": TINY, "prompts": ["a"], "max_tokens": 1, "seed": False}),
        ("/generate", {"model": TINY, "prompts": ["a"], "max_tokens": True}),
        ("/tokenize", {"model": TINY, "prompt": "a", "add_special_tokens": 0}),
        ("/v1/completions", {"model": TINY, "prompt": "a", "max_tokens": 1, "stream": 1}),
        ("/v1/completions", {"model": TINY, "prompt": [True], "max_tokens": 1}),
    ],
)
def test_json_types_are_not_coerced(base: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(base + path, json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"].endswith("_type")


def test_integral_floats_are_integers_as_json_schema_says(base: str) -> None:
    response = httpx.post(f"{base}/detokenize", json={"model": TINY, "tokens": [1.0, 2]}, timeout=30)
    assert response.status_code == 200, response.text


def test_405_under_v1_is_an_openai_client_error_with_allow(base: str) -> None:
    response = httpx.get(f"{base}/v1/completions", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_openapi_documents_each_error_with_the_body_it_has(base: str) -> None:
    document = httpx.get(f"{base}/openapi.json", timeout=30).json()
    assert document["info"]["version"] == __version__
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        model = "OpenAIErrorResponse" if openai_path(path) else "ErrorResponse"  # not /v1/interpret
        for operation in operations.values():
            for status in ERROR_STATUSES:
                content = operation["responses"][str(status)]["content"]["application/json"]
                assert content["schema"] == {"$ref": f"#/components/schemas/{model}"}, (path, status)
