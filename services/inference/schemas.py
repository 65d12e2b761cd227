"""Request and response bodies: OpenAI's completions and chat shapes, the native routes, WebSocket frames.

The OpenAI models follow the API reference field for field (names, nulls, `object` tags), so the
official client parses them unchanged. Fields OpenAI has and microgpt does not use (user, suffix,
best_of, ...) are accepted and ignored, as vLLM does; sampling fields OpenAI lacks (top_k, min_p,
repetition_penalty) are accepted as vLLM's extras. `Sampling.to_params` is the one place a request
becomes `microgpt.sampling.SamplingParams`, so every route validates sampling the same way.
Request bodies are strict, as JSON Schema reads them: `false` is not a token id nor a seed, `0`
is not a boolean (`services.common.schemas`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from microgpt.interpret.schemas import InterpretResult
from microgpt.sampling import SamplingParams
from services.common.schemas import FieldError, JsonInt, RequestModel

MAX_STOP = 16  # stop strings per request (OpenAI allows 4)
MAX_N = 16  # choices per request
MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's limit)


class Sampling(BaseModel):
    """The sampling fields every generation request shares."""

    model_config = ConfigDict(strict=True, extra="ignore")

    max_tokens: JsonInt | None = Field(None, ge=1, description="generated tokens; capped by the server")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: JsonInt | None = Field(None, ge=-1, description="vLLM extra; -1 or null disables")
    min_p: float = Field(0.0, ge=0.0, lt=1.0, description="vLLM extra")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="vLLM extra; >1 discourages repeats")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} stop strings, never returned")
    seed: JsonInt | None = Field(None, description="choice i of n samples with seed + i")
    n: JsonInt = Field(1, ge=1, le=MAX_N, description="choices per prompt")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        return [s for s in stops if s]

    def to_params(self, *, default_max_tokens: int, cap: int, stop_token_ids: list[int]) -> SamplingParams:
        """These fields as engine parameters; max_tokens defaults to `default_max_tokens`, capped at `cap`."""
        return SamplingParams(
            max_new_tokens=min(self.max_tokens or default_max_tokens, cap),
            temperature=self.temperature,
            top_k=None if self.top_k in (None, -1, 0) else self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            stop=list(self.stop or []),
            stop_token_ids=stop_token_ids,
            seed=self.seed,
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


# --- OpenAI: completions ------------------------------------------------------------------------


class CompletionRequest(Sampling):
    model: str
    prompt: str | list[str] | list[JsonInt] | list[list[JsonInt]] = Field(
        description="text, texts, token ids, or lists of token ids"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: JsonInt | None = Field(None, ge=0, le=MAX_LOGPROBS, description="top alternatives per token")
    echo: bool = Field(False, description="prepend the prompt text to each choice")


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --- OpenAI: chat -------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(Sampling):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: JsonInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_completion_tokens: JsonInt | None = Field(
        None, ge=1, description="OpenAI's newer name for max_tokens"
    )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --- OpenAI: models -----------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "microgpt"
    # microgpt extras: what was loaded, from where, and how big it is in memory
    name: str
    version: int | None
    precision: str
    weight_bytes: int
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- native routes ------------------------------------------------------------------------------


class GenerateRequest(Sampling):
    model: str
    prompts: list[str] = Field(min_length=1, max_length=256, description="decoded together in one batch")


class GenerateResult(BaseModel):
    index: int
    prompt_index: int
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model: str
    results: list[GenerateResult]
    usage: Usage


class TokenizeRequest(RequestModel):
    model: str
    prompt: str
    add_special_tokens: bool = Field(True, description="start with BOS where the tokenizer has one")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(RequestModel):
    model: str
    tokens: list[JsonInt]


class DetokenizeResponse(BaseModel):
    prompt: str


class ReloadRequest(RequestModel):
    model: str | None = Field(None, description="one loaded model id; default: every loaded model")


class ReloadResult(BaseModel):
    id: str
    old_version: int | None
    new_version: int | None
    swapped: bool


class ReloadResponse(BaseModel):
    results: list[ReloadResult]


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type: invalid_request_error, not_found_error, ...")
    param: str | None
    code: str | None = Field(description="the project's error code")


class OpenAIErrorResponse(BaseModel):
    """An error under /v1: OpenAI's error object (its clients read `error.message`), and `detail`."""

    error: OpenAIError
    detail: str | list[FieldError] | dict[str, Any] | None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]


# --- WebSocket frames ---------------------------------------------------------------------------


class WsParams(Sampling):
    n: Literal[1] = 1  # one answer streams per turn


class WsGenerate(BaseModel):
    """One turn: a chat (messages) or a plain completion (prompt)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["generate"] = "generate"
    id: str | None = Field(None, max_length=128, description="echoed in every event of this turn")
    model: str
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    prompt: str | None = None
    params: WsParams = Field(default_factory=WsParams)


class WsCancel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["cancel"]


class WsAuth(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["auth"]
    api_key: str


WsFrame = Annotated[WsGenerate | WsCancel | WsAuth, Field(discriminator="type")]


# --- POST /v1/interpret ------------------------------------------------------------------------

Analysis = Literal["tokens", "attention", "lens", "attribution", "patch", "heads", "embeddings"]
MAX_INTERPRET_CHARS = 2048  # text length before tokenizing; tokens are bounded again by the route


class InterpretRequest(RequestModel):
    """What to look at: a model, a text and the analyses to run on it (`microgpt.interpret`)."""

    model: str = Field(description="REF[:PRECISION], as for generation")
    text: str = Field(min_length=1, max_length=MAX_INTERPRET_CHARS, description="the text (patch: the clean)")
    analyses: list[Analysis] = Field(min_length=1, max_length=7, description="which analyses to run")
    top_k: JsonInt = Field(5, ge=1, le=MAX_LOGPROBS, description="tokens: next-token guesses per position")
    target: str | None = Field(None, description="attribution: one token (default: the model's top guess)")
    position: JsonInt = Field(-1, description="attribution: the position whose logit is attributed")
    corrupted: str | None = Field(
        None, max_length=MAX_INTERPRET_CHARS, description="patch: the corrupted text, as long as `text`"
    )
    answer: str | None = Field(None, description="patch: the token to recover (default: clean top guess)")
    foil: str | None = Field(None, description="patch: the rival token (default: corrupted top guess)")
    seq_len: JsonInt = Field(16, ge=2, le=64, description="heads: random tokens before the repeat")
    batch: JsonInt = Field(8, ge=1, le=16, description="heads: random sequences")
    seed: JsonInt = Field(0, ge=0, description="heads: the random tokens' seed")
    embeddings_limit: JsonInt = Field(500, ge=3, le=2000, description="embeddings: the first N tokens")

    @field_validator("analyses")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each analysis at most once")
        return value


class InterpretResponse(InterpretResult):
    """One report per analysis asked for; the others are null (left out of the JSON)."""
