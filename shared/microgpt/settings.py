"""The process's settings: one pydantic-settings object read from `MICROGPT_*` variables.

Nothing reads the environment at import time: entry points call `get_settings()` once
and pass what they need down as plain arguments, so library functions stay testable
with explicit paths. Later services add their own fields (database, broker, object
store, URLs, API key) here; the README's configuration table lists every one.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROGPT_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".microgpt", description="data of the embedded default"
    )
    cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "microgpt",
        description="downloaded data sets and prepared token shards",
    )


@functools.cache
def get_settings() -> Settings:
    """The settings, read from the environment on first use."""
    return Settings()
