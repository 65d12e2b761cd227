"""Overview: health and readiness of each service, loaded models, queue, running jobs, serving speed.

Refreshed every few seconds in a fragment; tokens/s is the change of the inference service's
generated-tokens counter between two refreshes, TTFT its histogram's mean, both from `/metrics`.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from microgpt.clients.http import ServiceStatus, probe
from services.ui.connection import clients
from services.ui.errors import shown_errors

REFRESH_S = 5


def status_card(column: st.delta_generator.DeltaGenerator, status: ServiceStatus) -> None:
    state = "ready" if status.ready else "up, not ready" if status.healthy else "down"
    colour = {"ready": "green", "up, not ready": "orange", "down": "red"}[state]
    column.metric(status.service.capitalize(), state)
    column.markdown(f":{colour}-badge[{'healthy' if status.healthy else 'no answer'}]")
    latency = f" · {status.latency_s * 1000:.0f} ms" if status.latency_s is not None else ""
    column.caption(f"{status.url}{latency}")
    if status.detail:
        column.caption(status.detail)


def generation_figures(inference: ServiceStatus) -> tuple[float | None, float | None, float | None]:
    """(generated tokens so far, tokens/s since the last refresh, mean time to first token in s)."""
    tokens = inference.value("microgpt_inference_generation_tokens_total")
    ttft_sum = inference.value("microgpt_inference_time_to_first_token_seconds_sum")
    ttft_count = inference.value("microgpt_inference_time_to_first_token_seconds_count")
    ttft = ttft_sum / ttft_count if ttft_sum is not None and ttft_count else None
    rate = None
    now = time.monotonic()
    previous = st.session_state.get("overview_tokens")
    if tokens is not None:
        if previous is not None and now > previous[0] and tokens >= previous[1]:
            rate = (tokens - previous[1]) / (now - previous[0])
        st.session_state["overview_tokens"] = (now, tokens)
    return tokens, rate, ttft


@st.fragment(run_every=REFRESH_S)
def live() -> None:
    c = clients()
    registry = probe("registry", c.registry.base_url)
    trainer, inference = c.trainer.status(), c.inference.status()
    for column, status in zip(st.columns(3), (registry, trainer, inference)):
        status_card(column, status)

    st.subheader("Serving")
    tokens, rate, ttft = generation_figures(inference)
    a, b, d = st.columns(3)
    a.metric("Generated tokens", "-" if tokens is None else f"{tokens:,.0f}")
    b.metric("Tokens/s (now)", "-" if rate is None else f"{rate:,.1f}")
    d.metric("Time to first token (mean)", "-" if ttft is None else f"{ttft * 1000:,.0f} ms")
    with shown_errors("Listing the models loaded in inference"):
        models = c.inference.models()
        if models:
            table = pd.DataFrame(
                {
                    "model": [m.id for m in models],
                    "version": [m.version for m in models],
                    "precision": [m.precision for m in models],
                    "weights (MiB)": [round(m.weight_bytes / 2**20, 2) for m in models],
                    "context": [m.max_model_len for m in models],
                }
            )
            st.dataframe(table, hide_index=True)
        else:
            st.info("No model is loaded; the first request for one loads it (see Playground).")

    st.subheader("Training")
    queue = trainer.value("microgpt_trainer_queue_length")
    alive = trainer.value("microgpt_trainer_workers", status="alive")
    train_rate = trainer.value("microgpt_trainer_running_tokens_per_second")
    a, b, d = st.columns(3)
    a.metric("Queue depth", "-" if queue is None else f"{queue:.0f}")
    b.metric("Workers alive", "-" if alive is None else f"{alive:.0f}")
    d.metric("Training tokens/s", "-" if train_rate is None else f"{train_rate:,.0f}")
    with shown_errors("Listing the running jobs"):
        running, _ = c.trainer.list_jobs(state="running", limit=20)
        if not running:
            st.caption("No job is running.")
        for job in running:
            eta = f", ETA {job.eta_seconds:.0f} s" if job.eta_seconds is not None else ""
            loss = f", loss {job.loss:.4f}" if job.loss is not None else ""
            text = f"[{job.id}](/jobs?job={job.id}) {job.kind} {job.step}/{job.total_steps or '?'}{loss}{eta}"
            st.progress(job.progress or 0.0, text=text)


st.title("Overview")
live()
