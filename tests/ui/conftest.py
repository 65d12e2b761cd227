"""A live platform for the dashboard tests: registry, trainer API with a worker, and inference.

The fixtures are the trainer's and the inference service's own (loaded from their
conftest files, so nothing is duplicated): PostgreSQL + Redis + registry + trainer API as
child processes (`platform`), one `microgpt worker`, and an inference app under uvicorn
whose registry is the platform's, serving `tiny@production` (a tiny shakespeare model).
Pages run in-process under `streamlit.testing.v1.AppTest` with `MICROGPT_*_URL` pointing
at these services, exactly as `microgpt ui` configures them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from streamlit.testing.v1 import AppTest

from microgpt.registry import RegistryClient
from microgpt.settings import Settings, get_settings
from services.inference.app import create_app

TESTS = Path(__file__).resolve().parents[1]
VIEWS = TESTS.parent / "services" / "ui" / "views"


def _load(name: str, path: Path) -> ModuleType:
    sys.path.insert(0, str(path.parent))  # their sibling helpers (trainer_platform)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


_trainer = _load("ui_trainer_fixtures", TESTS / "trainer" / "conftest.py")
_inference = _load("ui_inference_fixtures", TESTS / "inference" / "conftest.py")
platform = _trainer.platform
tiny_checkpoint = _inference.tiny_checkpoint
one_thread_session = _inference.one_thread_session


@dataclass
class Stack:
    registry_url: str
    trainer_url: str
    inference_url: str
    registry: RegistryClient
    platform: object  # trainer_platform.Platform


@pytest.fixture(scope="session")
def stack(
    platform: object, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The platform with `tiny` pushed (`tiny@production` -> 1), one worker, and inference serving it."""
    registry = RegistryClient(platform.registry_url, cache_dir=tmp_path_factory.mktemp("ui-pull"))
    registry.push(tiny_checkpoint, "tiny", metrics={"val_loss": 2.5})
    registry.set_alias("tiny", "production", 1)
    settings = Settings(
        home=tmp_path_factory.mktemp("ui-inference-home"),
        cache=tmp_path_factory.mktemp("ui-inference-cache"),
        registry_url=platform.registry_url,
        api_key=None,
        inference_models="tiny@production",
        inference_backend="eager",
        inference_poll_seconds=0,
    )
    platform.start_worker("ui-worker")
    try:
        with _inference.running(create_app(settings)) as inference_url:
            yield Stack(platform.registry_url, platform.trainer_url, inference_url, registry, platform)
    finally:
        platform.stop_workers()


def _point_settings_at(monkeypatch: pytest.MonkeyPatch, registry: str, trainer: str, inference: str) -> None:
    for name in ("MICROGPT_API_KEY", "MICROGPT_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MICROGPT_REGISTRY_URL", registry)
    monkeypatch.setenv("MICROGPT_TRAINER_URL", trainer)
    monkeypatch.setenv("MICROGPT_INFERENCE_URL", inference)
    get_settings.cache_clear()


@pytest.fixture
def page(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """`page("jobs", job=ID)`: an AppTest of that page (not yet run) configured for the live stack."""
    _point_settings_at(monkeypatch, stack.registry_url, stack.trainer_url, stack.inference_url)

    def make(name: str, **query: str) -> AppTest:
        at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = value
        return at

    yield make
    get_settings.cache_clear()


@pytest.fixture
def down_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], AppTest]]:
    """Pages configured for services that are not running (a free port nothing listens on)."""
    from microgpt.processes import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    _point_settings_at(monkeypatch, nowhere, nowhere, nowhere)
    yield lambda name: AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    get_settings.cache_clear()
