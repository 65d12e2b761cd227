"""Chat with a checkpoint: a plain-text turn template, a history trimmed to the context, streamed replies.

    microgpt chat runs/chat/checkpoint --temperature 0.8 --top-k 40
    printf 'hello\\nhow are you\\n' | microgpt chat runs/chat/checkpoint --temperature 0   # piped

The template is plain text, one line per message, so any tokenizer that knows these
characters can chat and a model trained on such transcripts learns it:

    User: hello
    Assistant: hi there
    User: how are you
    Assistant:

The prompt is BOS (where the tokenizer has one) + the rendered history + the new user line
+ "Assistant:"; the reply is what the model writes until EOS, the stop string "\\nUser:" or
the token limit, without the one space after the colon. Newlines inside a message become
spaces, so a message can never fake another turn.

Training renders a finished conversation with the same template (`render_segments`): the
text is the prompt of its last turn followed by " " + the reply, so every prompt a model
sees when chatting is a prefix of what it was trained on. The pieces the assistant writes
(its replies, each with its end marker: the stop string "\nUser:" before the next turn, or
EOS after the last, which the data preparation appends) are marked; supervised finetuning
puts the loss on those only. OpenAI-style roles map onto the two template roles in `to_turns`, for
training data and for the inference service alike.

Design choices a reader must know:

- History is kept whole in `ChatSession.history`; each prompt takes the most recent turns
  that fit the context window with room for the reply, dropping the oldest first and
  never cutting a turn in half. If the new message alone does not fit, its tail is kept.
  The reply's room is `max_new_tokens`, capped at half the context so that a prompt always
  fits; token counts come from encoding the whole rendered prompt, so they are exact for
  any tokenizer (pieces encoded apart may merge differently).
- With a seed, reply i uses seed + i: a session replays exactly, yet replies differ.
- `reply(text)` renders and encodes the prompt at once (an unencodable character is a
  ValueError before anything streams), then returns an iterator of text deltas; the turn
  joins the history when the iterator ends (or is closed early, with what was streamed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microgpt.model_source import add_model_arguments

if TYPE_CHECKING:  # torch loads only when a session starts
    from microgpt.generate import Backend
    from microgpt.model import GPT
    from microgpt.sampling import SamplingParams
    from microgpt.tokenizers import Tokenizer

USER, ASSISTANT = "User:", "Assistant:"
STOP = "\n" + USER
TEMPLATE_VERSION = 1  # bump when rendering changes: data prepared for SFT is then prepared again
QUIT = "/quit"


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str


def one_line(text: str) -> str:
    """A message as it appears in the template: newlines become spaces, ends stripped."""
    return " ".join(text.splitlines()).strip()


def render(history: Sequence[Turn], user: str) -> str:
    """The prompt text (without BOS) for `user`'s message after `history`; see the module docstring."""
    lines = [f"{USER} {one_line(t.user)}\n{ASSISTANT} {one_line(t.assistant)}\n" for t in history]
    return "".join(lines) + f"{USER} {one_line(user)}\n{ASSISTANT}"


def to_turns(messages: Iterable[tuple[str, str]]) -> tuple[list[Turn], str]:
    """OpenAI-style (role, text) messages as template turns, and the user text after the last reply.

    The template has two roles. System and developer messages have no line of their own:
    their text goes in front of the next user message, and consecutive user messages are
    joined into one line (by spaces). Each assistant message closes a turn; the user text
    still waiting for a reply is returned apart ("" when the conversation ends with a reply).
    """
    turns: list[Turn] = []
    pending: list[str] = []  # system and user text waiting for the next assistant line
    for role, text in messages:
        if role == "assistant":
            turns.append(Turn(" ".join(pending), text))
            pending = []
        elif text:
            pending.append(text)
    return turns, " ".join(pending)


def render_segments(turns: Sequence[Turn]) -> list[tuple[str, bool]]:
    """A finished conversation as training text, in pieces marked True where the assistant writes.

    Joined, the pieces are `render(turns[:-1], turns[-1].user)` + " " + the last reply. A reply's
    piece starts with the space after "Assistant:" (the model writes it) and, when another turn
    follows, ends with STOP ("\nUser:"): the model learns to end its turn with the very string
    that stops a reply. After the last reply comes EOS, which the data preparation appends.
    """
    pieces: list[tuple[str, bool]] = []
    for i, turn in enumerate(turns):
        question = f"{USER} {one_line(turn.user)}\n{ASSISTANT}"
        pieces.append((question[len(USER) :] if i else question, False))  # "User:" ended the last reply
        pieces.append((f" {one_line(turn.assistant)}{STOP if i < len(turns) - 1 else ''}", True))
    return pieces


