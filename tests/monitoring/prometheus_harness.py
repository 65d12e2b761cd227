"""Debian's Prometheus and promtool as the monitoring tests drive them: finding the binaries, and a
running Prometheus's scrape targets and HTTP API."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from microgpt.atomic import atomic_write_bytes

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DEPLOY = REPO / "deploy"
JOBS = ("registry", "trainer", "inference", "worker")  # the deployment's job names: the alerts use them


def debian_tool(name: str) -> str:
    """The path of Debian's `name` (from the `prometheus` package that .ci/run installs): a skip with
    the reason on a laptop without it, a failure in CI, where nothing may be skipped."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian's prometheus package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class Prometheus:
    url: str
    targets: Path

    def scrape(self, job: str, address: str) -> None:
        """Point `job` at `host:port` (file discovery picks the change up within a second)."""
        atomic_write_bytes(self.targets / f"{job}.json", json.dumps([{"targets": [address]}]).encode())

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]
