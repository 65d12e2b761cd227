"""WebSocket chat: turns over one socket, cancel mid-answer, bad frames, auth by header, query or frame."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from microgpt.chat import Turn, render
from microgpt.generate import Engine
from microgpt.loading import load_model

TINY, SLOW = "tiny@production", "slow@production"
pytestmark = pytest.mark.usefixtures("one_thread_session")


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/ws/chat" + query


def events_until_done(ws: ClientConnection) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=60))
        events.append(event)
        if event["type"] in ("done", "error"):
            return events


def test_several_turns_over_one_socket(base: str) -> None:
    with connect(ws_url(base)) as ws:
        # short turns: tiny reads 64 tokens, and the second prompt holds the whole first turn
        chat = {"model": TINY, "id": "t1", "params": {"max_tokens": 6, "temperature": 0}}
        ws.send(json.dumps({**chat, "messages": [{"role": "user", "content": "Who?"}]}))
        first = events_until_done(ws)
        assert first[0]["type"] == "start" and first[0]["id"] == "t1" and first[0]["prompt_tokens"] > 0
        done = first[-1]
        assert done["type"] == "done" and done["finish_reason"] in ("stop", "length")
        assert done["text"] == "".join(e["text"] for e in first if e["type"] == "token")
        assert done["usage"]["completion_tokens"] >= len([e for e in first if e["type"] == "token"])
        assert done["timings"]["ttft_s"] > 0 and done["timings"]["tokens_per_s"] > 0

        ws.send("this is not json")  # a bad frame: an error event, and the socket stays usable
        bad = json.loads(ws.recv(timeout=10))
        assert bad["type"] == "error" and bad["error"] == "invalid_frame"
        ws.send(json.dumps({"model": TINY, "prompt": "x", "params": {"temperature": -1}}))
        assert json.loads(ws.recv(timeout=10))["error"] == "invalid_frame"

        follow_up = [
            {"role": "user", "content": "Who?"},
            {"role": "assistant", "content": done["text"]},
            {"role": "user", "content": "Why?"},
        ]
        ws.send(json.dumps({**chat, "id": "t2", "messages": follow_up}))
        second = events_until_done(ws)
        assert second[-1]["type"] == "done" and second[-1]["id"] == "t2"
        assert second[0]["dropped_turns"] == 0 and second[0]["prompt_tokens"] > first[0]["prompt_tokens"]

        ws.send(json.dumps({"model": TINY, "id": "t3", "prompt": "ROMEO:", "params": {"max_tokens": 5}}))
        assert events_until_done(ws)[-1]["usage"]["completion_tokens"] <= 5


def hold_decoding_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines decode no step while a running request is not cancelled (for at most 30 s).

    The app runs in this process, so this makes "cancel arrives before the answer ends"
    certain, however fast decoding gets.
    """
    decode = Engine._decode

    def held(engine: Engine) -> None:
        deadline = time.monotonic() + 30
        while not all(r.request.cancelled for r in engine.rows) and time.monotonic() < deadline:
            time.sleep(0.001)
        decode(engine)

    monkeypatch.setattr(Engine, "_decode", held)