def fit_turns(history: Sequence[Turn], user: str, count: Callable[[str], int], budget: int) -> int | None:
    """How many of the oldest turns to drop so the prompt's token count fits `budget`: the fewest.

    Found by bisection, a handful of counts however long the history (a prompt with fewer turns
    never has more tokens); None when the new message alone does not fit.
    """
    if count(render([], user)) > budget:
        return None
    lo, hi = 0, len(history)  # dropping hi turns fits; find the smallest such
    while lo < hi:
        mid = (lo + hi) // 2
        if count(render(history[mid:], user)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit_prompt(
    history: Sequence[Turn], user: str, count: Callable[[str], int], budget: int
) -> tuple[str, int]:
    """The prompt from the most recent turns whose token count fits `budget`, and how many were dropped.

    Oldest turns go first, whole. If the new message alone is too long, its longest tail that
    fits is kept (all history dropped). A budget too small for the bare template is a ValueError.
    """
    dropped = fit_turns(history, user, count, budget)
    if dropped is not None:
        return render(history[dropped:], user), dropped
    message = one_line(user)
    if count(render([], "")) > budget:
        raise ValueError(
            f"the context has room for {budget} prompt tokens, too few for even an empty chat turn"
        )
    lo, hi = 0, len(message)  # find the smallest cut whose tail fits: count(render(tail)) <= budget
    while lo < hi:
        mid = (lo + hi) // 2
        if count(render([], message[mid:])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return render([], message[lo:]), len(history)


class ChatSession:
    """A conversation with one model; see the module docstring for the template and trimming."""

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, params: SamplingParams, *, backend: Backend = "eager"
    ) -> None:
        self.model, self.tokenizer, self.params, self.backend = model, tokenizer, params, backend
        self.history: list[Turn] = []
        self.dropped = 0  # turns left out of the last prompt
        block = model.config.block_size
        self.reply_room = min(params.max_new_tokens, block // 2)
        self.budget = block - self.reply_room
        try:
            self._count(render([Turn("", "")], ""))
        except ValueError as e:
            raise ValueError(
                f"this tokenizer cannot encode the chat template ({USER!r}, {ASSISTANT!r}): {e}"
            ) from e

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_bos=self.tokenizer.bos_id is not None))

    def prompt_for(self, text: str) -> str:
        """The prompt text for `text` after the history, trimmed to the context."""
        try:
            self._count(one_line(text))
        except ValueError as e:
            raise ValueError(f"the message cannot be encoded: {e}") from e
        prompt, self.dropped = fit_prompt(self.history, text, self._count, self.budget)
        return prompt

    def reply(self, text: str) -> Iterator[str]:
        """Stream the reply to `text` as text deltas; the turn is added to the history at the end."""
        prompt = self.prompt_for(text)  # errors surface here, not at the first next()
        params = self.params.model_copy(
            update={
                "max_new_tokens": self.reply_room,
                "stop": [*self.params.stop, STOP],
                "seed": None if self.params.seed is None else self.params.seed + len(self.history),
            }
        )
        return self._stream(text, prompt, params)

    def _stream(self, text: str, prompt: str, params: SamplingParams) -> Iterator[str]:
        from microgpt.textgen import stream_text

        parts: list[str] = []
        try:
            for delta in stream_text(self.model, self.tokenizer, prompt, params, backend=self.backend):
                if not parts and delta.startswith(" "):  # the space after "Assistant:"
                    delta = delta[1:]
                if delta:
                    parts.append(delta)
                    yield delta
        finally:
            self.history.append(Turn(one_line(text), one_line("".join(parts))))


def cmd_chat(args: argparse.Namespace) -> None:
    from microgpt.loading import load_model
    from microgpt.sampling import SamplingParams

    ckpt = load_model(args.checkpoint, precision=args.precision)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    session = ChatSession(ckpt.model, ckpt.text_tokenizer(), params, backend=args.backend)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"chatting with {args.checkpoint} ({ckpt.config.block_size}-token context); "
            f"{QUIT} or Ctrl-D ends",
            file=sys.stderr,
        )
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:  # EOF
            break
        text = line.strip()
        if text == QUIT:
            break
        if not text:
            continue
        try:
            stream = session.reply(text)
        except ValueError as e:  # one bad message does not end the session
            print(f"microgpt chat: error: {' '.join(str(e).split())}", file=sys.stderr)
            continue
        if interactive:
            print("bot> ", end="", flush=True)
        for delta in stream:
            print(delta, end="", flush=True)
        print(flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `chat` to the main parser's subcommands."""
    p = subparsers.add_parser("chat", help="chat with a checkpoint (streams replies; reads stdin lines)")
    add_model_arguments(p)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=200, help="reply length (at most half the context)")
    p.add_argument("--seed", type=int, default=None, help="reply i uses seed + i")
    p.add_argument("--backend", choices=["eager", "compiled", "native"], default="eager", help="decode step")
    p.set_defaults(run=cmd_chat)
