"""Schemathesis against the live trainer API on PostgreSQL and Redis: no 5xx, nothing outside its OpenAPI.

The platform is the session's, so the test leaves it as it found it: the jobs the fuzzer
queued are cancelled (no later worker may run them) and the data sets it uploaded removed.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from api_fuzz import fuzz
from trainer_platform import Platform

from services.trainer.models import Dataset


def test_trainer_survives_schemathesis(platform: Platform, tmp_path: Path) -> None:
    datasets_before = {d["id"] for d in platform.http.get("/datasets").json()["data"]}
    try:
        fuzz(
            platform.trainer_url,
            tmp_path,
            content_checked={
                "^/jobs$": "a spec must name a real preset, data set and base model, and valid overrides",
                "^/datasets$": "the body must be UTF-8 text (JSONL: objects with a string `text`)",
            },
        )
    finally:
        queued = platform.http.get("/jobs", params={"state": "queued", "limit": 500}).json()["data"]
        for job in queued:
            platform.http.post(f"/jobs/{job['id']}/cancel")
        engine = sa.create_engine(platform.env["MICROGPT_DATABASE_URL"])
        with engine.begin() as conn:
            conn.execute(sa.delete(Dataset).where(Dataset.id.not_in(datasets_before)))
        engine.dispose()
