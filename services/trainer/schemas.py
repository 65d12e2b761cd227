"""Request and response bodies of the job API; `JobSpec` is also what a worker runs.

A spec is plain JSON data: it is stored in the job row as submitted and read back by the
worker, so a job means the same thing on every worker and after any number of retries.
Its fields are checked here for shape and by `services.trainer.validation` against the
zoo, the data sets and the registry, before anything is enqueued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["train", "finetune", "evaluate", "quantize", "export"]
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoRASpec(_Strict):
    rank: int = Field(ge=1, le=1024)
    alpha: float | None = Field(default=None, description="scale numerator; default 2 * rank")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)


class QuantizeSpec(_Strict):
    mode: Literal["int8", "int4"] = "int8"
    group_size: int = Field(default=32, ge=1)


class ExportSpec(_Strict):
    format: Literal["onnx"] = "onnx"
    opset: int | None = Field(default=None, ge=17, le=20, description="ONNX opset; default 18")


class EvaluateSpec(_Strict):
    split: Literal["train", "val"] = "val"
    max_batches: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1, le=1024)


class JobSpec(_Strict):
    """What to run. Which fields a kind needs is checked by `validation.validate_spec`."""

    kind: Kind
    preset: str | None = Field(default=None, description="zoo preset (train; finetune: the recipe)")
    model: dict[str, Any] = Field(default_factory=dict, description="GPTConfig overrides")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides")
    dataset: str | None = Field(
        default=None, description="built-in data set name or uploaded data set id/name"
    )
    base_model: str | None = Field(default=None, description="registry ref: name, name@alias or name/3")
    output_model: str | None = Field(default=None, description="registry model the result is pushed to")
    checkpoint_interval: int | None = Field(default=None, ge=1, description="steps between checkpoints")
    lora: LoRASpec | None = None
    quantize: QuantizeSpec | None = None
    evaluate: EvaluateSpec | None = None
    export: ExportSpec | None = None


class JobPublic(BaseModel):
    id: str
    kind: str
    state: State
    spec: dict[str, Any]
    preset: str | None
    output_model: str | None
    base_model: str | None
    dataset: str | None
    dataset_sha256: str | None
    step: int
    total_steps: int | None
    progress: float | None
    eta_seconds: float | None
    loss: float | None
    val_loss: float | None
    tokens_per_s: float | None
    checkpoint_step: int | None
    resumed_from_step: int | None
    attempts: int
    cancel_requested: bool
    worker: str | None
    registry_version: str | None
    best_version: str | None
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class MetricPoint(BaseModel):
    step: int
    kind: str
    values: dict[str, float]


class MetricsPublic(BaseModel):
    data: list[MetricPoint]
    last_step: int


class LogLine(BaseModel):
    id: int
    at: datetime
    level: str
    message: str


class LogsPublic(BaseModel):
    data: list[LogLine]


class DatasetPublic(BaseModel):
    id: str
    name: str
    filename: str
    format: str
    size: int
    sha256: str
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int
