"""Request and response bodies of the job API; `JobSpec` is also what a worker runs.

A spec is plain JSON data: it is stored in the job row as submitted and read back by the
worker, so a job means the same thing on every worker and after any number of retries.
Its fields are checked here for shape and by `services.trainer.validation` against the
zoo, the data sets and the registry, before anything is enqueued. Request bodies are strict
and their strings and integers fit the database (`services.common.schemas`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.schemas import JsonInt, RequestModel, SqlText

Kind = Literal["train", "finetune", "sft", "evaluate", "quantize", "export"]
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class LoRASpec(RequestModel):
    rank: JsonInt = Field(ge=1, le=1024)
    alpha: float | None = Field(default=None, description="scale numerator; default 2 * rank")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)


class QuantizeSpec(RequestModel):
    mode: Literal["int8", "int4"] = "int8"
    group_size: JsonInt = Field(default=32, ge=1, le=1 << 20)


class ExportSpec(RequestModel):
    """Which runtime the export is for (`microgpt.export`); `quant` is for gguf, `opset` for onnx."""

    format: Literal["hf", "gguf", "onnx"] = "onnx"
    quant: Literal["f32", "f16", "q8_0", "q4_0"] | None = Field(
        default=None, description="gguf tensor type; default f32"
    )
    opset: JsonInt | None = Field(default=None, ge=17, le=20, description="ONNX opset; default 18")


class EvaluateSpec(RequestModel):
    """A loss evaluation (loss, perplexity, bits per byte) of a data set's split, or with `tasks`
    the accuracy of greedy replies per task (`microgpt.task_eval`)."""

    split: Literal["train", "val", "validation", "test"] | None = Field(
        default=None, description="val or train for a loss (default val); test, validation or train for tasks"
    )
    max_batches: JsonInt | None = Field(default=None, ge=1, le=1 << 30)
    batch_size: JsonInt = Field(default=8, ge=1, le=1024)
    tasks: list[Annotated[SqlText, Field(max_length=64)]] | None = Field(
        default=None,
        max_length=64,
        description='task names (e.g. ["add", "reverse", "names"]) or ["all"]: accuracy per task on the '
        "built-in chat tasks' split, or on an uploaded messages data set",
    )
    limit: JsonInt | None = Field(default=None, ge=1, le=1 << 30, description="tasks: the first N of each")


class JobSpec(RequestModel):
    """What to run. Which fields a kind needs is checked by `validation.validate_spec`."""

    kind: Kind
    preset: SqlText | None = Field(
        default=None, max_length=64, description="zoo preset (train; finetune and sft: the recipe)"
    )
    model: dict[str, Any] = Field(default_factory=dict, description="GPTConfig overrides")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides")
    dataset: SqlText | None = Field(
        default=None,
        max_length=128,
        description="built-in data set name or uploaded data set id/name (sft: default the built-in chat)",
    )
    base_model: SqlText | None = Field(
        default=None, max_length=160, description="registry ref: name, name@alias or name/3"
    )
    output_model: SqlText | None = Field(
        default=None,
        max_length=128,
        description="registry model the result is pushed to; default: see the job's `output_model`",
    )
    checkpoint_interval: JsonInt | None = Field(
        default=None, ge=1, le=1 << 30, description="steps between checkpoints"
    )
    lora: LoRASpec | None = Field(default=None, description="finetune and sft: train LoRA adapters only")
    quantize: QuantizeSpec | None = None
    evaluate: EvaluateSpec | None = None
    export: ExportSpec | None = None


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from a Job row

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
    progress: float | None = None  # derived, not stored: set by the route
    eta_seconds: float | None = None
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
    model_config = ConfigDict(from_attributes=True)

    step: int
    kind: str
    values: dict[str, float]


class MetricsPublic(BaseModel):
    data: list[MetricPoint]
    last_step: int


class LogLine(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    level: str
    message: str


class LogsPublic(BaseModel):
    data: list[LogLine]


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
