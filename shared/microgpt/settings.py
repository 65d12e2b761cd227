"""The process's settings: one pydantic-settings object read from `MICROGPT_*` variables.

Nothing reads the environment at import time: entry points call `get_settings()` once
and pass what they need down as plain arguments, so library functions stay testable
with explicit paths and URLs. Every field is a row of the README's configuration table.

Unset server settings mean the embedded default, all under `MICROGPT_HOME`: SQLite
(`microgpt.db`), artifacts on local disk (`artifacts/`) and a Celery broker over SQLite
(`broker.db`, kombu's SQLAlchemy transport), so one machine needs no servers at all.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from microgpt.precision import Precision


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROGPT_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".microgpt", description="data of the embedded default"
    )
    cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "microgpt",
        description="downloaded data sets, prepared token shards and pulled registry versions",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the metadata database; unset: SQLite in home"
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker URL (redis://...); unset: SQLite in home"
    )
    s3_endpoint: str | None = Field(
        default=None, description="host:port of S3/MinIO (http:// or https:// prefix allowed); unset: disk"
    )
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "microgpt"
    s3_region: str | None = None
    registry_url: str = "http://127.0.0.1:8001"
    trainer_url: str = "http://127.0.0.1:8002"
    inference_url: str = "http://127.0.0.1:8000"
    ui_url: str = Field(
        default="http://127.0.0.1:8501", description="the dashboard (`microgpt ui`); `up` binds its port"
    )
    inference_models: str = Field(
        default="",
        description="models the inference service loads at start, comma-separated REF[:PRECISION] "
        "(REF: name, name@alias, name/N, or ID=DIR for a local checkpoint directory)",
    )
    inference_precision: Precision = Field(
        default="fp32", description="precision of a model loaded without one named: fp32, bf16, int8, int4"
    )
    inference_max_batch: int = Field(default=32, ge=1, description="sequences one engine decodes together")
    inference_threads: int | None = Field(
        default=None,
        ge=1,
        description="most threads of one native decode step (default: torch's thread count); the engine "
        "runs 1 or this many, whichever its recent steps say is faster",
    )
    # microgpt.generate.Backend or "auto", spelled here because settings import no torch.
    inference_backend: Literal["auto", "eager", "compiled", "native"] = Field(
        default="auto", description="decode step of the batching engine: auto, eager, compiled or native"
    )
    inference_max_queue: int = Field(
        default=256, ge=1, description="requests waiting per model before 429 Too Many Requests"
    )
    inference_max_tokens: int = Field(default=1024, ge=1, description="cap on max_tokens of one request")
    inference_max_body_bytes: int = Field(
        default=1 << 20, ge=1, description="largest request body before 413 Payload Too Large"
    )
    inference_poll_seconds: float = Field(
        default=30.0, ge=0.0, description="seconds between re-resolving aliases to hot-swap moves; 0: never"
    )
    inference_max_models: int = Field(default=4, ge=1, description="models kept loaded (LRU goes first)")
    inference_max_model_bytes: int = Field(
        default=8 << 30, ge=1, description="weight bytes kept loaded (least recently used go)"
    )
    api_key: SecretStr | None = Field(
        default=None, description="bearer key(s) for mutating routes; several separated by commas"
    )
    registry_max_upload_bytes: int = Field(
        default=64 << 30, gt=0, description="largest file or tar stream one registry upload may send, bytes"
    )
    trainer_queue: str = Field(default="microgpt-jobs", description="Celery queue the training jobs go to")
    worker_concurrency: int = Field(
        default=1, ge=1, description="jobs one `microgpt worker` runs at once (1: one job per process)"
    )
    worker_metrics_address: str | None = Field(
        default=None,
        description="host:port where each worker serves Prometheus /metrics (a prefork pool's process i "
        "uses port+1+i); unset: none",
    )
    job_time_limit_s: float | None = Field(
        default=None, gt=0, description="hard time limit of one job attempt (prefork pool only); unset: none"
    )
    job_lease_s: float = Field(
        default=60.0, gt=0, description="a running job whose worker sent no heartbeat this long is taken over"
    )
    broker_visibility_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Redis: an unacknowledged job is redelivered after this long (keep it above the "
        "time between checkpoints)",
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'microgpt.db'}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    def artifacts_dir(self) -> Path:
        """Where the local-disk object store keeps blobs when no S3 endpoint is set."""
        return self.home / "artifacts"

    def _keys(self) -> list[str]:
        secret = self.api_key.get_secret_value() if self.api_key is not None else ""
        return [k for k in (k.strip() for k in secret.split(",")) if k]

    def api_keys(self) -> frozenset[str]:
        """The accepted bearer keys; empty means auth is off."""
        return frozenset(self._keys())

    def client_api_key(self) -> str | None:
        """The key a client sends: the first of the comma-separated keys (None: auth is off)."""
        return next(iter(self._keys()), None)


@functools.cache
def get_settings() -> Settings:
    """The settings, read from the environment on first use."""
    return Settings()
