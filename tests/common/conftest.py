"""Fixtures for the shared service pieces: an S3 server (moto, a real child process) and stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from microgpt.storage import LocalDiskStore, ObjectStore, S3Store
from services.registry.local import moto_s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalDiskStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"t-{abs(hash(request.node.nodeid)) % 10**12}"
    return S3Store(endpoint, bucket, access_key="test", secret_key="test", region="us-east-1")
