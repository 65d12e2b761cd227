"""Every panel of the Grafana dashboards answers from a real Prometheus scraping the live services.

A registry, the trainer API, a Celery worker (serving its own metrics) and an inference service
run on loopback; a real Prometheus scrapes them every second and evaluates the deployment's
alert rules. A `micro` job runs, then the inference service serves the model it pushed: a few
streamed completions and a WebSocket chat. Then each panel query of deploy/grafana/dashboards
(template variables substituted as "All") goes through Prometheus' HTTP API over the test's time
range, as Grafana would ask it: it must return a series, and every metric and label it names
must exist, else the test fails naming the panel.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
from prometheus_harness import DEPLOY, Prometheus
from trainer_platform import Platform
from websockets.sync.client import connect

from microgpt.clients.http import probe
from microgpt.processes import free_port
from microgpt.settings import Settings
from services.inference.app import create_app

MODEL = "monitoring-micro"
MICRO = {
    "kind": "train",
    "preset": "micro",
    "dataset": "names",
    "output_model": MODEL,
    "train": {"max_steps": 1500},  # long enough for a few 1 s scrapes while it runs
}
GRAFANA_GLOBALS = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "5m"}
METRIC = re.compile(r"\b(?:microgpt_\w+|up)\b(?!\s*\()")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def panel_queries() -> Iterator[tuple[str, str]]:
    """(where, query) of every panel target of every dashboard, with its variables set to All."""
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        variables = {
            v["name"]: v.get("allValue") or ".*" for v in dashboard.get("templating", {}).get("list", [])
        }
        panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]  # rows hold panels
        for panel in panels:
            for target in panel.get("targets", []):
                query = target["expr"]
                for name, value in GRAFANA_GLOBALS.items():
                    query = query.replace(name, value)
                for name in sorted(variables, key=len, reverse=True):
                    query = query.replace(f"${{{name}}}", variables[name]).replace(
                        f"${name}", variables[name]
                    )
                assert "$" not in query, f"{path.name} / {panel['title']}: a variable is left in {query}"
                yield f"{path.name} / {panel['title']} / {target['refId']}", query


def missing_names(prometheus: Prometheus, query: str, since: float) -> list[str]:
    """The metrics of `query` with no series since `since`, and its labels that none of them has."""
    problems, labels = [], set()
    for metric in sorted(set(METRIC.findall(query))):
        series = prometheus.api("series", **{"match[]": metric, "start": since, "end": time.time()})
        if not series:
            problems.append(f"no metric {metric}")
        labels.update(name for s in series for name in s)
    used = set(MATCHER_LABEL.findall(query))
    used.update(
        name.strip() for group in GROUPING.findall(query) for name in group.split(",") if name.strip()
    )
    problems += [f"no label {name}" for name in sorted(used - labels)]
    return problems


def wait_for(prometheus: Prometheus, what: str, query: str, timeout_s: float = 60) -> None:
    """Poll the instant `query` until it returns a series; a timeout also shows each target's health."""
    deadline = time.monotonic() + timeout_s
    while not instant(prometheus, query):
        if time.monotonic() > deadline:
            targets = prometheus.api("targets")["activeTargets"]
            health = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"timed out waiting for {what} ({query}); targets: {health}")
        time.sleep(0.25)


