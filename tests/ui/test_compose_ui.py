"""docker-compose runs the dashboard as `ui`, health-checked, with every service's URL and the API key."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_has_a_health_checked_ui_service_that_reaches_every_service() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        reason = "Debian's docker-compose is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    lines = (REPO / "deploy" / "env.example").read_text().splitlines()
    example = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MICROGPT_", "GRAFANA_"))}
    result = subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config"],
        env={**clean, **example},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ui = yaml.safe_load(result.stdout)["services"]["ui"]
    assert ui["command"] == ["microgpt", "ui", "--host", "0.0.0.0"]
    assert "8501" in str(ui["ports"]) and "/_stcore/health" in " ".join(ui["healthcheck"]["test"])
    env = ui["environment"]
    assert env["MICROGPT_REGISTRY_URL"] == "http://registry:8001"
    assert env["MICROGPT_TRAINER_URL"] == "http://trainer:8002"
    assert env["MICROGPT_INFERENCE_URL"] == "http://inference:8000"
    assert env["MICROGPT_API_KEY"] == example["MICROGPT_API_KEY"]
