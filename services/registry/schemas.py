"""The registry's request and response bodies, and the rules for names, tags, aliases and refs.

Names, tags, aliases and artifact paths are validated here, once, at the edge; object
keys are built from sha256 digests only, so no user string ever reaches the store.
A *ref* names a version: `name` (latest ready), `name/3`, or `name@production`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
RESERVED_ALIASES = frozenset({"latest"})
MAX_PATH_DEPTH = 4
Status = Literal["pending", "ready", "failed"]


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"model name {name!r} must match {NAME_RE.pattern}")
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.fullmatch(alias) or alias in RESERVED_ALIASES:
        raise ValueError(
            f"alias {alias!r} must match {ALIAS_RE.pattern} and not be one of {sorted(RESERVED_ALIASES)}"
        )
    return alias


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise ValueError(f"tag {tag!r} must match {TAG_RE.pattern}")
    return tag


def check_sha256(digest: str) -> str:
    if not SHA256_RE.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a lowercase sha256 hex digest")
    return digest


def check_artifact_path(path: str) -> str:
    """A relative file path inside a version: up to 4 plain segments, no '..', nothing hidden."""
    segments = path.split("/")
    if (
        len(path) > 255
        or len(segments) > MAX_PATH_DEPTH
        or not all(_PATH_SEGMENT.fullmatch(s) for s in segments)
    ):
        raise ValueError(
            f"artifact path {path!r} must be up to {MAX_PATH_DEPTH} '/'-separated segments matching "
            f"{_PATH_SEGMENT.pattern}"
        )
    return path


def check_metric_names(metrics: dict[str, float] | None) -> dict[str, float] | None:
    for key in metrics or {}:
        check_tag(key)
    return metrics


Name = Annotated[str, AfterValidator(check_name)]
Tag = Annotated[str, AfterValidator(check_tag)]
Sha256 = Annotated[str, AfterValidator(check_sha256)]
ArtifactPath = Annotated[str, AfterValidator(check_artifact_path)]


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class VersionRef(BaseModel):
    """A parsed ref: exactly one of `version` / `alias`, or neither for "latest ready"."""

    name: Name
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, ref: str) -> VersionRef:
        if "@" in ref:
            name, _, alias = ref.partition("@")
            return cls(name=name, alias=check_alias(alias))
        if "/" in ref:
            name, _, number = ref.partition("/")
            if not number.isdigit():
                raise ValueError(f"ref {ref!r}: the part after '/' must be a version number")
            return cls(name=name, version=int(number))
        return cls(name=ref)

    @classmethod
    def in_model(cls, name: str, version: str) -> VersionRef:
        """A path's `{version}`: a number, an alias, or `latest`."""
        if version.isdigit():
            return cls(name=name, version=int(version))
        if version == "latest":
            return cls(name=name)
        return cls(name=name, alias=check_alias(version))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


# --- models ---------------------------------------------------------------------------


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: str = Field(default="", max_length=4000)
    tags: list[Tag] = []


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=4000)
    tags: list[Tag] | None = None


class ModelPublic(BaseModel):
    name: str
    description: str
    tags: list[str]
    latest_version: int | None = Field(description="the newest ready version")
    version_count: int
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


# --- versions -------------------------------------------------------------------------


class LineageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parent: str | None = Field(default=None, description="a ref: name/3 or name@alias")
    job_id: str | None = Field(default=None, max_length=128)
    dataset_sha256: Sha256 | None = None

    @field_validator("parent")
    @classmethod
    def _ref(cls, parent: str | None) -> str | None:
        if parent is not None:
            VersionRef.parse(parent)
        return parent


class Lineage(BaseModel):
    parent: str | None = None
    job_id: str | None = None
    dataset_sha256: str | None = None


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(default="", max_length=4000)
    preset: str | None = Field(default=None, max_length=128)
    gpt_config: dict[str, Any] | None = Field(default=None, description="the checkpoint's model config")
    tokenizer_kind: str | None = Field(default=None, max_length=64)
    metrics: dict[str, float] = {}
    lineage: LineageIn = LineageIn()
    tags: list[Tag] = []
    created_by: str | None = Field(default=None, max_length=128)
    extra: dict[str, Any] = {}

    _metrics = field_validator("metrics")(lambda m: check_metric_names(m))


class VersionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=4000)
    metrics: dict[str, float] | None = Field(default=None, description="merged into the version's metrics")
    tags: list[Tag] | None = Field(default=None, description="replaces the version's tags")
    extra: dict[str, Any] | None = None

    _metrics = field_validator("metrics")(lambda m: check_metric_names(m))


class FileInfo(BaseModel):
    size: int
    sha256: str


class VersionPublic(BaseModel):
    name: str
    version: int
    status: Status
    description: str
    preset: str | None
    gpt_config: dict[str, Any] | None
    tokenizer_kind: str | None
    metrics: dict[str, float]
    lineage: Lineage
    tags: list[str]
    aliases: list[str]
    files: dict[str, FileInfo]
    extra: dict[str, Any]
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    finalized_at: datetime | None


class VersionsPublic(BaseModel):
    data: list[VersionPublic]
    count: int


class FinalizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: dict[ArtifactPath, Sha256] = Field(
        min_length=1, description="every file of the version and its expected sha256"
    )


# --- aliases --------------------------------------------------------------------------


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | str = Field(description="a version number, or an alias/`latest` of the same model")


class AliasPublic(BaseModel):
    name: str
    alias: str
    version: int
    updated_at: datetime


class AliasEventPublic(BaseModel):
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str | None
    at: datetime


class AliasEventsPublic(BaseModel):
    data: list[AliasEventPublic]
    count: int


# --- search and maintenance -----------------------------------------------------------


class MetricBound(BaseModel):
    key: str
    op: Literal["<", "<=", ">", ">=", "="]
    value: float

    @classmethod
    def parse(cls, text: str) -> MetricBound:
        """`val_loss<1.5`, `params>=1000000`."""
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._:-]*)\s*(<=|>=|<|>|=)\s*(\S+)", text)
        if not match:
            raise ValueError(f"metric filter {text!r} must look like 'val_loss<1.5' (ops: < <= > >= =)")
        key, op, value = match.groups()
        try:
            return cls(key=key, op=op, value=float(value))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"metric filter {text!r}: {value!r} is not a number") from None


class VersionFilter(BaseModel):
    name: str | None = None
    name_prefix: str | None = None
    status: Status | None = None
    tag: list[str] = []
    alias: str | None = None
    metrics: list[MetricBound] = []
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class GcReport(BaseModel):
    failed_versions: list[str] = Field(description="stale pending versions marked failed")
    deleted_blobs: int
    deleted_bytes: int
    deleted_temp: int
    kept_blobs: int
