"""Schemathesis against a live inference service with a small model loaded: no 5xx, no schema violation."""

from __future__ import annotations

from pathlib import Path

from api_fuzz import fuzz


def test_inference_survives_schemathesis(base: str, tmp_path: Path) -> None:
    fuzz(
        base,
        tmp_path,
        content_checked={
            "^/(v1/|generate|tokenize|detokenize|admin/)": "`model` must name a served model (else 404), "
            "token ids must be in its vocabulary, prompts must fit its context (else 400)",
        },
    )
