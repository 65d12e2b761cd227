"""Registry: models with search; a model's versions with aliases beside them; lineage; alias moves;
exports (a job per format, the parity report beside the exported version); delete.

Moving an alias first shows how the metrics of the version it would point to differ from the
one it points to now, and needs a confirmation; deleting an aliased version shows the
registry's refusal (it never deletes what an alias serves).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from microgpt.export.formats import FORMATS, QUANTS
from microgpt.registry import RegistryClient
from microgpt.registry.client import VersionInfo
from services.ui.connection import clients
from services.ui.errors import shown_errors

NOTICE = "registry_notice"


def size_text(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def versions_table(versions: list[VersionInfo]) -> pd.DataFrame:
    metric_names = sorted({m for v in versions for m in v.metrics})[:6]
    table: dict[str, list[Any]] = {
        "version": [v.version for v in versions],
        "aliases": [", ".join(f"@{a}" for a in sorted(v.aliases)) for v in versions],
        "status": [v.status for v in versions],
    }
    for m in metric_names:
        table[m] = [v.metrics.get(m) for v in versions]
    table |= {
        "tags": [", ".join(v.tags) for v in versions],
        "size": [size_text(sum(f.size for f in v.files.values())) for v in versions],
        "preset": [v.preset for v in versions],
        "created": [v.created_at for v in versions],
    }
    return pd.DataFrame(table)


def metric_diff(current: VersionInfo | None, target: VersionInfo) -> pd.DataFrame:
    """Each metric of either version: now (the alias's version), after the move, and the change."""
    now = current.metrics if current else {}
    names = sorted(set(now) | set(target.metrics))
    return pd.DataFrame(
        {
            "metric": names,
            f"now (v{current.version})" if current else "now": [now.get(m) for m in names],
            f"after (v{target.version})": [target.metrics.get(m) for m in names],
            "change": [
                target.metrics[m] - now[m] if m in now and m in target.metrics else None for m in names
            ],
        }
    )


@st.cache_data(ttl=5, show_spinner=False)
def all_versions(registry_url: str) -> list[dict[str, Any]]:
    """Every version of every model (for the lineage graph's children), cached a few seconds."""
    registry = clients().registry
    out = []
    for model in registry.list_models(limit=1000):
        out += [v.model_dump(mode="json") for v in registry.list_versions(model["name"], limit=1000)]
    return out


def lineage_dot(info: VersionInfo, registry: RegistryClient) -> str:
    """Graphviz source: data set -> job -> this version's ancestors -> it -> its descendants."""
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()

    def version_node(ref: str, aliases: list[str], current: bool = False) -> str:
        label = ref + "".join(f"\\n@{a}" for a in sorted(aliases))
        fill = "#ffe08a" if current else "#dbe8ff"
        nodes[ref] = f'"{ref}" [label="{label}", shape=box, style="rounded,filled", fillcolor="{fill}"]'
        return ref

    def origin(v: dict[str, Any], ref: str) -> None:
        lineage = v.get("lineage") or {}
        source = ref
        if job := lineage.get("job_id"):
            job_node = f"job {job}"
            nodes[job_node] = f'"{job_node}" [shape=ellipse, style=filled, fillcolor="#e8f5e9"]'
            edges.add((job_node, ref))
            source = job_node
        if sha := lineage.get("dataset_sha256"):
            data_node = f"data set {sha[:12]}"
            nodes[data_node] = f'"{data_node}" [shape=cylinder, style=filled, fillcolor="#f3e5f5"]'
            edges.add((data_node, source))
        if parent := lineage.get("parent"):
            edges.add((parent, source))

    everything = {f"{v['name']}/{v['version']}": v for v in all_versions(registry.base_url)}
    me = info.ref
    version_node(me, info.aliases, current=True)
    origin(info.model_dump(mode="json"), me)
    parent = (info.lineage or {}).get("parent")
    seen = {me}
    while parent and parent not in seen:  # ancestors
        seen.add(parent)
        v = everything.get(parent)
        version_node(parent, v.get("aliases", []) if v else [])
        if v is None:
            break
        origin(v, parent)
        parent = (v.get("lineage") or {}).get("parent")
    frontier = [me]
    while frontier:  # descendants
        ref = frontier.pop()
        for child_ref, v in everything.items():
            if (v.get("lineage") or {}).get("parent") == ref and child_ref not in seen:
                seen.add(child_ref)
                version_node(child_ref, v.get("aliases", []))
                origin(v, child_ref)
                frontier.append(child_ref)
    lines = ["digraph { rankdir=TB; node [fontname=Helvetica, fontsize=11];", *nodes.values()]
    lines += [f'"{a}" -> "{b}";' for a, b in sorted(edges)]
    return "\n".join([*lines, "}"])


def parity_panel(info: VersionInfo) -> None:
    """An export's parity report beside it: how far its runtime's logits are from its source's."""
    m = info.metrics
    if "parity_max_abs_logit_diff" not in m:
        return
    source = (info.lineage or {}).get("parent", "the source")
    st.markdown(f"**Parity with {source}** (the export run in its own runtime)")
    diff, top1, ppl = st.columns(3)
    diff.metric("max |Δlogit|", f"{m['parity_max_abs_logit_diff']:.2e}")
    top1.metric("top-1 agreement", f"{m['parity_top1_agreement']:.1%}")
    ppl.metric("perplexity change", f"{m['parity_perplexity_change_pct']:+.2f}%")


def task_panel(info: VersionInfo) -> None:
    """Task accuracy (an evaluate job with tasks, `microgpt.task_eval`): one figure per task."""
    scores = {k.removeprefix("accuracy."): v for k, v in info.metrics.items() if k.startswith("accuracy.")}
    if not scores:
        return
    st.markdown("**Task accuracy** (greedy replies on held-out conversations)")
    for column, (task, accuracy) in zip(
        st.columns(min(4, len(scores))) * len(scores), sorted(scores.items())
    ):
        column.metric(task, f"{accuracy:.1%}")


def export_action(info: VersionInfo) -> None:
    """Submit an export job for this version; the export becomes a child version with its parity."""
    st.markdown("**Export this version** for transformers (hf), llama.cpp (gguf) or onnxruntime (onnx)")
    fmt_col, quant_col, go = st.columns([2, 2, 1])
    fmt = fmt_col.selectbox("Format", FORMATS, key=f"export_format:{info.ref}")
    quant = (
        quant_col.selectbox("GGUF tensor type", QUANTS, key=f"export_quant:{info.ref}")
        if fmt == "gguf"
        else None
    )
    if go.button("Export", key=f"export:{info.ref}"):
        options = {"format": fmt, **({"quant": quant} if quant else {})}
        with shown_errors(f"Exporting {info.ref}"):
            job = clients().trainer.submit({"kind": "export", "base_model": info.ref, "export": options})
            st.session_state[NOTICE] = (
                f"Submitted export job {job.id} → {job.output_model}: "
                f"[follow it on the Jobs page](/jobs?job={job.id})"
            )
            st.rerun()


def downloader(registry: RegistryClient, info: VersionInfo, path: str) -> Callable[[], bytes]:
    """A deferred download: the file is fetched (sha256-checked) only when the button is clicked."""

    def fetch() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "file"
            registry.download_file(info, path, dest)
            return dest.read_bytes()

    return fetch


def version_details(
    registry: RegistryClient, model: dict[str, Any], info: VersionInfo, by_number: dict[int, VersionInfo]
) -> None:
    st.subheader(f"{info.ref}" + "".join(f"  `@{a}`" for a in sorted(info.aliases)))
    made = f"created {info.created_at:%Y-%m-%d %H:%M} by {info.created_by or '-'}"
    st.caption(f"{info.status} · {info.description or 'no description'} · {made}")
    files, lineage = st.columns([3, 2])
    with files:
        st.markdown("**Files**")
        st.dataframe(
            pd.DataFrame(
                {
                    "path": list(info.files),
                    "size": [size_text(f.size) for f in info.files.values()],
                    "bytes": [f.size for f in info.files.values()],
                    "sha256": [f.sha256 for f in info.files.values()],
                }
            ),
            hide_index=True,
        )
        if info.status == "ready":
            buttons = st.columns(min(4, max(1, len(info.files))))
            for i, path in enumerate(info.files):
                buttons[i % len(buttons)].download_button(
                    f"Download {path}",
                    downloader(registry, info, path),
                    file_name=Path(path).name,
                    key=f"download:{info.ref}:{path}",
                    on_click="ignore",
                )
        parity_panel(info)
        task_panel(info)
        st.markdown("**Metrics**")
        st.json(info.metrics or {}, expanded=True)
        if info.tags:
            st.markdown("**Tags** " + " ".join(f"`{t}`" for t in info.tags))
    with lineage:
        st.markdown("**Lineage**")
        with shown_errors("Drawing the lineage"):
            st.graphviz_chart(lineage_dot(info, registry))

    st.markdown("---")
    if info.status == "ready":
        export_action(info)
    move, delete = st.columns(2)
    with move:
        st.markdown("**Move an alias to this version**")
        aliases: dict[str, int] = model.get("aliases", {})
        choice = st.selectbox("Alias", [*sorted(aliases), "new alias…"], key=f"alias:{model['name']}")
        alias = st.text_input("New alias name", key="new_alias") if choice == "new alias…" else choice
        if alias:
            current = by_number.get(aliases[alias]) if alias in aliases else None
            if current is not None and current.version == info.version:
                st.caption(f"@{alias} already points to v{info.version}.")
            else:
                st.dataframe(metric_diff(current, info), hide_index=True)
                where = f"from v{current.version} " if current else ""
                confirm = st.checkbox(
                    f"Move @{alias} {where}to v{info.version}", key=f"confirm:{alias}:{info.version}"
                )
                if st.button("Move alias", disabled=not confirm, type="primary", key="move_alias"):
                    with shown_errors(f"Moving @{alias}"):
                        registry.set_alias(info.name, alias, info.version)
                        st.session_state[NOTICE] = f"Moved {info.name}@{alias} to v{info.version}."
                        st.rerun()
    with delete:
        st.markdown("**Delete this version**")
        sure = st.checkbox(f"Delete {info.ref} and its files", key=f"sure:{info.ref}")
        if st.button("Delete version", disabled=not sure, key="delete_version"):
            with shown_errors(f"Deleting {info.ref}"):
                registry.delete_version(info.name, info.version)
                st.session_state[NOTICE] = f"Deleted {info.ref}."
                st.query_params.pop("version", None)
                st.rerun()


st.title("Registry")
if notice := st.session_state.pop(NOTICE, None):
    st.success(notice)
registry = clients().registry
search = st.text_input("Search models by name prefix", key="search", placeholder="names")
with shown_errors("Loading the models"):
    models = registry.list_models(prefix=search or None, limit=200)
    if not models:
        st.info(
            "No models match." if search else "The registry holds no models yet: train one on the Train page."
        )
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "model": [m["name"] for m in models],
                    "latest": [m.get("latest_version") for m in models],
                    "versions": [m.get("version_count") for m in models],
                    "aliases": [
                        ", ".join(f"@{a}→v{v}" for a, v in sorted(m.get("aliases", {}).items()))
                        for m in models
                    ],
                    "tags": [", ".join(m.get("tags", [])) for m in models],
                    "updated": [m.get("updated_at") for m in models],
                }
            ),
            hide_index=True,
        )
        names = [m["name"] for m in models]
        wanted = st.query_params.get("model")
        name = st.selectbox("Model", names, index=names.index(wanted) if wanted in names else 0, key="model")
        if name != wanted:
            st.query_params["model"] = name
        model = next(m for m in models if m["name"] == name)
        versions = registry.list_versions(name, limit=1000)
        st.markdown(f"**Versions of {name}** ({len(versions)})")
        st.dataframe(versions_table(versions), hide_index=True)
        by_number = {v.version: v for v in versions}
        numbers = list(by_number)
        asked = st.query_params.get("version")
        default = int(asked) if asked and asked.isdigit() and int(asked) in by_number else None
        number = st.selectbox(
            "Version",
            numbers,
            index=numbers.index(default) if default is not None else 0 if numbers else None,
            format_func=lambda n: f"v{n}" + "".join(f" @{a}" for a in sorted(by_number[n].aliases)),
            key=f"version:{name}",
        )
        if number is not None:
            if str(number) != asked:
                st.query_params["version"] = str(number)
            version_details(registry, model, by_number[number], by_number)