def test_cancel_ends_the_answer_and_the_socket_goes_on(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with connect(ws_url(base)) as ws:
        ws.send(json.dumps({"model": SLOW, "prompt": "a", "params": {"max_tokens": 1}}))  # loaded and warm
        assert events_until_done(ws)[-1]["type"] == "done"
        hold_decoding_until_cancelled(monkeypatch)
        ws.send(json.dumps({"model": SLOW, "id": "long", "prompt": "a", "params": {"max_tokens": 1000}}))
        assert json.loads(ws.recv(timeout=60))["type"] == "start"
        ws.send(json.dumps({"model": SLOW, "prompt": "b"}))  # one answer at a time
        busy = None
        while busy is None:
            event = json.loads(ws.recv(timeout=60))
            if event["type"] == "error":
                busy = event
        assert busy["error"] == "busy"
        ws.send(json.dumps({"type": "cancel"}))
        rest = events_until_done(ws)
        monkeypatch.undo()
        assert rest[-1]["type"] == "done" and rest[-1]["finish_reason"] == "cancelled"
        assert rest[-1]["usage"]["completion_tokens"] < 1000
        ws.send(json.dumps({"type": "cancel"}))  # nothing to cancel now
        assert json.loads(ws.recv(timeout=10))["error"] == "not_generating"
        ws.send(json.dumps({"model": TINY, "prompt": "A", "params": {"max_tokens": 3}}))
        assert events_until_done(ws)[-1]["type"] == "done"


def test_ws_auth_by_header_query_or_first_frame(serve) -> None:  # noqa: ANN001
    turn = json.dumps({"model": TINY, "prompt": "A", "params": {"max_tokens": 2}})
    with serve(api_key="k1,k2") as base:
        with connect(ws_url(base), additional_headers={"Authorization": "Bearer k1"}) as ws:
            ws.send(turn)
            assert events_until_done(ws)[-1]["type"] == "done"
        with connect(ws_url(base, "?api_key=k2")) as ws:
            ws.send(turn)
            assert events_until_done(ws)[-1]["type"] == "done"
        with connect(ws_url(base)) as ws:
            ws.send(json.dumps({"type": "auth", "api_key": "k2"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
            ws.send(turn)
            assert events_until_done(ws)[-1]["type"] == "done"
        for query, first in [("?api_key=wrong", None), ("", turn)]:
            with connect(ws_url(base, query)) as ws:
                if first:
                    ws.send(first)
                refused = json.loads(ws.recv(timeout=10))
                assert refused["type"] == "error" and refused["error"] in ("unauthorized", "forbidden")
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_frames_are_text_within_the_body_limit_and_errors_echo_the_turn_id(base: str) -> None:
    turn = {"model": TINY, "id": "b1", "prompt": "A", "params": {"max_tokens": 2}}
    with connect(ws_url(base)) as ws:
        ws.send(json.dumps(turn).encode())  # the protocol is text: a binary frame is not a turn
        binary = json.loads(ws.recv(timeout=10))
        assert binary["type"] == "error" and binary["error"] == "invalid_frame"
        assert "binary" in binary["detail"]

        ws.send(json.dumps({**turn, "id": "t9", "params": {"temperature": -1}}))
        bad = json.loads(ws.recv(timeout=10))
        assert bad["error"] == "invalid_frame" and bad["id"] == "t9"
        ws.send(json.dumps({**turn, "id": 7}))  # an id the schema refuses is not echoed
        assert json.loads(ws.recv(timeout=10))["id"] is None

        ws.send(json.dumps({**turn, "id": "snow", "prompt": "ROMEO \u2603"}))
        assert json.loads(ws.recv(timeout=10))["error"] == "invalid_prompt"  # tiny cannot encode the snowman
        # Far over tiny's 64-token context: refused from the prompt's beginning, so the character it
        # cannot encode, at the end, is never reached.
        ws.send(json.dumps({**turn, "id": "long", "prompt": "ROMEO " * 20_000 + "\u2603"}))
        long = json.loads(ws.recv(timeout=10))
        assert long["error"] == "context_length_exceeded" and long["id"] == "long"
        assert "at least" in long["detail"]

        ws.send(json.dumps(turn))  # the socket is still usable
        assert events_until_done(ws)[-1]["type"] == "done"

        ws.send(json.dumps({**turn, "prompt": "a" * (1 << 20)}))  # over REST's 1 MiB body limit
        too_large = json.loads(ws.recv(timeout=10))
        assert too_large["type"] == "error" and too_large["error"] == "too_large"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_rest_refuses_a_prompt_far_over_the_context_from_its_beginning(base: str) -> None:
    body = {"model": TINY, "prompt": "ROMEO " * 20_000 + "\u2603", "max_tokens": 1}
    response = httpx.post(f"{base}/v1/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_a_long_conversation_drops_its_oldest_turns_over_ws_and_is_a_400_over_rest(
    base: str, tiny_checkpoint: Path
) -> None:
    """tiny reads 64 tokens: with 8 kept for the reply, the fewest oldest turns go, whole."""
    turns = [Turn(f"Hi {name}", "Yes") for name in "abcdefghijkl"]
    messages = [
        m
        for t in turns
        for m in ({"role": "user", "content": t.user}, {"role": "assistant", "content": t.assistant})
    ]
    messages.append({"role": "user", "content": "Go"})
    params = {"max_tokens": 8, "temperature": 0}

    rest = httpx.post(
        f"{base}/v1/chat/completions", json={"model": TINY, "messages": messages, **params}, timeout=30
    )
    assert rest.status_code == 400 and rest.json()["error"]["code"] == "context_length_exceeded"

    with connect(ws_url(base)) as ws:
        ws.send(json.dumps({"model": TINY, "id": "long", "messages": messages, "params": params}))
        events = events_until_done(ws)
    start, done = events[0], events[-1]
    assert done["type"] == "done" and start["dropped_turns"] == done["dropped_turns"]

    tokenizer = load_model(tiny_checkpoint).tokenizer

    def tokens(kept: int) -> int:
        return len(tokenizer.encode(render(turns[len(turns) - kept :], "Go"), add_bos=True))

    kept = len(turns) - done["dropped_turns"]
    assert 0 < kept < len(turns) and start["prompt_tokens"] == tokens(kept) <= 64 - 8 < tokens(kept + 1)
