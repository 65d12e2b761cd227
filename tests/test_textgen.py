"""Text on top of the token engine: stop strings are never streamed, even in part."""

from __future__ import annotations

import random

import pytest
import torch

from microgpt.config import GPTConfig
from microgpt.generate import generate
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.textgen import TextStream, complete, stream_text
from microgpt.tokenizers import TOKENIZER_KINDS, CharTokenizer, Tokenizer, train_tokenizer

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


MIXED_TEXT = [
    "The quick brown fox jumps over the lazy dog. Don't panic, it's 42!",
    "Grüße aus Zürich, café crème. 日本語のテキスト 🙂🚀 <|> #@&",
    "  indented\tline with   spaces\nand a newline",
]


@pytest.fixture(scope="module")
def every_kind() -> dict[str, Tokenizer]:
    corpus = [f"{t} {i}" for i in range(20) for t in MIXED_TEXT]
    return {kind: train_tokenizer(kind, iter(corpus), 300) for kind in TOKENIZER_KINDS}


def streamed(tokenizer: Tokenizer, ids: list[int]) -> str:
    stream = TextStream(tokenizer)
    return "".join(stream.push(t) for t in ids) + stream.flush()


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_incremental_deltas_add_up_to_decoding_the_whole_output(kind: str, every_kind: dict) -> None:
    tokenizer = every_kind[kind]
    rng = random.Random(kind)
    outputs = [tokenizer.encode(t) for t in MIXED_TEXT]
    outputs += [[rng.randrange(tokenizer.vocab_size) for _ in range(200)] for _ in range(5)]  # any ids
    for ids in outputs:
        assert streamed(tokenizer, ids) == tokenizer.decode(ids)


def test_a_character_split_across_byte_tokens_is_held_until_whole(every_kind: dict) -> None:
    tokenizer = every_kind["byte"]
    stream = TextStream(tokenizer)
    ids = tokenizer.encode("é🙂")  # 2 + 4 bytes
    deltas = [stream.push(t) for t in ids]
    assert deltas == ["", "é", "", "", "", "🙂"]


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
