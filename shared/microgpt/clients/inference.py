"""`InferenceClient`: the inference service's models, completions with logprobs, and WebSocket chat.

    client = InferenceClient.from_settings(get_settings())
    result = client.complete("tiny@production", "ROMEO:", max_tokens=20, logprobs=5, seed=1)
    with client.chat() as chat:
        for event in chat.stream("tiny@production", messages=[{"role": "user", "content": "hi"}]):
            print(event.get("text", ""), end="")

The chat socket follows the protocol of `services.inference.ws_chat`: `start`, one `token` event
per text delta, then `done` (or `error`); closing the socket mid-answer cancels it on the server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from microgpt.clients.http import ServiceClient, ServiceError, ServiceUnavailable

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from microgpt.interpret.schemas import InterpretResult
    from microgpt.settings import Settings

ANALYSES = ("tokens", "attention", "lens", "attribution", "patch", "heads", "embeddings")
INTERPRET_FIELDS = (
    "top_k", "target", "position", "corrupted", "answer", "foil", "seq_len", "batch", "seed",
    "embeddings_limit",
)  # fmt: skip
SAMPLING_FIELDS = (
    "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "frequency_penalty", "presence_penalty", "stop", "seed",
)  # fmt: skip


class LoadedModel(BaseModel):
    """A model the service holds in memory (`GET /v1/models`)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    version: int | None
    precision: str
    weight_bytes: int
    max_model_len: int


class TokenChoice(BaseModel):
    """One generated token, its log-probability and the top alternatives at its position."""

    text: str
    logprob: float | None
    top: dict[str, float]


class CompletionResult(BaseModel):
    model: str
    text: str
    finish_reason: str | None
    tokens: list[TokenChoice]
    prompt_tokens: int
    completion_tokens: int


class InferenceClient(ServiceClient):
    service = "inference service"

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceClient:
        return cls(settings.inference_url, settings.client_api_key(), timeout=120.0)

    def models(self) -> list[LoadedModel]:
        return [LoadedModel.model_validate(m) for m in self.request("GET", "/v1/models")["data"]]

    def complete(
        self, model: str, prompt: str, *, logprobs: int | None = None, **sampling: Any
    ) -> CompletionResult:
        """One completion (`/v1/completions`); `sampling` takes the fields of `SAMPLING_FIELDS`."""
        unknown = set(sampling) - set(SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"unknown sampling fields: {', '.join(sorted(unknown))}")
        body = {"model": model, "prompt": prompt, "logprobs": logprobs, **sampling}
        answer = self.request("POST", "/v1/completions", json=body)
        choice = answer["choices"][0]
        lp = choice.get("logprobs") or {}
        tops = lp.get("top_logprobs") or []
        tokens = [
            TokenChoice(text=t, logprob=p, top=(tops[i] or {}) if i < len(tops) else {})
            for i, (t, p) in enumerate(zip(lp.get("tokens", []), lp.get("token_logprobs", [])))
        ]
        usage = answer.get("usage") or {}
        return CompletionResult(
            model=answer["model"],
            text=choice["text"],
            finish_reason=choice.get("finish_reason"),
            tokens=tokens,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        )

    def interpret(self, model: str, text: str, analyses: list[str], **options: Any) -> InterpretResult:
        """`microgpt.interpret` on the server (`/v1/interpret`): the reports of `analyses` (of
        `ANALYSES`); `options` takes the fields of `INTERPRET_FIELDS` (e.g. `corrupted` for patch)."""
        from microgpt.interpret.schemas import InterpretResult  # loads torch: not at import

        unknown = set(options) - set(INTERPRET_FIELDS)
        if unknown:
            raise TypeError(f"unknown interpret fields: {', '.join(sorted(unknown))}")
        body = {"model": model, "text": text, "analyses": analyses, **options}
        return InterpretResult.model_validate(self.request("POST", "/v1/interpret", json=body))

    def chat(self, timeout: float = 60.0) -> ChatSession:
        """A WebSocket chat session (`/ws/chat`); use it as a context manager."""
        return ChatSession(self.base_url, self.api_key, timeout)


class ChatSession:
    """One `/ws/chat` connection: turns streamed as events; leaving mid-answer cancels it."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float) -> None:
        self.url = base_url.replace("https://", "wss://").replace("http://", "ws://") + "/ws/chat"
        self.base_url, self.api_key, self.timeout = base_url, api_key, timeout
        self.ws: ClientConnection | None = None
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> ChatSession:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            self.ws = self._exit.enter_context(
                connect(self.url, additional_headers=headers, open_timeout=self.timeout)
            )
        except (OSError, TimeoutError) as e:
            raise ServiceUnavailable("inference service", self.base_url, e) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()
        self.ws = None

    def stream(
        self,
        model: str,
        *,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
        params: dict[str, Any] | None = None,
        turn_id: str = "turn",
    ) -> Iterator[dict[str, Any]]:
        """The events of one turn up to and including `done`; an `error` event raises `ServiceError`.

        Closing this generator before `done` sends a cancel frame, so the server stops decoding.
        """
        from websockets.exceptions import ConnectionClosed

        assert self.ws is not None, "use the session as a context manager"
        frame: dict[str, Any] = {"model": model, "id": turn_id, "params": params or {}}
        frame |= {"messages": messages} if messages is not None else {"prompt": prompt or ""}
        finished = False
        try:
            self.ws.send(json.dumps(frame))
            while True:
                event = json.loads(self.ws.recv(timeout=self.timeout))
                if event.get("type") == "error":
                    finished = True
                    raise ServiceError(
                        "inference service", 400, event.get("error", "error"), event.get("detail")
                    )
                yield event
                if event.get("type") == "done":
                    finished = True
                    return
        except (ConnectionClosed, TimeoutError, OSError) as e:
            finished = True
            raise ServiceUnavailable(
                "inference service", self.base_url, f"the chat socket closed: {e}"
            ) from None
        finally:
            if not finished:
                self.cancel()

    def cancel(self) -> None:
        """Stop the answer streaming now and read up to its `done`, so the socket can take a new turn."""
        from websockets.exceptions import ConnectionClosed

        if self.ws is None:
            return
        with contextlib.suppress(ConnectionClosed, TimeoutError, ValueError):
            self.ws.send(json.dumps({"type": "cancel"}))
            while json.loads(self.ws.recv(timeout=5)).get("type") not in ("done", "error"):
                pass
