"""Fixtures of the monitoring tests: Debian's Prometheus, and the live services it watches.

The services are the trainer tests' `platform` (PostgreSQL, Redis, a registry and the trainer
API as child processes; workers started by the test) and the inference tests' `running` (an
inference app under uvicorn), reused from their conftests rather than rebuilt here.
`prometheus` starts a real Prometheus on a free loopback port with a generated config: the
deployment's alert rules and one file-discovered scrape job per service, whose targets the
test writes as the services come up, scraped every second.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import ModuleType

import pytest
import yaml
from prerequisites import debian_tool
from prometheus_harness import DEPLOY, JOBS, TESTS, Prometheus

from microgpt.processes import child_server, free_port

sys.path.insert(0, str(TESTS / "trainer"))  # trainer_platform, which the trainer conftest imports


def _conftest(directory: str) -> ModuleType:
    """Another directory's conftest as a module of its own name (every conftest is "conftest")."""
    name = f"{directory}_conftest"
    spec = importlib.util.spec_from_file_location(name, TESTS / directory / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


platform = _conftest("trainer").platform
_inference = _conftest("inference")


@pytest.fixture(scope="session")
def run_inference() -> Callable[..., AbstractContextManager[str]]:
    """The inference tests' `running(app)`: the app under uvicorn, yielding its URL once ready."""
    running: Callable[..., AbstractContextManager[str]] = _inference.running
    return running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    exe = debian_tool("prometheus", "prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    targets = root / "targets"
    targets.mkdir()
    shutil.copyfile(DEPLOY / "prometheus" / "alerts.yml", root / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": job,
                "file_sd_configs": [{"files": [str(targets / f"{job}.json")], "refresh_interval": "1s"}],
            }
            for job in JOBS
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    args = [
        exe,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--log.level=warn",
    ]
    with child_server(args, url + "/-/ready"):
        yield Prometheus(url, targets)
