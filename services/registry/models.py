"""The registry's tables (SQLAlchemy 2 declarative), all prefixed `registry_`.

Why these shapes: tags and metrics are rows, not JSON, so "versions with tag X and
val_loss < 1.5" is an indexed query however many versions there are; a model keeps
`last_version`, a counter bumped by one atomic UPDATE, so concurrent uploads get
distinct consecutive numbers and a deleted number is never reused; artifacts name a
content-addressed blob by sha256, so identical files are stored once; every alias
move is a row in `registry_alias_events`, the audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class RegisteredModel(Base):
    __tablename__ = "registry_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(4000), default="")
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tags: Mapped[list[ModelTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )
    aliases: Mapped[list[Alias]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class ModelTag(Base):
    __tablename__ = "registry_model_tags"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("registry_models.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class ModelVersion(Base):
    __tablename__ = "registry_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_registry_versions_model_version"),
        Index("ix_registry_versions_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    description: Mapped[str] = mapped_column(String(4000), default="")
    preset: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gpt_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    tokenizer_kind: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("registry_versions.id", ondelete="SET NULL"), nullable=True, index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    dataset_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    model: Mapped[RegisteredModel] = relationship(back_populates="versions")
    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])
    tags: Mapped[list[VersionTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    metrics: Mapped[list[VersionMetric]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    artifacts: Mapped[list[Artifact]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class VersionTag(Base):
    __tablename__ = "registry_version_tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("registry_versions.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class VersionMetric(Base):
    __tablename__ = "registry_version_metrics"
    __table_args__ = (Index("ix_registry_version_metrics_key_value", "key", "value"),)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("registry_versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    __tablename__ = "registry_artifacts"
    __table_args__ = (UniqueConstraint("version_id", "path", name="uq_registry_artifacts_version_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("registry_versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Alias(Base):
    __tablename__ = "registry_aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("registry_models.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("registry_versions.id", ondelete="RESTRICT"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    version: Mapped[ModelVersion] = relationship()


class AliasEvent(Base):
    """One alias move (or removal): the audit trail. Versions are kept as numbers, so it outlives them."""

    __tablename__ = "registry_alias_events"
    __table_args__ = (Index("ix_registry_alias_events_model_alias", "model_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registry_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
