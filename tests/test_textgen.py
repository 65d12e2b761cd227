"""Text on top of the token engine: stop strings are never streamed, even in part."""

from __future__ import annotations

import torch

from microgpt.config import GPTConfig
from microgpt.generate import generate
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.textgen import TextStream, complete, stream_text
from microgpt.tokenizers import CharTokenizer

TOKENIZER = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz .!"])


def feed(text: str, stop: list[str]) -> tuple[list[str], TextStream]:
    stream = TextStream(TOKENIZER, stop)
    deltas = []
    for token in TOKENIZER.encode(text):
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    else:
        deltas.append(stream.flush())
    return deltas, stream


def test_text_before_a_stop_string_is_emitted_and_the_stop_string_is_not() -> None:
    deltas, stream = feed("hello world. bye", ["wor"])
    assert "".join(deltas) == "hello "
    assert stream.stopped
    assert not any("w" in d for d in deltas), "a prefix of the stop string must be held back"


def test_a_held_back_prefix_is_released_when_it_does_not_complete() -> None:
    deltas, stream = feed("we want water", ["wat!"])
    assert "".join(deltas) == "we want water"
    assert not stream.stopped
    assert deltas[0] == "", "'w' could start 'wat!', so it waits"


def test_earliest_stop_string_wins() -> None:
    deltas, _ = feed("abc. def!", ["!", "."])
    assert "".join(deltas) == "abc"


def make_model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    return GPT(config).eval()


def test_complete_and_stream_text_agree_with_the_token_engine() -> None:
    model = make_model()
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    ids = generate(
        model,
        [TOKENIZER.encode("ab", add_bos=True)],
        params.model_copy(update={"stop_token_ids": [TOKENIZER.eos_id]}),
    )[0].tokens
    expected = TOKENIZER.decode(ids)
    (completion,) = complete(model, TOKENIZER, ["ab"], params)
    assert completion.text == expected
    assert "".join(stream_text(model, TOKENIZER, "ab", params)) == expected


def test_complete_stops_at_a_stop_string() -> None:
    model = make_model()
    free = complete(model, TOKENIZER, ["ab"], SamplingParams(temperature=0.0, max_new_tokens=30))[0]
    assert len(free.text) >= 4
    stop = free.text[2:4]
    (stopped,) = complete(
        model, TOKENIZER, ["ab"], SamplingParams(temperature=0.0, max_new_tokens=30, stop=[stop])
    )
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.finish_reason == "stop"
