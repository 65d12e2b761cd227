"""Compare: overlay the train and validation curves of chosen jobs, and list the settings they differ in.

The settings are each job's spec flattened to `section.key` rows (plus preset, data set and base
model); only rows whose values are not all equal are shown, as MLflow's run comparison does.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from microgpt.clients.trainer import Job
from services.ui.charts import line_chart, metric_frame
from services.ui.connection import clients
from services.ui.errors import shown_errors


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= flatten(inner, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): value}


def differing_settings(jobs: list[Job]) -> pd.DataFrame:
    """One row per setting whose value is not the same in every job; one column per job."""
    settings = [
        flatten(j.spec) | {"preset": j.preset, "dataset": j.dataset, "base_model": j.base_model} for j in jobs
    ]
    keys = sorted(set().union(*settings))
    rows = {k: [s.get(k) for s in settings] for k in keys}
    differing = {
        k: ["-" if x is None else str(x) for x in v] for k, v in rows.items() if len({repr(x) for x in v}) > 1
    }
    frame = pd.DataFrame.from_dict(differing, orient="index", columns=[j.id for j in jobs], dtype=object)
    frame.index.name = "setting"
    return frame


st.title("Compare jobs")
with shown_errors("Loading the jobs"):
    jobs, _ = clients().trainer.list_jobs(limit=200)
    by_id = {j.id: j for j in jobs}
    wanted = [i for i in st.query_params.get_all("job") if i in by_id]
    chosen = st.multiselect(
        "Jobs to compare",
        list(by_id),
        default=wanted,
        format_func=lambda i: (
            f"{i} · {by_id[i].kind} · {by_id[i].preset or by_id[i].base_model} · {by_id[i].state}"
        ),
        key="compare_jobs",
    )
    if not chosen:
        st.info("Pick two or more jobs to overlay their curves.")
    else:
        frames = [metric_frame(clients().trainer.metrics(i), ["loss", "val_loss"], label=i) for i in chosen]
        curves = pd.concat(frames, ignore_index=True)
        st.markdown("**Loss** of each job: train (solid) and validation (dashed)")
        st.altair_chart(line_chart(curves, "loss", height=380, colour="job"))
        st.markdown("**Settings that differ**")
        differing = differing_settings([by_id[i] for i in chosen])
        if differing.empty:
            st.caption("The jobs have the same settings.")
        else:
            st.dataframe(differing)
        final = pd.DataFrame(
            {
                "job": chosen,
                "state": [by_id[i].state for i in chosen],
                "steps": [by_id[i].step for i in chosen],
                "loss": [by_id[i].loss for i in chosen],
                "val loss": [by_id[i].val_loss for i in chosen],
                "version": [by_id[i].registry_version for i in chosen],
            }
        )
        st.dataframe(final, hide_index=True)
