"""The registry's request and response bodies, and the rules for names, tags, aliases and refs.

Names, tags, aliases and artifact paths are validated here, once, at the edge, by patterns
that the OpenAPI document carries too; object keys are built from sha256 digests only, so no
user string ever reaches the store. Free text that reaches SQL is `SqlText` (no NUL) and
numbers are bounded to their columns (`services.common.schemas`).
A *ref* names a version: `name` (latest ready), `name/3`, or `name@production`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from microgpt.registry.names import ALIAS_RE, NAME_RE, REF_RE, VERSION_NUMBER_RE, anchored
from services.common.schemas import AS_INT, MAX_BIGINT, MAX_INT, RequestModel, SqlText

TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_NUMBER = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
METRIC_BOUND_RE = re.compile(rf"([A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}) *(<=|>=|<|>|=) *({_NUMBER})")
RESERVED_ALIASES = frozenset({"latest"})
MAX_PATH_DEPTH = 4
Status = Literal["pending", "ready", "failed"]


def check_alias(alias: str) -> str:
    if not ALIAS_RE.fullmatch(alias) or alias in RESERVED_ALIASES:
        raise ValueError(
            f"alias {alias!r} must match {ALIAS_RE.pattern} and not be one of {sorted(RESERVED_ALIASES)}"
        )
    return alias


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


_SEGMENTS = rf"{_PATH_SEGMENT.pattern}(?:/{_PATH_SEGMENT.pattern}){{0,{MAX_PATH_DEPTH - 1}}}"
Name = Annotated[str, Field(pattern=anchored(NAME_RE), description="model name")]
Tag = Annotated[str, Field(pattern=anchored(TAG_RE))]
Ref = Annotated[str, Field(pattern=anchored(REF_RE), description="`name`, `name/3` or `name@alias`")]
Sha256 = Annotated[str, Field(pattern=anchored(SHA256_RE))]
ArtifactPath = Annotated[str, Field(pattern=f"^{_SEGMENTS}$", max_length=255)]
VERSION_SELECTOR = dict(
    pattern=f"^(?:{VERSION_NUMBER_RE.pattern}|{ALIAS_RE.pattern})$",
    description="a version number, an alias, or `latest` (newest ready)",
)
VersionSelector = Annotated[str, Field(**VERSION_SELECTOR)]
ONLY_PATTERN_KEYS = {"additionalProperties": False}  # pydantic documents key patterns, not that they are all
Metrics = Annotated[dict[Tag, float], Field(json_schema_extra=ONLY_PATTERN_KEYS)]
MetricBoundText = Annotated[str, Field(pattern=anchored(METRIC_BOUND_RE))]
VersionNumber = Annotated[int, Field(ge=1, le=MAX_INT), AS_INT]
Offset = Annotated[int, Field(ge=0, le=MAX_BIGINT)]


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]  # a row's datetime, as UTC on every database


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


class ModelCreate(RequestModel):
    name: Name
    description: SqlText = Field(default="", max_length=4000)
    tags: list[Tag] = []


class ModelUpdate(RequestModel):
    description: SqlText | None = Field(default=None, max_length=4000)
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


class LineageIn(RequestModel):
    parent: Ref | None = Field(default=None, description="a ref: name/3 or name@alias")
    job_id: SqlText | None = Field(default=None, max_length=128)
    dataset_sha256: Sha256 | None = None


class Lineage(BaseModel):
    parent: str | None = None
    job_id: str | None = None
    dataset_sha256: str | None = None


class VersionCreate(RequestModel):
    description: SqlText = Field(default="", max_length=4000)
    preset: SqlText | None = Field(default=None, max_length=128)
    gpt_config: dict[str, Any] | None = Field(default=None, description="the checkpoint's model config")
    tokenizer_kind: SqlText | None = Field(default=None, max_length=64)
    metrics: Metrics = {}
    lineage: LineageIn = LineageIn()
    tags: list[Tag] = []
    created_by: SqlText | None = Field(default=None, max_length=128)
    extra: dict[str, Any] = {}


class VersionUpdate(RequestModel):
    description: SqlText | None = Field(default=None, max_length=4000)
    metrics: Metrics | None = Field(default=None, description="merged into the version's metrics")
    tags: list[Tag] | None = Field(default=None, description="replaces the version's tags")
    extra: dict[str, Any] | None = None


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


class FinalizeRequest(RequestModel):
    files: Annotated[dict[ArtifactPath, Sha256], Field(json_schema_extra=ONLY_PATTERN_KEYS)] = Field(
        min_length=1, description="every file of the version and its expected sha256"
    )


# --- aliases --------------------------------------------------------------------------


class AliasSet(RequestModel):
    version: VersionNumber | VersionSelector = Field(
        description="a version number, or an alias/`latest` of the same model"
    )


class AliasPublic(BaseModel):
    name: str
    alias: str
    version: int
    updated_at: datetime


class AliasEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from an AliasEvent row

    alias: str
    from_version: int | None
    to_version: int | None
    actor: str | None
    at: UtcDatetime


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
        match = METRIC_BOUND_RE.fullmatch(text)
        if not match:
            raise ValueError(f"metric filter {text!r} must look like 'val_loss<1.5' (ops: < <= > >= =)")
        key, op, value = match.groups()
        try:
            return cls(key=key, op=op, value=float(value))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"metric filter {text!r}: {value!r} is not a number") from None


class VersionFilter(BaseModel):
    name: SqlText | None = None
    name_prefix: SqlText | None = None
    status: Status | None = None
    tag: list[SqlText] = []
    alias: SqlText | None = None
    metrics: list[MetricBound] = []
    limit: int = Field(default=50, ge=1, le=1000)
    offset: Offset = 0


class GcReport(BaseModel):
    failed_versions: list[str] = Field(description="stale pending versions marked failed")
    deleted_blobs: int
    deleted_bytes: int
    deleted_temp: int
    kept_blobs: int
