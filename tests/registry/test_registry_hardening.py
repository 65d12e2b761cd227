"""Requests that once broke the registry on PostgreSQL (500s), and its documented error model.

Each was a 500 before the schemas carried the constraint: a NUL character in any string that
reaches SQL, an integer past BIGINT (OFFSET) or INTEGER (version numbers), an alias target that
is not a version. Now each is a 422 with the JSON error body, and the OpenAPI document says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from prerequisites import debian_tool
from registry_harness import error_of, serve

from microgpt.settings import Settings

TOO_BIG = str(2**63)


@pytest.fixture
def http(registry_settings: Callable[..., Settings]) -> Iterator[httpx.Client]:
    with serve(registry_settings("postgres-disk")) as registry, registry.http() as client:
        assert client.post("/models", json={"name": "Ly"}).status_code == 201
        yield client


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/models", {"json": {"name": "Ly2", "description": "a\u0000b"}}),
        ("PATCH", "/models/Ly", {"json": {"description": "a\u0000b"}}),
        ("POST", "/models/Ly/versions", {"json": {"created_by": "a\u0000b"}}),
        ("GET", "/versions", {"params": {"tag": "a\u0000b"}}),
        ("GET", "/versions", {"params": {"name_prefix": "a\u0000b"}}),
        ("GET", "/versions", {"params": {"alias": "a\u0000b"}}),
        ("GET", "/models", {"params": {"prefix": "a\u0000b"}}),
        ("GET", "/models", {"params": {"tag": "a\u0000b"}}),
        ("GET", "/models", {"params": {"offset": TOO_BIG}}),
        ("GET", "/versions", {"params": {"offset": TOO_BIG}}),
        ("GET", "/models/Ly/versions", {"params": {"offset": TOO_BIG}}),
        ("GET", "/models/Ly/alias-history", {"params": {"offset": TOO_BIG}}),
        ("GET", "/models/Ly/versions/99999999999", {}),
        ("GET", "/resolve", {"params": {"ref": "Ly/99999999999"}}),
        ("PUT", "/models/Ly/aliases/prod", {"json": {"version": "BAD"}}),
        ("PUT", "/models/Ly/aliases/prod", {"json": {"version": 2**40}}),
        ("PUT", "/models/Ly/aliases/prod", {"json": {"version": True}}),
        ("POST", "/gc", {"params": {"grace_seconds": "1e15"}}),
    ],
)
def test_values_the_database_cannot_hold_are_422(
    http: httpx.Client, method: str, path: str, kwargs: dict[str, object]
) -> None:
    response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert error_of(response) == "validation_error"
    assert isinstance(response.json()["detail"], list) and response.json()["detail"][0]["msg"]


def test_integral_float_is_a_version_number_as_json_schema_says(http: httpx.Client) -> None:
    response = http.put("/models/Ly/aliases/prod", json={"version": 1.0})
    assert error_of(response) == "version_not_found", response.text  # read as version 1, which is absent


def test_405_allows_every_method_of_the_path(http: httpx.Client) -> None:
    response = http.post("/models/Ly")
    assert response.status_code == 405 and error_of(response) == "method_not_allowed"
    assert response.headers["allow"] == "DELETE, GET, PATCH"
    response = http.request("OPTIONS", "/models/Ly/versions/1/files/a/b.bin")
    assert response.headers["allow"] == "GET, PUT"


def test_every_operation_documents_the_real_error_body(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401", "403", "404", "409", "413", "422", "500", "503"):
                content = operation["responses"][status]["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)
    assert schemas["ErrorResponse"]["required"] == ["error", "detail"]
    documented = {"$ref": "#/components/schemas/ErrorResponse", "components": document["components"]}
    for response in (
        http.post("/models", json={"name": "Ly"}),  # 409, detail a string
        http.get("/models", params={"offset": TOO_BIG}),  # 422, detail a list of fields
        http.get("/models/nope"),  # 404
    ):
        jsonschema.validate(response.json(), documented)


def test_docs_load_everything_from_this_server(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assets = [part.split('"')[1] for part in page.text.split("src=")[1:] + page.text.split("href=")[1:]]
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), page.text
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the registry"
        assert http.get(asset).status_code == 200, asset
    assert "openapi.json" in page.text


def test_docs_render_in_a_browser_that_reaches_nothing_but_the_registry(
    registry_settings: Callable[..., Settings],
) -> None:
    """Swagger UI draws every operation with every request off the registry refused, as offline."""
    chromium = debian_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with serve(registry_settings("sqlite-disk")) as registry, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        refused: list[str] = []

        def only_the_registry(route: Any) -> None:
            if route.request.url.startswith(registry.url):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_registry)
        page.goto(f"{registry.url}/docs")
        page.wait_for_selector(".opblock", timeout=60_000)
        operations = page.locator(".opblock").count()
        browser.close()
    assert operations >= 20 and not refused, refused
