"""Train: a form for every job kind; the trainer validates it, and a 422 shows next to the field it names.

Presets come from the zoo (with parameter counts), data sets are the built-in ones plus those
uploaded to the trainer, base models are registry refs (`name@alias`, `name/N`). Overrides are
`section.key=value` lines, as `microgpt jobs submit --set` takes them. A chat model is the
`chat-tiny` preset (train), or an `sft` job on a base model with conversations (the built-in
`chat`, or a messages upload); an evaluate job with tasks scores its replies per task.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from microgpt.clients import ServiceError
from microgpt.clients.trainer import KINDS
from microgpt.data.builtin import DATASETS
from microgpt.export.formats import FORMATS, QUANTS
from microgpt.run_config import parse_set_overrides
from services.ui.connection import clients
from services.ui.errors import explain, shown_errors
from services.ui.models import registry_refs

ERRORS = "train_form_errors"  # session state: {field: message} of the last refused submission


@st.cache_resource(show_spinner=False)
def preset_labels() -> dict[str, str]:
    """Each zoo preset as `name · 1.2M params · 4 layers x 128`, parameters counted on the meta device."""
    import torch

    from microgpt.model import GPT
    from microgpt.zoo import PRESETS

    labels = {}
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            n = GPT(preset.model).num_params()
        m = preset.model
        count = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
        labels[name] = f"{name} · {count} params · {m.n_layer} layers × {m.n_embd}"
    return labels


def field_error(*fields: str) -> None:
    """The refusal of any of `fields` (or a field under one of them), right below its widget."""
    for path, message in st.session_state.get(ERRORS, {}).items():
        if path in fields or any(path.startswith(f + ".") for f in fields):
            st.error(f"`{path}`: {message}", icon=":material/error:")


def dataset_options() -> list[str]:
    uploaded: list[str] = []
    with shown_errors("Listing the uploaded data sets"):
        uploaded = [d.name for d in clients().trainer.datasets()]
    return list(dict.fromkeys([*uploaded, *DATASETS]))


def upload_box() -> None:
    with st.expander(
        "Upload a data set (text: one document per line; JSONL with a `text` field; "
        "messages: OpenAI-style conversations, one per line, for sft jobs)"
    ):
        file = st.file_uploader("File", type=["txt", "jsonl"], key="upload_file")
        name = st.text_input("Data set name", key="upload_name", placeholder="my-names")
        fmt = st.radio("Format", ["text", "jsonl", "messages"], horizontal=True, key="upload_format")
        if st.button("Upload", key="upload") and file is not None:
            with shown_errors("Uploading the data set"):
                dataset = clients().trainer.upload_dataset(name or file.name, file.getvalue(), fmt)
                st.success(f"Uploaded {dataset.name} ({dataset.size:,} bytes, sha256 {dataset.sha256[:12]}…)")


def spec_from_form(kind: str, form: dict[str, Any]) -> dict[str, Any]:
    """The JobSpec of the form's values; empty fields are left to the trainer's defaults."""
    spec: dict[str, Any] = {"kind": kind}
    for field in ("preset", "dataset", "base_model", "output_model"):
        if form.get(field):
            spec[field] = form[field]
    lines = [line.strip() for line in form.get("overrides", "").splitlines() if line.strip()]
    model, train = parse_set_overrides(lines)
    if form.get("max_steps"):
        train["max_steps"] = int(form["max_steps"])
    if model:
        spec["model"] = model
    if train:
        spec["train"] = train
    if form.get("checkpoint_interval"):
        spec["checkpoint_interval"] = int(form["checkpoint_interval"])
    if kind in ("finetune", "sft") and form.get("lora_rank"):
        spec["lora"] = {"rank": int(form["lora_rank"])}
    if kind == "quantize":
        spec["quantize"] = {"mode": form["quantize_mode"], "group_size": int(form["group_size"])}
    if kind == "evaluate":
        tasks = [t.strip() for t in form.get("tasks", "").split(",") if t.strip()]
        if tasks:  # accuracy per task: the split is the tasks' (test by default), no batch limit
            spec["evaluate"] = {"tasks": tasks} | ({"split": form["split"]} if form["split"] != "val" else {})
        else:
            spec["evaluate"] = {"split": form["split"]} | (
                {"max_batches": int(form["max_batches"])} if form.get("max_batches") else {}
            )
    if kind == "export":
        fmt = form.get("export_format", "onnx")
        spec["export"] = {"format": fmt}
        if fmt == "gguf":
            spec["export"]["quant"] = form.get("export_quant", "f32")
        if form.get("opset"):  # the trainer refuses it for formats other than onnx, naming the field
            spec["export"]["opset"] = int(form["opset"])
    return spec


def job_form(kind: str, presets: dict[str, str], datasets: list[str], refs: list[str]) -> None:
    form: dict[str, Any] = {}
    with st.form(f"job-{kind}"):
        if kind in ("train", "finetune", "sft"):
            names = list(presets) if kind == "train" else ["", *presets]
            form["preset"] = st.selectbox(
                "Preset" if kind == "train" else "Recipe (preset; default: the base model's)",
                names,
                index=names.index("micro") if "micro" in names else 0,
                format_func=lambda n: presets.get(n, "the base model's"),
                key="preset",
            )
            field_error("preset")
        if kind != "train":
            form["base_model"] = st.selectbox(
                "Base model (registry ref)",
                refs,
                index=0 if refs else None,
                accept_new_options=True,
                key="base_model",
            )
            field_error("base_model")
        if kind in ("train", "finetune", "sft", "evaluate"):
            options = ["", *datasets] if kind in ("sft", "evaluate") else datasets
            label = {
                "sft": "Conversations (default: the built-in chat tasks)",
                "evaluate": "Data set (with tasks, default: the built-in chat tasks' test split)",
            }.get(kind, "Data set")
            key = "dataset" if kind in ("train", "finetune") else f"{kind}_dataset"  # own default per kind
            form["dataset"] = st.selectbox(label, options, index=0 if options else None, key=key)
            field_error("dataset")
        if kind in ("finetune", "sft"):
            form["lora_rank"] = st.number_input("LoRA rank (0: full finetune)", 0, 1024, 0, key="lora_rank")
            field_error("lora")
        if kind == "evaluate":
            form["tasks"] = st.text_input(
                "Tasks (accuracy of greedy replies; empty: a loss evaluation)",
                placeholder="add,reverse,names or all",
                key="tasks",
            )
            form["split"] = st.radio(
                "Split (loss: val or train; tasks: test, validation or train)",
                ["val", "train", "test", "validation"],
                horizontal=True,
                key="split",
            )
            form["max_batches"] = st.number_input("Max batches (0: all)", 0, 100_000, 0, key="max_batches")
            field_error("evaluate")
        if kind == "quantize":
            form["quantize_mode"] = st.radio(
                "Weights", ["int8", "int4"], horizontal=True, key="quantize_mode"
            )
            form["group_size"] = st.number_input("Group size", 1, 4096, 32, key="group_size")
            field_error("quantize")
        if kind == "export":
            form["export_format"] = st.radio(
                "Format", FORMATS, index=FORMATS.index("onnx"), horizontal=True, key="export_format"
            )
            form["export_quant"] = st.selectbox("GGUF tensor type (gguf only)", QUANTS, key="export_quant")
            form["opset"] = st.number_input("ONNX opset (onnx only; 0: default)", 0, 20, 0, key="opset")
            field_error("export")
        if kind in ("train", "finetune", "sft"):
            form["max_steps"] = st.number_input(
                "Max steps (0: the preset's)", 0, 10_000_000, 0, key="max_steps"
            )
            form["checkpoint_interval"] = st.number_input(
                "Checkpoint every N steps (0: default)", 0, 10_000_000, 0, key="checkpoint_interval"
            )
            field_error("checkpoint_interval")
            form["overrides"] = st.text_area(
                "Overrides, one `section.key=value` per line",
                placeholder="model.n_layer=2\ntrain.lr=3e-4",
                key="overrides",
            )
            field_error("overrides", "model", "train")
        if kind != "evaluate":
            form["output_model"] = st.text_input(
                "Output model name (default: derived from the preset or base model)", key="output_model"
            )
            field_error("output_model")
        submitted = st.form_submit_button("Submit job", type="primary")
    if submitted:
        submit(kind, form)


def submit(kind: str, form: dict[str, Any]) -> None:
    try:
        spec = spec_from_form(kind, form)
    except ValueError as e:
        st.session_state[ERRORS] = {"overrides": str(e)}
        st.rerun()
    try:
        job = clients().trainer.submit(spec)
    except ServiceError as e:
        fields = e.field_errors() if e.status == 422 else {}
        st.session_state[ERRORS] = fields or {"request": explain(e)}
        st.rerun()
    except Exception as e:
        st.session_state[ERRORS] = {"request": explain(e)}
        st.rerun()
    st.session_state[ERRORS] = {}
    st.session_state["train_submitted"] = job.id
    st.rerun()


st.title("Train")
kind = st.radio("Job kind", KINDS, horizontal=True, key="kind")
if submitted := st.session_state.get("train_submitted"):
    st.success(f"Submitted job {submitted}: [follow it on the Jobs page](/jobs?job={submitted})")
field_error("request")
upload_box()
refs: list[str] = []
if kind != "train":
    with shown_errors("Listing the registry's models"):
        refs = registry_refs()
job_form(kind, preset_labels(), dataset_options(), refs)
