"""Debian's Prometheus and promtool as the monitoring tests drive them: finding the binaries, and a
running Prometheus's scrape targets and HTTP API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from microgpt.atomic import atomic_write_bytes

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DEPLOY = REPO / "deploy"
JOBS = ("registry", "trainer", "inference", "worker")  # the deployment's job names: the alerts use them


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
