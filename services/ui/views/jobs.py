"""Jobs: the job table, and one job's live charts, log tail, cancel button and pushed version.

The job's part of the page is a fragment that reruns every `REFRESH_S` seconds while the job
is live: it fetches only the metric points after the last one it has (kept in session state)
and redraws, so the page is never reloaded and widgets elsewhere keep their values.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from microgpt.clients.trainer import KINDS, TERMINAL, Job, LogLine, MetricPoint
from services.ui.charts import line_chart, metric_frame
from services.ui.connection import clients
from services.ui.errors import shown_errors

REFRESH_S = 1.5
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
LOG_TAIL = 30


def version_link(ref: str | None) -> str:
    """A Markdown link to a registry ref `name/N` on the Registry page."""
    if not ref or "/" not in ref:
        return ref or "-"
    name, version = ref.rsplit("/", 1)
    return f"[{ref}](/registry?model={name}&version={version})"


def jobs_table(jobs: list[Job]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [j.id for j in jobs],
            "kind": [j.kind for j in jobs],
            "state": [j.state for j in jobs],
            "step": [f"{j.step}/{j.total_steps}" if j.total_steps else str(j.step) for j in jobs],
            "progress": [j.progress or 0.0 for j in jobs],
            "ETA (s)": [round(j.eta_seconds) if j.eta_seconds is not None else None for j in jobs],
            "loss": [j.loss for j in jobs],
            "val loss": [j.val_loss for j in jobs],
            "model": [j.registry_version or j.output_model or j.base_model for j in jobs],
            "created": [j.created_at for j in jobs],
        }
    )


def new_points(job_id: str) -> list[MetricPoint]:
    """Every metric point of the job so far; only the ones after the cached last step are fetched.

    The step before the last is fetched again, so an eval point logged after the train point
    of the same step is not lost; (step, kind) pairs are unique, so re-fetched points replace.
    """
    cache: dict[str, Any] = st.session_state.setdefault(f"points:{job_id}", {"points": {}, "last": None})
    since = None if cache["last"] is None else max(cache["last"] - 1, 0)
    for p in clients().trainer.metrics(job_id, since=since):
        cache["points"][(p.step, p.kind)] = p
        cache["last"] = max(cache["last"] or 0, p.step)
    return sorted(cache["points"].values(), key=lambda p: (p.step, p.kind))


def log_tail(job_id: str) -> list[LogLine]:
    """The job's last LOG_TAIL log lines; only the lines after the cached last one are fetched."""
    tail: list[LogLine] = st.session_state.setdefault(f"logs:{job_id}", [])
    tail += clients().trainer.logs(job_id, after=tail[-1].id if tail else 0, limit=10_000)
    del tail[:-LOG_TAIL]
    return tail


def charts(points: list[MetricPoint]) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown("**Loss**: train (solid) and validation (dashed)")
        st.altair_chart(line_chart(metric_frame(points, ["loss", "val_loss"]), "loss"))
        st.markdown("**Learning rate**")
        st.altair_chart(line_chart(metric_frame(points, ["lr"]), "learning rate", height=180))
    with right:
        st.markdown("**Tokens/s**")
        st.altair_chart(line_chart(metric_frame(points, ["tokens_per_s"]), "tokens/s"))
        results = [p for p in points if p.kind == "result"]
        if results:
            st.markdown("**Result**")
            st.json(results[-1].values)


def job_view(job_id: str) -> None:
    c = clients()
    job = c.trainer.job(job_id)
    live = job.state not in TERMINAL
    head, actions = st.columns([4, 1])
    head.subheader(f"Job {job.id}")
    origin = f"data set {job.dataset or '-'} · base {job.base_model or '-'}"
    head.caption(f"{job.kind} · preset {job.preset or '-'} · {origin}")
    if actions.button("Cancel job", disabled=not live, key=f"cancel:{job_id}", type="secondary"):
        with shown_errors("Cancelling the job"):
            stopped = c.trainer.cancel(job_id)
            st.session_state["cancel_notice"] = (
                f"Job {job_id} cancelled." if stopped.state == "cancelled" else f"Job {job_id} asked to stop."
            )
    if notice := st.session_state.get("cancel_notice"):
        st.info(notice)

    def refresh() -> None:
        with shown_errors("Refreshing the job"):
            current = c.trainer.job(job_id)
            colour = {"succeeded": "green", "failed": "red", "cancelled": "gray", "running": "blue"}
            stopping = " (stopping)" if current.cancel_requested and not current.done else ""
            st.markdown(f"State :{colour.get(current.state, 'orange')}-badge[{current.state}{stopping}]")
            b, d, e, f = st.columns(4)
            b.metric("Step", f"{current.step}/{current.total_steps or '?'}")
            d.metric("Loss", "-" if current.loss is None else f"{current.loss:.4f}")
            e.metric("Val loss", "-" if current.val_loss is None else f"{current.val_loss:.4f}")
            f.metric("Tokens/s", "-" if current.tokens_per_s is None else f"{current.tokens_per_s:,.0f}")
            if current.progress is not None:
                eta = f" · ETA {current.eta_seconds:.0f} s" if current.eta_seconds is not None else ""
                st.progress(current.progress, text=f"{current.progress:.0%}{eta}")
            if current.error:
                st.error(f"Job {current.state}: {current.error}")
            if current.registry_version or current.best_version:
                pushed = f"Pushed version: {version_link(current.registry_version)}"
                if current.best_version:
                    pushed += f" · best validation: {version_link(current.best_version)}"
                st.markdown(pushed)
            charts(new_points(job_id))
            st.markdown("**Log**")
            lines = log_tail(job_id)
            st.code(
                "\n".join(f"{x.at:%H:%M:%S} {x.level:<7} {x.message}" for x in lines) or "(no log lines yet)"
            )
            if live and current.done:
                st.rerun(scope="app")  # stop refreshing; the cancel button greys out

    st.fragment(run_every=REFRESH_S if live else None)(refresh)()


st.title("Jobs")
left, right = st.columns(2)
state = left.selectbox("State", ["all", *STATES], key="filter_state")
kind = right.selectbox("Kind", ["all", *KINDS], key="filter_kind")
with shown_errors("Loading the jobs"):
    jobs, count = clients().trainer.list_jobs(
        state=None if state == "all" else state, kind=None if kind == "all" else kind, limit=200
    )
    st.caption(f"{len(jobs)} of {count} jobs, newest first")
    st.dataframe(
        jobs_table(jobs),
        hide_index=True,
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
    )
    ids = [j.id for j in jobs]
    wanted = st.query_params.get("job")
    if wanted and wanted not in ids:
        ids.insert(0, wanted)
    labels = {j.id: f"{j.id} · {j.kind} · {j.preset or j.base_model or ''}" for j in jobs}
    chosen = st.selectbox(
        "Open job",
        ids,
        index=ids.index(wanted) if wanted in ids else None,
        format_func=lambda i: labels.get(i, i),
        key="open_job",
        placeholder="choose a job",
    )
    if chosen and chosen != wanted:
        st.query_params["job"] = chosen
        st.session_state.pop("cancel_notice", None)
if chosen_id := st.query_params.get("job"):
    with shown_errors(f"Loading job {chosen_id}"):
        job_view(chosen_id)
