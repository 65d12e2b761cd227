"""Playground: WebSocket chat streamed token by token, completions with token probabilities, A/B runs.

- Chat sends the whole conversation each turn over `/ws/chat` and writes tokens as they arrive
  (the service leaves out the oldest turns that no longer fit the context, and says how many);
  pressing Stop reruns the page, which closes the stream, and the client cancels the answer on
  the server. The partial answer stays in the conversation, marked as stopped.
- Completion takes every sampling setting of the API and shows each generated token coloured by
  its probability, with the top alternatives on hover (`logprobs`).
- A/B completes the same prompt with the same seed on two models, aliases or precisions
  (`tiny@production:fp32` against `:int8`) side by side, and marks the first token that differs.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from microgpt.clients.inference import CompletionResult
from microgpt.precision import PRECISIONS as MODEL_PRECISIONS
from services.ui.connection import clients
from services.ui.errors import shown_errors
from services.ui.models import model_choices
from services.ui.tokens import first_divergence, token_html

CHAT = "chat_history"
PRECISIONS = ["as named", *MODEL_PRECISIONS]


def with_precision(ref: str | None, precision: str | None) -> str | None:
    """`tiny@production` with `int8` -> `tiny@production:int8` (replacing a precision already named)."""
    if not ref or precision in (None, "as named"):
        return ref
    body, sep, suffix = ref.rpartition(":")
    return f"{body if sep and suffix in PRECISIONS else ref}:{precision}"


def sampling_settings() -> tuple[dict[str, Any], int]:
    """Every sampling field the API accepts, and how many alternatives per token to show."""
    with st.expander("Sampling", expanded=False):
        a, b, c, d = st.columns(4)
        params: dict[str, Any] = {
            "max_tokens": a.number_input("max_tokens", 1, 4096, 64, key="max_tokens"),
            "temperature": b.slider("temperature", 0.0, 2.0, 0.8, 0.05, key="temperature"),
            "top_p": c.slider("top_p", 0.01, 1.0, 1.0, 0.01, key="top_p"),
            "top_k": d.number_input("top_k (0: off)", 0, 100_000, 0, key="top_k"),
            "min_p": a.slider("min_p", 0.0, 0.99, 0.0, 0.01, key="min_p"),
            "repetition_penalty": b.slider(
                "repetition_penalty", 0.1, 3.0, 1.0, 0.05, key="repetition_penalty"
            ),
            "frequency_penalty": c.slider("frequency_penalty", -2.0, 2.0, 0.0, 0.1, key="frequency_penalty"),
            "presence_penalty": d.slider("presence_penalty", -2.0, 2.0, 0.0, 0.1, key="presence_penalty"),
        }
        seed = a.number_input("seed (-1: random)", -1, 2**31 - 1, -1, key="seed")
        stop = b.text_input("stop strings (comma-separated)", key="stop")
        top = c.number_input("alternatives per token", 0, 20, 5, key="logprobs")
    params["top_k"] = params["top_k"] or None
    params["seed"] = None if seed < 0 else int(seed)
    params["stop"] = [s for s in (x.strip() for x in stop.split(",")) if s] or None
    return params, int(top)


def chat(model: str, params: dict[str, Any]) -> None:
    history: list[dict[str, Any]] = st.session_state.setdefault(CHAT, [])
    if st.button("New conversation", key="clear_chat", disabled=not history):
        history.clear()
    for message in history:
        with st.chat_message(message["role"]):
            st.markdown(message["content"] or "_(empty)_")
            if note := message.get("note"):
                st.caption(note)
    prompt = st.chat_input("Message the model", key="chat_input")
    if not prompt:
        return
    history.append({"role": "user", "content": prompt})
    with st.chat_message("user"):
        st.markdown(prompt)
    with st.chat_message("assistant"):
        stop = st.empty()  # a click reruns: the stream ends; emptied once the answer is over
        stop.button("Stop", key="stop_chat", icon=":material/stop_circle:")
        parts: list[str] = []
        outcome: dict[str, Any] = {}

        def tokens() -> Any:
            with clients().inference.chat() as session:
                turn = [{"role": m["role"], "content": m["content"]} for m in history]
                for event in session.stream(model, messages=turn, params=params, turn_id=str(len(history))):
                    if event["type"] == "token":
                        parts.append(event["text"])
                        yield event["text"]
                    elif event["type"] == "done":
                        outcome.update(event)

        try:
            with shown_errors("Chatting"):
                st.write_stream(tokens())
        finally:  # also when Stop interrupts the stream: keep what arrived
            stop.empty()
            timings = outcome.get("timings") or {}
            if outcome:
                note = f"{outcome.get('finish_reason')} · {outcome['usage']['completion_tokens']} tokens"
                if timings.get("tokens_per_s"):
                    note += (
                        f" · {timings['tokens_per_s']:.0f} tokens/s · TTFT {timings['ttft_s'] * 1000:.0f} ms"
                    )
                if dropped := outcome.get("dropped_turns"):
                    left_out = "the oldest turn" if dropped == 1 else f"the {dropped} oldest turns"
                    note += f" · {left_out} left out to fit the context"
            else:
                note = "stopped"
            if parts or outcome:
                history.append({"role": "assistant", "content": "".join(parts), "note": note})
            elif history and history[-1]["role"] == "user":
                history.pop()  # nothing came back: let the user send it again
    if outcome:
        st.rerun()


def show_completion(result: CompletionResult, mark: int | None = None) -> None:
    st.html(token_html(result.tokens, mark))
    st.caption(
        f"{result.model} · {result.completion_tokens} tokens · {result.finish_reason} · "
        "colour: probability of the token (red low, green high); hover a token for the alternatives"
    )


def completion(model: str, params: dict[str, Any], top: int) -> None:
    prompt = st.text_area("Prompt", "ROMEO:", key="completion_prompt")
    if st.button("Complete", type="primary", key="complete"):
        with shown_errors("Completing"):
            st.session_state["completion"] = clients().inference.complete(
                model, prompt, logprobs=top, **params
            )
    if result := st.session_state.get("completion"):
        st.markdown("**Answer**")
        st.code(prompt + result.text, wrap_lines=True)
        st.markdown("**Tokens**")
        show_completion(result)


def ab(choices: list[str], params: dict[str, Any], top: int) -> None:
    left, right = st.columns(2)
    sides = []
    for column, side, default in ((left, "a", 0), (right, "b", min(1, len(choices) - 1))):
        with column:
            ref = st.selectbox(
                f"Model {side.upper()}",
                choices,
                index=default if choices else None,
                accept_new_options=True,
                key=f"ab_{side}",
            )
            precision = st.segmented_control(
                f"Precision {side.upper()}", PRECISIONS, default="as named", key=f"ab_precision_{side}"
            )
            sides.append(with_precision(ref, precision))
    model_a, model_b = sides
    prompt = st.text_area("Prompt", "ROMEO:", key="ab_prompt")
    if params["seed"] is None:
        params = {**params, "seed": 0}
        st.caption("Both sides sample with seed 0 (set another in Sampling).")
    if st.button("Run A and B", type="primary", key="run_ab") and model_a and model_b:
        with shown_errors("Completing A and B"):
            c = clients().inference
            st.session_state["ab"] = (
                c.complete(model_a, prompt, logprobs=top, **params),
                c.complete(model_b, prompt, logprobs=top, **params),
            )
    if pair := st.session_state.get("ab"):
        a, b = pair
        at = first_divergence(a.tokens, b.tokens)
        if at is None:
            st.success("The answers are identical, token for token.")
        else:

            def shown(tokens: list[Any]) -> str:
                return repr(tokens[at].text) if at < len(tokens) else "(end)"

            st.warning(
                f"First divergence at token {at}: A {shown(a.tokens)} vs B {shown(b.tokens)} (outlined)."
            )
        for column, result, name in ((left, a, "A"), (right, b, "B")):
            with column:
                st.markdown(f"**{name}: {result.model}**")
                show_completion(result, at)


st.title("Playground")
mode = st.segmented_control("Mode", ["Chat", "Completion", "A/B"], default="Chat", key="mode") or "Chat"
choices = model_choices()
params, top = sampling_settings()
if mode == "A/B":
    ab(choices, params, top)
else:
    model = st.selectbox("Model", choices, index=0 if choices else None, accept_new_options=True, key="model")
    if not model:
        st.info("No model is loaded or registered yet; type a registry ref such as `names@production`.")
    elif mode == "Chat":
        chat(model, params)
    else:
        completion(model, params, top)
