"""Batching and backpressure through the HTTP API: batched equals single, and every limit answers clearly.

The disconnect tests use `slow@production` (random weights, 1024-token context), whose answers
take seconds, so a slot still taken after the client left would show in the engine gauges.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import httpx
import openai
import pytest

TINY, SLOW = "tiny@production", "slow@production"
pytestmark = pytest.mark.usefixtures("one_thread_session")


def gauge(base: str, name: str, model: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    match = re.search(rf'^microgpt_inference_{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {model} is not in /metrics"
    return float(match.group(1))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_batched_results_equal_single_ones_under_greedy(serve) -> None:  # noqa: ANN001
    """With the engine's default step (native C++ on CPU, each row computed alone), token for token."""
    prompts = ["ROMEO:", "First Citizen:\nWe", "KING HENRY", "O"]
    params = {"model": TINY, "max_tokens": 30, "temperature": 0}
    with serve(inference_backend="auto") as base:
        batched = httpx.post(f"{base}/generate", json={**params, "prompts": prompts}, timeout=60).json()
        singles = [
            httpx.post(f"{base}/generate", json={**params, "prompts": [p]}, timeout=60).json()["results"][0]
            for p in prompts
        ]
    assert [r["text"] for r in batched["results"]] == [r["text"] for r in singles]
    assert [r["prompt_index"] for r in batched["results"]] == [0, 1, 2, 3]
    assert batched["usage"]["completion_tokens"] == sum(r["completion_tokens"] for r in singles)


def test_context_overflow_is_a_400_like_openais(base: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=TINY, prompt="a" * 100, max_tokens=5)  # context: 64
    assert "maximum context length is 64 tokens" in e.value.message
    assert e.value.body["code"] == "context_length_exceeded"
    native = httpx.post(f"{base}/generate", json={"model": TINY, "prompts": ["a" * 100]})
    assert native.status_code == 400 and native.json()["error"] == "context_length_exceeded"


def test_max_tokens_is_capped_by_the_context_and_the_server(base: str, serve) -> None:  # noqa: ANN001
    body = {"model": TINY, "prompt": "a" * 50, "max_tokens": 100_000, "temperature": 0}
    choice = httpx.post(f"{base}/v1/completions", json=body, timeout=60).json()
    # 51 prompt tokens (BOS + 50) in a 64-token context: at most 64 - 51 + 1 more, never an error
    assert choice["usage"]["completion_tokens"] <= 14
    with serve(inference_max_tokens=3) as capped:
        short = httpx.post(f"{capped}/v1/completions", json={**body, "prompt": "a"}, timeout=60).json()
        assert short["usage"]["completion_tokens"] <= 3


def test_full_queue_is_a_429_with_retry_after(serve) -> None:  # noqa: ANN001
    with serve(inference_max_batch=1, inference_max_queue=2) as base:
        body = {"model": TINY, "prompts": ["a"] * 8, "max_tokens": 60, "temperature": 0}
        response = httpx.post(f"{base}/generate", json=body, timeout=60)
        assert response.status_code == 429, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"] == "queue_full"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=TINY, prompt="a", n=8, max_tokens=60)
        # the refused choices were all freed: the engine is idle and answers again
        assert wait_until(lambda: gauge(base, "requests_running", f"{TINY}:fp32") == 0)
        ok = httpx.post(f"{base}/generate", json={**body, "prompts": ["a"]}, timeout=60)
        assert ok.status_code == 200


def test_a_disconnected_stream_frees_its_slot(base: str) -> None:
    model = f"{SLOW}:fp32"
    body = {"model": SLOW, "prompt": "a", "max_tokens": 1000, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert gauge(base, "requests_running", model) == 1
    # the client is gone long before 1000 tokens: the slot must be free at once
    assert wait_until(lambda: gauge(base, "requests_running", model) == 0, timeout=2.0)


def test_a_disconnected_plain_request_frees_its_slot(base: str) -> None:
    model = f"{SLOW}:fp32"
    body = {"model": SLOW, "prompt": "a", "max_tokens": 1000, "temperature": 0}
    with contextlib.suppress(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    assert wait_until(lambda: gauge(base, "requests_running", model) == 0, timeout=2.0)


def test_bodies_over_the_limit_are_a_413(serve) -> None:  # noqa: ANN001
    with serve(inference_max_body_bytes=1000) as base:
        big = {"model": TINY, "prompt": "a" * 2000}
        declared = httpx.post(f"{base}/v1/completions", json=big)
        assert declared.status_code == 413 and declared.json()["error"] == "too_large"

        def chunks():  # no Content-Length: the limit applies as the body streams in
            yield b'{"model": "tiny@production", "prompt": "'
            yield b"a" * 2000
            yield b'"}'

        streamed = httpx.post(
            f"{base}/tokenize", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
