"""Text on top of the token engine: prompts in, text out, stop strings honoured.

`TextStream` turns one sequence's tokens into text deltas. It decodes incrementally,
as vLLM and TGI do: each new token is decoded together with the tokens since the last
settled point, and the text beyond what those context tokens decode to is the new
text; it settles once it no longer ends in an unfinished multi-byte character. So a
token costs a decode of two or three tokens, not of the whole output (which made a
long stream quadratic), and word-joining decoders (WordPiece's `##`, SentencePiece's
leading space) still see the token before. Any tail that could still become a stop
string is held back, so a stop string is never streamed, even in part. `complete` and `stream_text` drive
`microgpt.generate.Engine` in-process with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from microgpt.generate import Backend, FinishReason, Request, engine_for, params_per_prompt, stream
from microgpt.model import GPT
from microgpt.sampling import SamplingParams
from microgpt.tokenizers import Tokenizer


class TextStream:
    """Incremental detokenizer for one sequence, with stop strings."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.text = ""  # the decoded output: settled text, then the unsettled tail
        self.stopped = False
        self._settled = ""  # text no later token can change
        self._context = self._read = 0  # ids[_context:_read] decode to the end of `_settled`

    def push(self, token: int) -> str:
        """Add a token; return the text that is now safe to show."""
        self.ids.append(token)
        known = self.tokenizer.decode(self.ids[self._context : self._read])
        window = self.tokenizer.decode(self.ids[self._context :])
        self.text = self._settled + window[len(known) :]
        if len(window) > len(known) and not window.endswith("\ufffd"):
            self._settled = self.text
            self._context, self._read = self._read, len(self.ids)
        for s in self.stop:
            at = self.text.find(s, max(0, self.emitted - len(s)))
            if at != -1:
                self.text, self.stopped = self.text[:at], True
        safe = len(self.text) if self.stopped else self._safe_length()
        delta = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return delta

    def flush(self) -> str:
        """The held-back tail, once the sequence has ended."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    def _safe_length(self) -> int:
        """Length of the prefix that no stop string or unfinished character can change."""
        end = len(self.text)
        if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
            end -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if self.text[end - k : end] == s[:k]:
                    end = min(end, len(self.text) - k)
                    break
        return max(end, self.emitted)


@dataclass
class TextCompletion:
    text: str
    tokens: list[int]
    finish_reason: FinishReason


def _encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, starting with BOS where the tokenizer has one."""
    return [tokenizer.encode(p, add_bos=tokenizer.bos_id is not None) for p in prompts]


def _with_eos(tokenizer: Tokenizer, params: SamplingParams) -> SamplingParams:
    if tokenizer.eos_id is None or tokenizer.eos_id in params.stop_token_ids:
        return params
    return params.model_copy(update={"stop_token_ids": [*params.stop_token_ids, tokenizer.eos_id]})


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    backend: Backend = "eager",
) -> list[TextCompletion]:
    """Continue each prompt until EOS, a stop string or the token limit (batched)."""
    per_row = [_with_eos(tokenizer, p) for p in params_per_prompt(params, len(prompts))]
    prompt_ids = _encode_prompts(tokenizer, prompts)
    requests = [Request(ids, p, model.config) for ids, p in zip(prompt_ids, per_row)]
    streams = [TextStream(tokenizer, p.stop) for p in per_row]
    for _ in engine_for(model, requests, backend=backend).drain():
        for request, text in zip(requests, streams):
            for token in request.tokens[len(text.ids) :]:  # at most one new token a step
                text.push(token)
                if text.stopped:
                    request.cancel("stop")
    return [TextCompletion(s.text, r.tokens, r.finish_reason or "length") for s, r in zip(streams, requests)]


def stream_text(
    model: GPT, tokenizer: Tokenizer, prompt: str, params: SamplingParams, *, backend: Backend = "eager"
) -> Iterator[str]:
    """Yield text deltas of one completion as tokens arrive."""
    params = _with_eos(tokenizer, params)
    text = TextStream(tokenizer, params.stop)
    for token in stream(model, _encode_prompts(tokenizer, [prompt])[0], params, backend=backend):
        if delta := text.push(token):
            yield delta
        if text.stopped:
            return
    if tail := text.flush():
        yield tail
