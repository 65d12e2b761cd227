"""Inspect: look inside a registry version with `microgpt.interpret`, run by the inference service.

Pick a model (any ref the inference service can load, at any precision) and type a text;
one `/v1/interpret` request returns every analysis, drawn in tabs: tokens coloured by
surprisal (top-k guesses on hover), a layer × head grid of attention maps (pick one to
enlarge with hover values), the logit lens, head-detector scores and the embedding
scatter. Patching takes a second prompt and its own request; the Training tab plots the
induction score a job recorded with `train.interpret_every`, to see when induction heads form.
The grids are the CLI's figures (`microgpt inspect`), so both show the same pictures.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from microgpt.interpret import figures
from microgpt.interpret.schemas import InterpretResult
from services.ui.connection import clients
from services.ui.errors import shown_errors
from services.ui.inspect_charts import attention_map, embedding_scatter, probe_frame, surprisal_html
from services.ui.models import model_choices

ANALYSES = ["tokens", "attention", "lens", "heads", "embeddings"]
HEADS_SEQ_LEN = 16  # repeated random tokens for the head detectors (fits a 32-token context)


def analyse(model: str, text: str, top_k: int) -> None:
    with shown_errors("Interpreting"):
        seq_len = min(HEADS_SEQ_LEN, max_context(model) // 2)
        st.session_state["inspect"] = clients().inference.interpret(
            model, text, ANALYSES, top_k=top_k, seq_len=seq_len
        )


def max_context(model: str) -> int:
    """The model's context if the service holds it already, else the smallest a preset has."""
    for loaded in clients().inference.models():
        if loaded.id == model or loaded.id.split(":")[0] == model:
            return loaded.max_model_len
    return 32


def tokens_tab(result: InterpretResult) -> None:
    report = result.tokens
    assert report is not None
    st.html(surprisal_html(report))
    if report.mean_loss is not None:
        st.caption(
            f"mean loss {report.mean_loss:.3f} nats/token · colour: surprisal of each token "
            "(white expected, red surprising); hover a token for what the model expected there"
        )


def attention_tab(result: InterpretResult) -> None:
    report = result.attention
    assert report is not None
    n_layer, n_head = len(report.patterns), len(report.patterns[0])
    enlarged, grid = st.columns([2, 3])
    with enlarged:
        left, right = st.columns(2)
        layer = left.selectbox("Layer", range(n_layer), key="attn_layer")
        head = right.selectbox("Head", range(n_head), key="attn_head")
        st.altair_chart(attention_map(report, layer, head), width="stretch")
        entropy = report.entropy[layer][head]
        st.caption(f"layer {layer}, head {head} · mean entropy {entropy:.2f} nats · hover for the weights")
    with grid:
        st.pyplot(figures.attention_figure(report), width="stretch")
        st.caption("every head: layer down, head across; pick one on the left to enlarge it")


def lens_tab(result: InterpretResult) -> None:
    report = result.lens
    assert report is not None
    st.pyplot(figures.lens_figure(report), width="stretch")
    st.caption(
        "each layer's residual stream through the final norm and the unembedding: the top-1 "
        "guess per position, coloured by the probability of the true next token"
    )


def heads_tab(result: InterpretResult) -> None:
    report = result.heads
    assert report is not None
    st.pyplot(figures.heads_figure(report), width="stretch")
    rows = [
        {"layer": layer, "head": head, "previous token": prev, "duplicate token": dup, "induction": ind}
        for layer, (ps, ds, ins) in enumerate(
            zip(report.previous_token, report.duplicate_token, report.induction, strict=True)
        )
        for head, (prev, dup, ind) in enumerate(zip(ps, ds, ins, strict=True))
    ]
    st.dataframe(pd.DataFrame(rows).sort_values("induction", ascending=False), hide_index=True)
    st.caption(f"mean attention on {report.batch} repeated random sequences; chance is {report.chance:.3f}")


def embeddings_tab(result: InterpretResult) -> None:
    report = result.embeddings
    assert report is not None
    st.altair_chart(embedding_scatter(report), width="stretch")


def patch_tab(model: str, text: str) -> None:
    st.caption(
        "Copy one activation of the clean run (the text above) into a corrupted run and see how "
        "much of the clean answer comes back; both texts need as many tokens."
    )
    corrupted = st.text_input("Corrupted text", key="patch_corrupted")
    a, b = st.columns(2)
    answer = a.text_input("Answer token (default: clean top guess)", key="patch_answer") or None
    foil = b.text_input("Foil token (default: corrupted top guess)", key="patch_foil") or None
    if st.button("Patch", key="patch_run", disabled=not corrupted):
        with shown_errors("Patching"):
            st.session_state["inspect_patch"] = clients().inference.interpret(
                model, text, ["patch"], corrupted=corrupted, answer=answer, foil=foil
            )
    if (result := st.session_state.get("inspect_patch")) and result.patch is not None:
        report = result.patch
        st.pyplot(figures.patch_figure(report), width="stretch")
        st.caption(
            f"logit difference {report.answer!r} − {report.foil!r}: clean {report.clean_logit_diff:.2f}, "
            f"corrupted {report.corrupted_logit_diff:.2f}; 1 = the patch restores the clean answer"
        )


def training_tab() -> None:
    job_id = st.text_input(
        "Job id", key="inspect_job", placeholder="a train job run with train.interpret_every"
    )
    if not job_id:
        return
    with shown_errors("Reading the job's metrics"):
        frame = probe_frame(clients().trainer.metrics(job_id))
        if frame.empty:
            st.info("This job recorded no induction score: train with `train.interpret_every=N`.")
        else:
            for metric, part in frame.groupby("metric"):
                st.markdown(f"**{metric.replace('_', ' ')}**")
                st.line_chart(part, x="step", y="value")


st.title("Inspect")
choices = model_choices()
picked, k = st.columns([4, 1])
model = picked.selectbox(
    "Model", choices, index=0 if choices else None, accept_new_options=True, key="inspect_model"
)
top_k = k.number_input("top-k guesses per token", 1, 20, 5, key="inspect_top_k")
text = st.text_area(
    "Text", "ROMEO: But soft, what light? ROMEO: But soft, what light", height=68, key="inspect_text"
)
if st.button("Inspect", type="primary", key="inspect_run", disabled=not (model and text)):
    assert model is not None
    analyse(model, text, int(top_k))
names = ["Tokens", "Attention", "Logit lens", "Heads", "Embeddings", "Patching", "Training"]
tabs = dict(zip(names, st.tabs(names), strict=True))
result: InterpretResult | None = st.session_state.get("inspect")
if result is None:
    tabs["Tokens"].info("Pick a model, type a text and press Inspect.")
else:
    for name, draw in (
        ("Tokens", tokens_tab),
        ("Attention", attention_tab),
        ("Logit lens", lens_tab),
        ("Heads", heads_tab),
        ("Embeddings", embeddings_tab),
    ):
        with tabs[name]:
            draw(result)
with tabs["Patching"]:
    if model and text:
        patch_tab(model, text)
with tabs["Training"]:
    training_tab()
