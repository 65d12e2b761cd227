"""The Inspect page under `AppTest` against the live services: the inference service runs
`microgpt.interpret` on `tiny@production` and the page draws what came back over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from microgpt.interpret.schemas import InterpretResult

pytestmark = pytest.mark.usefixtures("one_thread_session")


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def inspected(page: Callable[..., AppTest], text: str) -> AppTest:
    at = page("inspect").run()
    at.selectbox(key="inspect_model").set_value("tiny@production:fp32")
    at.text_area(key="inspect_text").input(text)
    return ok(at.button(key="inspect_run").click().run())


def test_every_analysis_is_drawn_from_one_request(page: Callable[..., AppTest]) -> None:
    at = inspected(page, "ROMEO: But soft")
    result: InterpretResult = at.session_state["inspect"]
    assert result.model == "tiny@production:fp32"
    assert result.tokens is not None and result.heads is not None and result.embeddings is not None
    html = at.get("html")[0].proto.body
    assert html.count('class="tok"') == len(result.tokens.tokens) > 1
    assert "bits" in html and "the model expected" in html and "hsl(0, 80%" in html
    assert len(at.get("image")) >= 3  # the attention grid, the logit lens and the head scores
    assert len(at.get("vega_lite_chart")) >= 2  # the enlarged map and the embedding scatter
    at.selectbox(key="attn_head").set_value(1).run()
    assert any("layer 0, head 1" in c.value for c in ok(at).caption)


def test_patching_between_two_prompts(page: Callable[..., AppTest]) -> None:
    at = inspected(page, "ROMEO: But soft")
    at.text_input(key="patch_corrupted").input("JOMEO: But soft").run()  # the button enables
    ok(at.button(key="patch_run").click().run())
    report = at.session_state["inspect_patch"].patch
    assert report.residual[0][0] == pytest.approx(1.0, abs=1e-4)  # position 0 is the whole difference
    assert any("restores the clean answer" in c.value for c in at.caption)


def test_a_refused_text_is_a_message(page: Callable[..., AppTest]) -> None:
    at = page("inspect").run()
    at.selectbox(key="inspect_model").set_value("tiny@production:fp32")
    at.text_area(key="inspect_text").input("x" * 100)  # the tiny model reads 64 tokens
    at.button(key="inspect_run").click().run()
    assert not at.exception
    assert any("400" in e.value and "at most 64" in e.value for e in at.error), [e.value for e in at.error]
