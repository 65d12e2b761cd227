"""OpenAI chat messages rendered in microgpt's plain-text chat template (`microgpt.chat`).

The template has two roles, one line per message, so this is how OpenAI's roles map onto it:

    User: <system and developer messages, then the user message, joined by spaces>
    Assistant: <assistant message>
    ...
    User: <the last user message>
    Assistant:

System and developer messages have no line of their own; their text is put in front of the
next user message, and consecutive user messages are joined into one line. The mapping is
`microgpt.chat.to_turns`, the one the chat presets' training data is rendered with
(`microgpt.chat.render_segments`), so a model is prompted as it was trained. The
conversation must end with a user message. The reply stops at EOS or the stop string
`microgpt.chat.STOP` ("\\nUser:"), and loses the one space after "Assistant:", exactly as
`microgpt chat` does. Over REST nothing is trimmed: a conversation longer than the context
is a 400, as OpenAI answers. The WebSocket chat, a conversation a person keeps typing into,
drops its oldest turns to fit as `microgpt chat` does (`submission.fit_chat`).
"""

from __future__ import annotations

from collections.abc import Sequence

from microgpt.chat import STOP, Turn, render, to_turns
from microgpt.errors import Invalid
from services.inference.schemas import ChatMessage

__all__ = ["STOP", "chat_turns", "render_messages"]


def chat_turns(messages: Sequence[ChatMessage]) -> tuple[list[Turn], str]:
    """An OpenAI conversation as the template's turns and the last user message; 400 if it does
    not end with the user."""
    if messages[-1].role != "user":
        raise Invalid(
            "invalid_request",
            f"the last message must have the role 'user', not {messages[-1].role!r}",
        )
    return to_turns((m.role, m.text()) for m in messages)


def render_messages(messages: Sequence[ChatMessage]) -> str:
    """The prompt text (without BOS) of an OpenAI conversation; 400 if it does not end with the user."""
    return render(*chat_turns(messages))
