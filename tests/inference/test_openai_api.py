"""The OpenAI-compatible routes through the official `openai` client, and the SSE wire format byte for byte.

Greedy decoding makes every answer deterministic, so a streamed answer must equal the plain one.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

TINY = "tiny@production"  # the conftest's registry model
pytestmark = pytest.mark.usefixtures("one_thread_session")


@pytest.fixture
def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_loaded_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert f"{TINY}:fp32" in ids and "slow@production:fp32" in ids


def test_completion_plain_and_streamed_agree(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=TINY, prompt="ROMEO:\n", max_tokens=20, temperature=0)
    [choice] = plain.choices
    assert plain.object == "text_completion" and plain.model == f"{TINY}:fp32"
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert plain.usage is not None and plain.usage.completion_tokens <= 20
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    chunks = list(
        client.completions.create(
            model=TINY,
            prompt="ROMEO:\n",
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_chat_plain_and_streamed_agree(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "Speak as a king."},
        {"role": "user", "content": "Who art thou?"},
    ]
    plain = client.chat.completions.create(model=TINY, messages=messages, max_tokens=24, temperature=0)
    [choice] = plain.choices
    assert plain.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and not choice.message.content.startswith(" ")
    assert "\nUser:" not in choice.message.content  # the template's stop string never comes out

    stream = client.chat.completions.create(
        model=TINY, messages=messages, max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_sampling_fields_n_and_seed(client: openai.OpenAI) -> None:
    kwargs = dict(model=TINY, prompt="KING", max_tokens=12, temperature=1.0, n=3, seed=7)
    extra = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1}
    first = client.completions.create(**kwargs, top_p=0.9, presence_penalty=0.5, extra_body=extra)
    again = client.completions.create(**kwargs, top_p=0.9, presence_penalty=0.5, extra_body=extra)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded: replayable
    assert len({c.text for c in first.choices}) > 1  # choice i uses seed + i
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == len("KING") + 1  # BOS, counted once


def test_stop_strings_are_never_returned(client: openai.OpenAI) -> None:
    free = client.completions.create(model=TINY, prompt="\n", max_tokens=40, temperature=0).choices[0].text
    stop = free[5:7]  # two characters the model is known to write
    stopped = client.completions.create(model=TINY, prompt="\n", max_tokens=40, temperature=0, stop=[stop])
    assert stopped.choices[0].text == free[: free.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_logprobs_of_completions_and_chat(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=TINY, prompt="A", max_tokens=5, temperature=0, logprobs=3)
    lp = completion.choices[0].logprobs
    assert lp is not None and "".join(lp.tokens) == completion.choices[0].text
    assert all(len(top) == 3 for top in lp.top_logprobs)
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and max(top.values()) == pytest.approx(logprob)  # greedy took the best
    chat = client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 for t in content)


def test_sse_wire_format_is_openais(base: str) -> None:
    body = {"model": TINY, "prompt": "A", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ")
        chunk = json.loads(event[len("data: ") :])
        assert chunk["object"] == "text_completion" and chunk["id"].startswith("cmpl-")


def test_errors_have_openais_shape_and_the_projects(client: openai.OpenAI, base: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nosuchmodel", prompt="a")
    assert e.value.body["code"] == "model_not_found"
    response = httpx.post(f"{base}/v1/completions", json={"model": TINY, "prompt": "a", "temperature": 9})
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "validation_error" and body["error"]["type"] == "invalid_request_error"
    assert isinstance(body["detail"], list)
    native = httpx.post(f"{base}/tokenize", json={"model": "nosuchmodel", "prompt": "a"})
    assert native.status_code == 404 and native.json()["error"] == "model_not_found"
