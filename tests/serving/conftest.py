"""Fixtures for the engine and precision tests: a peaked random model and a tiny trained one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from microgpt.config import GPTConfig
from microgpt.data.builtin import cached_path
from microgpt.model import GPT
from microgpt.train import TrainResult, train


@pytest.fixture(scope="module")
def peaked_model(one_thread: None) -> GPT:
    """A random fp32 model whose weights are scaled up, so its distributions are peaked: a rounding
    difference between batched and single decoding cannot flip a greedy choice."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=48, n_layer=2, n_head=4, n_embd=64, bias=True)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


@pytest.fixture(scope="session")
def data_cache(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding names-32k as a download would leave it (no network)."""
    cache = tmp_path_factory.mktemp("serving-cache")
    target = cached_path("names-32k", cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data / "names.txt", target)
    return cache


@pytest.fixture(scope="session")
def trained_names(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainResult]:
    """The names preset at 2 layers x 64 dims, trained 300 steps (a few seconds on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(
            "names",
            out_dir=tmp_path_factory.mktemp("names-run"),
            cache_dir=data_cache,
            model_overrides={"n_layer": 2},
            train_overrides={"max_steps": 300, "eval_interval": 300, "warmup_steps": 20, "lr": 3e-3},
            device="cpu",
        )
    finally:
        torch.set_num_threads(before)
    yield result