def served_traffic(base: str, model: str) -> None:
    """Three streamed completions and a two-turn WebSocket chat."""
    for prompt in ("an", "mar", "jo"):
        body = {"model": model, "prompt": prompt, "max_tokens": 8, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            assert b"".join(response.iter_bytes()).decode().endswith("data: [DONE]\n\n")
    with connect(base.replace("http://", "ws://") + "/ws/chat") as ws:
        for turn in ("t1", "t2"):
            ws.send(json.dumps({"model": model, "id": turn, "prompt": "el", "params": {"max_tokens": 8}}))
            while (event := json.loads(ws.recv(timeout=60)))["type"] not in ("done", "error"):
                pass
            assert event["type"] == "done" and event["id"] == turn, event


def instant(prometheus: Prometheus, query: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = prometheus.api("query", query=query)["result"]
    return result


def test_every_dashboard_panel_and_alert_answers_from_the_live_services(
    platform: Platform,
    prometheus: Prometheus,
    run_inference: Callable[..., AbstractContextManager[str]],
    tmp_path: Path,
) -> None:
    since = time.time()
    worker_metrics = f"127.0.0.1:{free_port()}"
    deployment = dataclasses.replace(
        platform, env={**platform.env, "MICROGPT_WORKER_METRICS_ADDRESS": worker_metrics}, workers=[]
    )
    for job, url in (("registry", platform.registry_url), ("trainer", platform.trainer_url)):
        prometheus.scrape(job, url.removeprefix("http://"))
    prometheus.scrape("worker", worker_metrics)
    try:
        deployment.start_worker("monitoring")
        job = deployment.submit(MICRO)
        # The running job's own gauges reach Prometheus from the worker while it trains
        # (looked up over the whole run: on a loaded machine the job may end between two polls).
        step = f'last_over_time(microgpt_worker_job_step{{job_id="{job["id"]}"}}[10m])'
        wait_for(prometheus, "the worker's job gauges", step, timeout_s=180)
        assert deployment.wait_done(job["id"])["state"] == "succeeded"
        wait_for(prometheus, "the worker idle", "microgpt_worker_jobs_running == 0")
        assert instant(prometheus, "microgpt_worker_job_step") == [], "the ended job's series go with it"

        settings = Settings(
            home=tmp_path / "home", cache=tmp_path / "cache", registry_url=platform.registry_url,
            api_key=None, inference_models=f"{MODEL}/1", inference_backend="eager", inference_poll_seconds=0,
        )  # fmt: skip
        with run_inference(create_app(settings)) as base:
            prometheus.scrape("inference", base.removeprefix("http://"))
            # Traffic in two rounds, each waited for in Prometheus: the counters then have samples
            # before and after an increase, so every rate panel has a non-zero rate to draw. The
            # count to wait for is the service's own: an answer that starts with end-of-sequence
            # has no first token, so it is served without a time-to-first-token sample.
            ttft_count = "microgpt_inference_time_to_first_token_seconds_count"
            observed = 0.0
            for _ in range(2):
                served_traffic(base, f"{MODEL}/1")
                before, observed = observed, probe("inference", base).value(ttft_count) or 0.0
                assert observed > before, "a round of traffic yields time-to-first-token samples"
                wait_for(prometheus, "the served answers scraped", f"sum({ttft_count}) >= {observed}")
            for counter in ("generation_tokens_total", "time_to_first_token_seconds_count"):
                rate = f"sum(rate(microgpt_inference_{counter}[1m])) > 0"
                wait_for(prometheus, f"a rate of {counter}", rate)
            time.sleep(1.5)  # a 1 s range query's last step lies at most a step before its end
            wait_for(prometheus, "every target up", "count(up == 1) == 4")

            failures = []
            for where, query in panel_queries():
                params = {"query": query, "start": since, "end": time.time(), "step": "1s"}
                if not prometheus.api("query_range", **params)["result"]:
                    failures.append(f"{where}: no series for {query}")
                failures += [
                    f"{where}: {problem} in {query}" for problem in missing_names(prometheus, query, since)
                ]
            assert not failures, "\n".join(failures)

            rules = [
                r for g in prometheus.api("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"
            ]
            assert len(rules) >= 8 and all(r["health"] == "ok" for r in rules), rules
            for rule in rules:  # the alerts watch series the services really export
                problems = missing_names(prometheus, rule["query"], since)
                assert not problems, f"alert {rule['name']}: {problems} in {rule['query']}"
            firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
            assert firing == [], "a healthy deployment raises no alarm"
    finally:
        deployment.stop_workers()
