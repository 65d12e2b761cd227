"""The dashboard in a real browser: Debian's chromium driven by Playwright against `microgpt up`.

`up` runs everything on the embedded defaults (SQLite, local disk, kombu's SQLite broker) on
free ports taken from the `MICROGPT_*_URL` settings. The test opens each page, launches a
`micro` job from the Train form and watches its loss chart grow, sends a chat message and
reads the streamed answer, and saves a screenshot of every page to $MICROGPT_SCREENSHOTS (a
temporary folder by default, so a test run leaves the tree as it found it;
`MICROGPT_SCREENSHOTS=docs/screenshots` refreshes the README's pictures).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prerequisites import debian_tool

from microgpt.clients import TrainerClient
from microgpt.processes import free_port
from microgpt.registry import RegistryClient

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("MICROGPT_SCREENSHOTS") or Path(tempfile.gettempdir()) / "microgpt-screenshots")
pytestmark = pytest.mark.usefixtures("one_thread_session")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`microgpt up` on free ports; yields the URLs once every service and the dashboard answer."""
    root = tmp_path_factory.mktemp("up")
    urls = {name: f"http://127.0.0.1:{free_port()}" for name in ("registry", "trainer", "inference", "ui")}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MICROGPT_") or k.startswith("MICROGPT_TEST")
    }
    env |= {f"MICROGPT_{name.upper()}_URL": url for name, url in urls.items()}
    env |= {
        "MICROGPT_HOME": str(root / "home"),
        "MICROGPT_CACHE": str(root / "cache"),
        "MICROGPT_INFERENCE_BACKEND": "eager",
        "MICROGPT_INFERENCE_POLL_SECONDS": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    log = open(root / "up.log", "wb")  # noqa: SIM115 - the child holds it
    process = subprocess.Popen(
        [sys.executable, "-m", "microgpt", "up"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        probes = [f"{urls[n]}/healthz" for n in ("registry", "trainer", "inference")]
        deadline = time.monotonic() + 120
        for probe in [*probes, f"{urls['ui']}/_stcore/health"]:
            while True:
                assert process.poll() is None, (root / "up.log").read_text()[-3000:]
                try:
                    if httpx.get(probe, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"{probe} never answered"
                time.sleep(0.3)
        yield urls
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    printed = (root / "up.log").read_text(errors="replace")
    assert f"ui: {urls['ui']}" in printed and "dashboard: open http://localhost:" in printed
    assert "heartbeat failed" not in printed  # `up` migrates before the worker's first heartbeat


@pytest.fixture(scope="module")
def browser_page() -> Iterator[object]:
    chromium = debian_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def settle(page: object) -> None:
    """Wait until Streamlit has finished running the page's script."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_timeout(300)


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def step_of(page: object) -> int:
    text = page.locator('[data-testid="stMetric"]', has_text="Step").inner_text()
    found = re.search(r"(\d+)/", text)
    return int(found.group(1)) if found else -1


def test_every_page_in_a_browser_a_job_with_a_growing_loss_chart_and_a_streamed_chat(
    up: dict[str, str], browser_page: object, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    page = browser_page
    registry = RegistryClient(up["registry"], cache_dir=tmp_path)
    registry.push(tiny_checkpoint, "tiny", metrics={"val_loss": 2.5})
    registry.set_alias("tiny", "production", 1)
    ui = up["ui"]

    page.goto(ui + "/")
    page.get_by_text("Inference service").first.wait_for()
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    shot(page, "overview")

    page.goto(ui + "/train")
    page.get_by_text("Submit job").wait_for()
    # long enough (~15 s on an idle core) that the job is still running when its page first draws
    page.get_by_label("Max steps (0: the preset's)").fill("8000")
    page.get_by_label("Output model name (default: derived from the preset or base model)").fill(
        "browser-micro"
    )
    page.get_by_role("button", name="Submit job").click()
    link = page.get_by_role("link", name="follow it on the Jobs page")
    link.wait_for()
    job_id = link.get_attribute("href").split("job=")[1]
    settle(page)
    shot(page, "train")

    page.goto(f"{ui}/jobs?job={job_id}")
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
    deadline = time.monotonic() + 90
    first = step_of(page)
    while step_of(page) <= max(first, 0):  # the fragment redraws as the worker logs steps
        assert time.monotonic() < deadline, "the job page never showed a new step"
        page.wait_for_timeout(500)
    assert (
        page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg').count()
        > 0
    )
    page.wait_for_timeout(2500)
    page.get_by_text(f"Job {job_id}").first.evaluate("e => e.scrollIntoView()")  # the charts in view
    shot(page, "jobs")
    page.get_by_text("Pushed version:").wait_for(timeout=120_000)
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0

    trainer = TrainerClient(up["trainer"])
    other = trainer.submit(
        {"kind": "train", "preset": "micro", "dataset": "names", "train": {"max_steps": 150, "lr": 0.01}}
    )
    while not trainer.job(other.id).done:
        time.sleep(0.5)
    page.goto(f"{ui}/compare?job={job_id}&job={other.id}")
    page.get_by_text("Settings that differ").wait_for()
    settle(page)
    shot(page, "compare")

    page.goto(f"{ui}/registry?model=browser-micro")
    page.get_by_text("Versions of browser-micro").wait_for()
    settle(page)
    shot(page, "registry")

    page.goto(ui + "/playground")
    page.get_by_text("Sampling").first.click()
    page.get_by_label("max_tokens").fill("20")
    page.get_by_label("max_tokens").press("Enter")
    settle(page)
    model = page.get_by_label("Model", exact=True)
    model.click()
    page.keyboard.type("tiny@production")
    page.keyboard.press("Enter")
    settle(page)
    page.get_by_test_id("stChatInputTextArea").fill("Who art thou?")
    page.get_by_test_id("stChatInputTextArea").press("Enter")
    answer = page.locator('[data-testid="stChatMessage"]').nth(1)
    answer.wait_for()
    page.get_by_text("tokens/s").wait_for()
    settle(page)
    assert len(answer.inner_text().strip()) > 0
    assert page.locator('[data-testid="stException"]').count() == 0
    shot(page, "playground")

    page.goto(ui + "/inspect")
    page.get_by_text("Pick a model").wait_for()
    settle(page)
    page.get_by_label("Model", exact=True).click()
    page.keyboard.type("tiny@production")
    page.keyboard.press("Enter")
    settle(page)
    page.get_by_role("button", name="Inspect", exact=True).click()
    page.get_by_text("mean loss").wait_for()
    assert page.locator(".tok").count() > 1  # tokens coloured by surprisal
    page.get_by_role("tab", name="Attention").click()
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    shot(page, "inspect")
