"""Requests that once broke the trainer API on PostgreSQL (500s), strict job specs, and the output model
a job will write, named when it is submitted."""

from __future__ import annotations

from typing import Any

import pytest
from trainer_platform import Platform

TOO_BIG = str(2**63)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/jobs", {"offset": TOO_BIG}),
        ("/jobs", {"model": "a\u0000b"}),
        ("/jobs/nope/metrics", {"since": TOO_BIG}),
        ("/jobs/nope/metrics", {"since": str(2**31)}),  # steps are INTEGER
        ("/jobs/nope/logs", {"after": TOO_BIG}),
        ("/jobs/a%00b", {}),
    ],
)
def test_values_the_database_cannot_hold_are_422(
    platform: Platform, path: str, params: dict[str, str]
) -> None:
    response = platform.http.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "train", "preset": "micro", "dataset": "names\u0000"},
        {"kind": "train", "preset": "micro", "checkpoint_interval": True},
        {"kind": "train", "preset": "micro", "checkpoint_interval": "10"},
        {"kind": "train", "preset": "micro", "train": {"max_steps": 2**40}},
        {"kind": "finetune", "base_model": "x", "dataset": "names", "lora": {"rank": False}},
    ],
)
def test_loose_or_oversized_specs_are_422(platform: Platform, spec: dict[str, Any]) -> None:
    before = platform.http.get("/jobs").json()["count"]
    response = platform.http.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert platform.http.get("/jobs").json()["count"] == before


@pytest.mark.parametrize(
    ("spec", "model"),
    [
        ({"kind": "train", "preset": "names"}, "names"),  # the preset's own data set
        ({"kind": "train", "preset": "names", "dataset": "shakespeare"}, "names-shakespeare"),
        ({"kind": "train", "preset": "micro", "dataset": "names"}, "micro-names"),
    ],
)
def test_submission_names_the_output_model_and_it_never_mixes_data_sets(
    platform: Platform, spec: dict[str, Any], model: str
) -> None:
    job = platform.submit(spec)
    platform.http.post(f"/jobs/{job['id']}/cancel")  # no later worker may run it
    assert job["output_model"] == model
