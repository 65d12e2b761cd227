"""The production shape: docker-compose.yml validates with Debian's docker-compose (there is no
Docker engine here), refuses to start without its secrets, and Prometheus scrapes every service
on the port microgpt serves it on."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml
from prerequisites import debian_tool

from services.launch import SERVICES

REPO = Path(__file__).resolve().parents[1]


def example_env() -> dict[str, str]:
    lines = (REPO / "deploy" / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = debian_tool("docker-compose", "docker-compose")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MICROGPT_", "GRAFANA_"))}
    return subprocess.run(
        [exe, "-f", str(REPO / "docker-compose.yml"), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_and_runs_every_part() -> None:
    result = compose(example_env())
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {
        *("postgres", "redis", "minio", "prometheus", "grafana"),
        *("registry", "trainer", "worker", "inference", "ui"),
    }
    for name in SERVICES:
        assert config["services"][name]["command"][:3] == ["microgpt", "serve", name]
    assert config["services"]["worker"]["command"] == ["microgpt", "worker"]
    env = config["services"]["inference"]["environment"]
    assert env["MICROGPT_BROKER_URL"].startswith("redis://")
    assert env["MICROGPT_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_compose_refuses_to_start_without_its_secrets() -> None:
    result = compose({k: v for k, v in example_env().items() if k != "MICROGPT_DB_PASSWORD"})
    assert result.returncode != 0
    assert "MICROGPT_DB_PASSWORD" in result.stderr


def test_prometheus_scrapes_each_service_on_its_port_and_grafana_has_the_dashboard() -> None:
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    static = [job for job in scrape["scrape_configs"] if "static_configs" in job]  # workers: DNS
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in static}
    assert targets == {name: [f"{name}:{port}"] for name, port in SERVICES.items()}
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "microgpt.json").read_text())
    exprs = " ".join(panel["targets"][0]["expr"] for panel in dashboard["panels"])
    sources = " ".join(p.read_text() for p in (REPO / "services").rglob("*.py"))
    for metric in set(re.findall(r"microgpt_\w+", exprs)):  # each one a family our services define
        family = re.sub(r"_(total|bucket)$", "", metric)
        assert family in sources or family.split("_", 2)[2] in sources, metric


def test_compose_has_a_health_checked_ui_service_that_reaches_every_service() -> None:
    example = example_env()
    result = compose(example)
    assert result.returncode == 0, result.stderr
    ui = yaml.safe_load(result.stdout)["services"]["ui"]
    assert ui["command"] == ["microgpt", "ui", "--host", "0.0.0.0"]
    assert "8501" in str(ui["ports"]) and "/_stcore/health" in " ".join(ui["healthcheck"]["test"])
    env = ui["environment"]
    assert env["MICROGPT_REGISTRY_URL"] == "http://registry:8001"
    assert env["MICROGPT_TRAINER_URL"] == "http://trainer:8002"
    assert env["MICROGPT_INFERENCE_URL"] == "http://inference:8000"
    assert env["MICROGPT_API_KEY"] == example["MICROGPT_API_KEY"]
