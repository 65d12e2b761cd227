"""Schemathesis against a live registry on PostgreSQL and S3 (moto): no 5xx, nothing outside its OpenAPI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from api_fuzz import fuzz
from registry_harness import serve

from microgpt.settings import Settings


def test_registry_survives_schemathesis(registry_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with serve(registry_settings("postgres-s3")) as registry:
        fuzz(
            registry.url,
            tmp_path,
            content_checked={
                "/tar$": "the body must be a tar stream of a checkpoint, metadata a VersionCreate as JSON",
                "/files/": "the body is the file; an upload to a version that is not pending is refused",
            },
        )
