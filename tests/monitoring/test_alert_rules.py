"""The deployment's alert rules: valid for Prometheus, loaded by its config, mounted by compose, and
unit-tested by promtool (series in, alerts out) both ways for every rule: fired by the series that
should fire it, silent on the ones that should not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from prerequisites import debian_tool
from prometheus_harness import DEPLOY, REPO

RULES = DEPLOY / "prometheus" / "alerts.yml"
UNIT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"


def promtool(*args: str | Path) -> str:
    result = subprocess.run(
        [debian_tool("promtool", "prometheus"), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert f"SUCCESS: {len(alert_names())} rules found" in promtool("check", "rules", RULES)
    assert "SUCCESS" in promtool("test", "rules", UNIT_TESTS)


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = set(alert_names())
    assert len(names) >= 8
    assert names - fired == set(), "alerts no unit test fires"
    assert names - silent == set(), "alerts no unit test keeps silent"


def test_prometheus_config_loads_the_rules_and_compose_mounts_them() -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    assert "SUCCESS: 1 rule files found" in promtool("check", "config", config)
    assert yaml.safe_load(config.read_text())["rule_files"] == [RULES.name]
    volumes = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["prometheus"]["volumes"]
    assert f"./deploy/prometheus/{RULES.name}:/etc/prometheus/{RULES.name}:ro" in volumes
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
