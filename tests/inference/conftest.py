"""Fixtures of the inference tests: a real registry holding small models, and inference apps under uvicorn.

- `registry`: the registry service as a subprocess (SQLite and local disk under a temp home)
  holding `tiny` (shakespeare characters, trained for a few seconds; version 1 is aliased
  `production`) and `slow` (random weights of a wider, longer-context shape whose decode steps
  take long enough to cancel mid-answer; versions 1 and 2, `production` -> 1 at first, moved
  by the swap tests).
- `serve(**settings)`: an inference app from `create_app(Settings(...))` under a real uvicorn
  server in a thread, yielding its base URL once `/readyz` answers; the engine is eager
  (no compilation) and alias polling is off unless a test turns it on.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from microgpt.checkpoint import load_checkpoint, save_checkpoint
from microgpt.data.builtin import cached_path
from microgpt.model import GPT
from microgpt.processes import free_port
from microgpt.registry import RegistryClient
from microgpt.settings import Settings
from microgpt.train import train
from services.inference.app import create_app
from services.registry.local import registry_server

TINY = "tiny@production"
SLOW = "slow@production"
SLOW_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 1024, "dropout": 0.0}


@dataclass
class Registry:
    url: str
    client: RegistryClient


@pytest.fixture(scope="session")
def one_thread_session() -> Iterator[None]:
    """Tiny matmuls on one thread: on a loaded 2-core machine, thread hand-offs cost more than the math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, shared_data: Path, one_thread_session: None
) -> Path:
    """A 1-layer model trained for 150 steps on tiny shakespeare: a few seconds, and its text is not noise."""
    cache = tmp_path_factory.mktemp("cache")
    target = cached_path("shakespeare", cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data / "tinyshakespeare.txt", target)
    out = tmp_path_factory.mktemp("tiny")
    result = train(
        "shakespeare-cpu",
        out_dir=out,
        cache_dir=cache,
        model_overrides={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0},
        train_overrides={"max_steps": 150, "batch_size": 8, "eval_interval": 150, "warmup_steps": 5},
        device="cpu",
    )
    return result.checkpoint


def slow_variant(tiny: Path, out: Path, seed: int) -> Path:
    """Random weights of `SLOW_SHAPE` with tiny's tokenizer; a different seed is a different version."""
    source = load_checkpoint(tiny)
    torch.manual_seed(seed)
    model = GPT(source.config.updated(**SLOW_SHAPE)).eval()
    save_checkpoint(out, model, tokenizer=source.tokenizer, preset="shakespeare-cpu")
    return out


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("registry-home")
    with registry_server({"MICROGPT_HOME": str(home)}) as (url, _):
        client = RegistryClient(url, cache_dir=tmp_path_factory.mktemp("pull-cache"))
        client.push(tiny_checkpoint, "tiny")
        client.set_alias("tiny", "production", 1)
        variants = tmp_path_factory.mktemp("slow")
        client.push(slow_variant(tiny_checkpoint, variants / "v1", seed=1), "slow")
        client.push(slow_variant(tiny_checkpoint, variants / "v2", seed=2), "slow")
        client.set_alias("slow", "production", 1)
        yield Registry(url, client)


@contextlib.contextmanager
def running(app: Any, *, ready_timeout: float = 120.0) -> Iterator[str]:
    """`app` under uvicorn in a thread on a free port; yields the base URL once a model is loaded."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline or not thread.is_alive():
                raise TimeoutError(f"the inference app at {base} did not become ready")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def make_settings(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "home": tmp_path_factory.mktemp("inference-home"),
            "cache": tmp_path_factory.mktemp("inference-cache"),
            "registry_url": registry.url,
            "api_key": None,
            "inference_models": TINY,
            "inference_backend": "eager",
            "inference_poll_seconds": 0,
        }
        return Settings(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
def serve(make_settings: Callable[..., Settings]) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with serve(inference_max_queue=1) as base:` an app with those settings, ready."""

    def start(**overrides: Any) -> contextlib.AbstractContextManager[str]:
        return running(create_app(make_settings(**overrides)))

    return start


@pytest.fixture(scope="session")
def base(serve: Callable[..., contextlib.AbstractContextManager[str]]) -> Iterator[str]:
    """The shared app: tiny and slow loaded, auth off, default limits."""
    with serve(inference_models=f"{TINY},{SLOW}") as url:
        yield url
