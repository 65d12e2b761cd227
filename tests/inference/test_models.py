"""Registry models: each precision, the LRU, alias moves swapped under load, auth, metrics, native routes."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from microgpt.precision import PRECISIONS

TINY, SLOW = "tiny@production", "slow@production"
pytestmark = pytest.mark.usefixtures("one_thread_session")


def model_cards(base: str, **headers: str) -> dict[str, dict]:
    response = httpx.get(f"{base}/v1/models", headers=headers)
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["data"]}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_loads_on_demand_and_writes_text(serve, precision: str) -> None:  # noqa: ANN001
    with serve() as base:
        body = {"model": f"{TINY}:{precision}", "prompt": "ROMEO:\n", "max_tokens": 16, "temperature": 0}
        response = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == f"{TINY}:{precision}"
        assert response.json()["choices"][0]["text"]
        cards = model_cards(base)
        loaded = cards[f"{TINY}:{precision}"]
        assert loaded["precision"] == precision and loaded["version"] == 1
        fp32_bytes = cards[f"{TINY}:fp32"]["weight_bytes"]  # preloaded
        assert (
            loaded["weight_bytes"] <= fp32_bytes
            if precision == "fp32"
            else loaded["weight_bytes"] < fp32_bytes
        )


def test_lru_keeps_at_most_max_models(serve) -> None:  # noqa: ANN001
    with serve(inference_max_models=1) as base:
        body = {"model": f"{TINY}:bf16", "prompt": "A", "max_tokens": 2}
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=120).status_code == 200
        assert list(model_cards(base)) == [f"{TINY}:bf16"]  # fp32 (preloaded) was the least recently used


def test_alias_move_hot_swaps_without_failing_in_flight_requests(serve, registry) -> None:  # noqa: ANN001
    with serve(inference_models=SLOW) as base:
        old = model_cards(base)[f"{SLOW}:fp32"]["version"]
        new = 3 - old  # versions 1 and 2 exist
        body = {"model": SLOW, "prompt": "a", "max_tokens": 300, "temperature": 0, "stream": True}
        events: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as response:
                events.extend(line for line in response.iter_lines() if line)

        in_flight = threading.Thread(target=stream)
        in_flight.start()
        time.sleep(0.3)  # the stream is under way on the old version
        registry.client.set_alias("slow", "production", new)
        reload = httpx.post(f"{base}/admin/reload", json={}, timeout=120).json()
        assert reload["results"] == [
            {"id": f"{SLOW}:fp32", "old_version": old, "new_version": new, "swapped": True}
        ]
        assert model_cards(base)[f"{SLOW}:fp32"]["version"] == new
        fresh = httpx.post(
            f"{base}/v1/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=60
        )
        assert fresh.status_code == 200
        in_flight.join(timeout=120)
        assert events[-1] == "data: [DONE]"
        last = json.loads(events[-2][len("data: ") :])
        assert last["choices"][0]["finish_reason"] in ("stop", "length")  # finished on the old one, unharmed
        again = httpx.post(f"{base}/admin/reload", json={"model": SLOW}, timeout=60).json()
        assert again["results"][0]["swapped"] is False  # nothing moved since


def test_alias_polling_swaps_by_itself(serve, registry) -> None:  # noqa: ANN001
    with serve(inference_models=SLOW, inference_poll_seconds=0.2) as base:
        new = 3 - model_cards(base)[f"{SLOW}:fp32"]["version"]
        registry.client.set_alias("slow", "production", new)
        deadline = time.monotonic() + 30
        while model_cards(base)[f"{SLOW}:fp32"]["version"] != new:
            assert time.monotonic() < deadline, "the poll did not pick up the alias move"
            time.sleep(0.1)


def test_auth_guards_the_apis_and_leaves_health_and_metrics_public(serve) -> None:  # noqa: ANN001
    with serve(api_key="sesame") as base:
        missing = httpx.get(f"{base}/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        wrong = httpx.post(
            f"{base}/tokenize", json={"model": TINY, "prompt": "a"}, headers={"Authorization": "Bearer x"}
        )
        assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
        good = {"Authorization": "Bearer sesame"}
        assert (
            httpx.post(f"{base}/tokenize", json={"model": TINY, "prompt": "a"}, headers=good).status_code
            == 200
        )
        assert TINY + ":fp32" in model_cards(base, **good)
        for path in ("/generate", "/detokenize", "/admin/reload", "/v1/completions", "/v1/chat/completions"):
            assert httpx.post(f"{base}{path}", json={}).status_code == 401, path
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{base}{path}").status_code == 200, path


def test_auth_off_needs_no_key(base: str) -> None:
    assert httpx.post(f"{base}/tokenize", json={"model": TINY, "prompt": "a"}).status_code == 200


def test_tokenize_and_detokenize_round_trip(base: str) -> None:
    tokens = httpx.post(f"{base}/tokenize", json={"model": TINY, "prompt": "ROMEO:"}).json()
    assert tokens["count"] == len("ROMEO:") + 1 and tokens["max_model_len"] == 64  # BOS first
    bare = httpx.post(
        f"{base}/tokenize", json={"model": TINY, "prompt": "ROMEO:", "add_special_tokens": False}
    )
    assert bare.json()["tokens"] == tokens["tokens"][1:]
    text = httpx.post(f"{base}/detokenize", json={"model": TINY, "tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "ROMEO:"}
    bad = httpx.post(f"{base}/detokenize", json={"model": TINY, "tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_prompt"
    unencodable = httpx.post(f"{base}/tokenize", json={"model": TINY, "prompt": "\u2603"})
    assert unencodable.status_code == 400


def test_metrics_are_prometheus_named_and_labelled_by_model(base: str) -> None:
    httpx.post(f"{base}/v1/completions", json={"model": TINY, "prompt": "A", "max_tokens": 4}, timeout=60)
    text = httpx.get(f"{base}/metrics").text
    model = f'model="{TINY}:fp32"'
    for name in (
        "microgpt_inference_request_duration_seconds_bucket",
        "microgpt_inference_time_to_first_token_seconds_bucket",
        "microgpt_inference_inter_token_latency_seconds_bucket",
        "microgpt_inference_prompt_tokens_total",
        "microgpt_inference_generation_tokens_total",
        "microgpt_inference_requests_running",
        "microgpt_inference_requests_queued",
        "microgpt_inference_batch_size",
        "microgpt_inference_model_load_seconds_count",
    ):
        assert re.search(rf"^{name}{{[^}}]*{re.escape(model)}", text, re.M), name
    label_sets = re.findall(r"^microgpt_inference_\w+\{([^}]*)\}", text, re.M)
    names = {pair.split("=")[0] for labels in label_sets for pair in labels.split(",")}
    assert names == {"model", "le"}  # by model (and histogram bucket), never by request
