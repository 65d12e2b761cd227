"""Benchmark (`pytest -m bench tests/ui`): how long dashboard pages take to render at realistic sizes.

Prints the figures instead of asserting a wall time (a loaded machine must not fail a build):
the Registry page against a registry holding 200 versions of one model, and a job chart
built from 20,000 metric points.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from microgpt.registry import RegistryClient
from microgpt.settings import get_settings
from services.registry.local import registry_server

VIEWS = Path(__file__).resolve().parents[2] / "services" / "ui" / "views"
VERSIONS = 200


def small_checkpoint(root: Path) -> Path:
    import torch

    from microgpt.checkpoint import save_checkpoint
    from microgpt.config import GPTConfig
    from microgpt.model import GPT
    from microgpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyz")))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(root, GPT(config), tokenizer=tokenizer, preset="micro")
    return root


def timed_runs(at: AppTest, runs: int = 5) -> list[float]:
    at.run()  # the first run imports and warms caches
    assert not at.exception, [e.value for e in at.exception]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - started)
    assert not at.exception and not at.error, [e.value for e in at.error]
    return times


@pytest.mark.bench
def test_registry_page_with_200_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = small_checkpoint(tmp_path / "ckpt")
    with registry_server({"MICROGPT_HOME": str(tmp_path / "home")}) as (url, _):
        client = RegistryClient(url, cache_dir=tmp_path / "cache")
        for i in range(VERSIONS):
            client.push(checkpoint, "bench", metrics={"val_loss": 3.0 - i / 100, "steps": float(i)})
        client.set_alias("bench", "production", 100)
        monkeypatch.setenv("MICROGPT_REGISTRY_URL", url)
        get_settings.cache_clear()
        try:
            at = AppTest.from_file(str(VIEWS / "registry.py"), default_timeout=60)
            at.query_params["model"] = "bench"
            times = timed_runs(at)
        finally:
            get_settings.cache_clear()
    assert len(at.dataframe[1].value) == VERSIONS
    print(f"\nregistry page, {VERSIONS} versions: median {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms over {len(times)} renders")  # fmt: skip


@pytest.mark.bench
def test_job_chart_with_20000_points() -> None:
    at = AppTest.from_string(
        """
import streamlit as st
from microgpt.clients.trainer import MetricPoint
from services.ui.charts import line_chart, metric_frame

points = [MetricPoint(step=s, kind="train", values={"loss": 3.0 / (1 + s % 977), "lr": 1e-3})
          for s in range(20_000)]
points += [MetricPoint(step=s, kind="eval", values={"val_loss": 2.0}) for s in range(0, 20_000, 50)]
st.altair_chart(line_chart(metric_frame(points, ["loss", "val_loss"]), "loss"))
""",
        default_timeout=60,
    )
    times = timed_runs(at)
    print(f"\njob chart, 20,000 points: median {statistics.median(times) * 1000:.0f} ms per render "
          "(points built, downsampled and the chart specified)")  # fmt: skip
