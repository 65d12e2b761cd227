"""The only layer that reads and writes the registry's tables.

Every public method is one short transaction that returns plain schema objects, so no
session (and, on SQLite, no write lock) is held while an artifact streams. Version
numbers come from one atomic `UPDATE registry_models SET last_version = last_version + 1
... RETURNING`: on PostgreSQL the row lock makes concurrent creators queue, so they get
distinct consecutive numbers; alias moves lock the model row (`SELECT ... FOR UPDATE`)
so the alias and its audit event change together and in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from microgpt.errors import Conflict, Invalid, NotFound
from services.registry.models import (
    Alias,
    AliasEvent,
    Artifact,
    ModelTag,
    ModelVersion,
    RegisteredModel,
    VersionMetric,
    VersionTag,
    utcnow,
)
from services.registry.schemas import (
    AliasEventPublic,
    AliasEventsPublic,
    AliasPublic,
    FileInfo,
    Lineage,
    MetricBound,
    ModelCreate,
    ModelPublic,
    ModelsPublic,
    ModelUpdate,
    VersionCreate,
    VersionFilter,
    VersionPublic,
    VersionRef,
    VersionsPublic,
    VersionUpdate,
    as_utc,
    check_alias,
)

_OPS: dict[str, Callable[[Any, float], Any]] = {
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
    "=": lambda c, v: c == v,
}


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # --- lookups ----------------------------------------------------------------------

    @staticmethod
    def _model(s: Session, name: str, *, lock: bool = False) -> RegisteredModel:
        query = select(RegisteredModel).where(RegisteredModel.name == name)
        if lock:
            query = query.with_for_update()
        model = s.scalars(query).one_or_none()
        if model is None:
            raise NotFound("model_not_found", f"no model named {name!r}")
        return model

    def _resolve(self, s: Session, ref: VersionRef, *, lock: bool = False) -> ModelVersion:
        model = self._model(s, ref.name)
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if ref.version is not None:
            query = query.where(ModelVersion.version == ref.version)
            missing = f"{ref} does not exist"
        elif ref.alias is not None:
            alias = s.get(Alias, (model.id, ref.alias))
            if alias is None:
                raise NotFound("alias_not_found", f"{ref.name} has no alias {ref.alias!r}")
            query = query.where(ModelVersion.id == alias.version_id)
            missing = f"{ref} points at a deleted version"
        else:
            query = query.where(ModelVersion.status == "ready").order_by(ModelVersion.version.desc()).limit(1)
            missing = f"{ref.name} has no ready version"
        if lock:
            query = query.with_for_update()
        version = s.scalars(query).one_or_none()
        if version is None:
            raise NotFound("version_not_found", missing)
        return version

    # --- models -----------------------------------------------------------------------

    def create_model(self, body: ModelCreate) -> ModelPublic:
        try:
            with self._tx() as s:
                model = RegisteredModel(name=body.name, description=body.description)
                model.tags = [ModelTag(tag=t) for t in sorted(set(body.tags))]
                s.add(model)
        except IntegrityError:
            raise Conflict("model_exists", f"a model named {body.name!r} already exists") from None
        return self.get_model(body.name)

    def get_model(self, name: str) -> ModelPublic:
        with self._tx() as s:
            return self._models_public(s, [self._model(s, name)])[0]

    def list_models(self, *, prefix: str | None, tag: Sequence[str], limit: int, offset: int) -> ModelsPublic:
        with self._tx() as s:
            query = select(RegisteredModel)
            if prefix:
                query = query.where(RegisteredModel.name.startswith(prefix, autoescape=True))
            for t in tag:
                query = query.where(RegisteredModel.tags.any(ModelTag.tag == t))
            count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(RegisteredModel.name).limit(limit).offset(offset)).all()
            return ModelsPublic(data=self._models_public(s, rows), count=count)

    def update_model(self, name: str, body: ModelUpdate) -> ModelPublic:
        with self._tx() as s:
            model = self._model(s, name, lock=True)
            if body.description is not None:
                model.description = body.description
            if body.tags is not None:
                model.tags = [ModelTag(tag=t) for t in sorted(set(body.tags))]
            model.updated_at = utcnow()
        return self.get_model(name)

    def set_model_tag(self, name: str, tag: str, present: bool) -> ModelPublic:
        with self._tx() as s:
            model = self._model(s, name, lock=True)
            tags = {t.tag for t in model.tags}
            if present and tag not in tags:
                model.tags.append(ModelTag(tag=tag))
            elif not present:
                if tag not in tags:
                    raise NotFound("tag_not_found", f"{name} has no tag {tag!r}")
                model.tags = [t for t in model.tags if t.tag != tag]
            model.updated_at = utcnow()
        return self.get_model(name)

    def delete_model(self, name: str, *, force: bool, actor: str | None) -> None:
        with self._tx() as s:
            model = self._model(s, name, lock=True)
            if model.aliases and not force:
                names = ", ".join(sorted(a.alias for a in model.aliases))
                raise Conflict("model_aliased", f"{name} has aliases ({names}); pass force=true to delete")
            s.execute(sa.delete(Alias).where(Alias.model_id == model.id))
            s.execute(sa.delete(AliasEvent).where(AliasEvent.model_id == model.id))
            s.execute(sa.delete(ModelVersion).where(ModelVersion.model_id == model.id))
            s.execute(sa.delete(RegisteredModel).where(RegisteredModel.id == model.id))
            s.expunge_all()

    def _models_public(self, s: Session, models: Sequence[RegisteredModel]) -> list[ModelPublic]:
        ids = [m.id for m in models]
        if not ids:
            return []
        latest = dict(
            s.execute(
                select(ModelVersion.model_id, func.max(ModelVersion.version))
                .where(ModelVersion.model_id.in_(ids), ModelVersion.status == "ready")
                .group_by(ModelVersion.model_id)
            ).all()
        )
        counts = dict(
            s.execute(
                select(ModelVersion.model_id, func.count())
                .where(ModelVersion.model_id.in_(ids))
                .group_by(ModelVersion.model_id)
            ).all()
        )
        aliases: dict[int, dict[str, int]] = {i: {} for i in ids}
        for model_id, alias, number in s.execute(
            select(Alias.model_id, Alias.alias, ModelVersion.version)
            .join(ModelVersion, ModelVersion.id == Alias.version_id)
            .where(Alias.model_id.in_(ids))
        ):
            aliases[model_id][alias] = number
        return [
            ModelPublic(
                name=m.name,
                description=m.description,
                tags=sorted(t.tag for t in m.tags),
                latest_version=latest.get(m.id),
                version_count=counts.get(m.id, 0),
                aliases=dict(sorted(aliases[m.id].items())),
                created_at=as_utc(m.created_at),
                updated_at=as_utc(m.updated_at),
            )
            for m in models
        ]

    # --- versions ---------------------------------------------------------------------

    def create_version(self, name: str, body: VersionCreate) -> VersionPublic:
        with self._tx() as s:
            model = self._model(s, name)
            parent_id = None
            if body.lineage.parent is not None:
                parent = self._resolve(s, VersionRef.parse(body.lineage.parent))
                parent_id = parent.id
            number = s.execute(
                sa.update(RegisteredModel)
                .where(RegisteredModel.id == model.id)
                .values(last_version=RegisteredModel.last_version + 1, updated_at=utcnow())
                .returning(RegisteredModel.last_version),
                execution_options={"synchronize_session": False},
            ).scalar_one()
            version = ModelVersion(
                model_id=model.id,
                version=number,
                status="pending",
                description=body.description,
                preset=body.preset,
                gpt_config=body.gpt_config,
                tokenizer_kind=body.tokenizer_kind,
                parent_id=parent_id,
                job_id=body.lineage.job_id,
                dataset_sha256=body.lineage.dataset_sha256,
                extra=body.extra,
                created_by=body.created_by,
            )
            version.tags = [VersionTag(tag=t) for t in sorted(set(body.tags))]
            version.metrics = [VersionMetric(key=k, value=v) for k, v in body.metrics.items()]
            s.add(version)
            s.flush()
            return self._versions_public(s, [version])[0]

    def get_version(self, ref: VersionRef) -> VersionPublic:
        with self._tx() as s:
            return self._versions_public(s, [self._resolve(s, ref)])[0]

    def search_versions(self, f: VersionFilter) -> VersionsPublic:
        with self._tx() as s:
            query = select(ModelVersion).join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            if f.name is not None:
                query = query.where(RegisteredModel.name == f.name)
            if f.name_prefix:
                query = query.where(RegisteredModel.name.startswith(f.name_prefix, autoescape=True))
            if f.status is not None:
                query = query.where(ModelVersion.status == f.status)
            for t in f.tag:
                query = query.where(ModelVersion.tags.any(VersionTag.tag == t))
            if f.alias is not None:
                query = query.where(
                    sa.exists().where(Alias.version_id == ModelVersion.id, Alias.alias == f.alias)
                )
            for bound in f.metrics:
                query = query.where(self._metric_clause(bound))
            count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(ModelVersion.id.desc()).limit(f.limit).offset(f.offset)).all()
            return VersionsPublic(data=self._versions_public(s, rows), count=count)

    @staticmethod
    def _metric_clause(bound: MetricBound) -> Any:
        return sa.exists().where(
            VersionMetric.version_id == ModelVersion.id,
            VersionMetric.key == bound.key,
            _OPS[bound.op](VersionMetric.value, bound.value),
        )

    def update_version(self, ref: VersionRef, body: VersionUpdate) -> VersionPublic:
        with self._tx() as s:
            version = self._resolve(s, ref, lock=True)
            if body.description is not None:
                version.description = body.description
            if body.extra is not None:
                version.extra = body.extra
            if body.tags is not None:
                version.tags = [VersionTag(tag=t) for t in sorted(set(body.tags))]
            if body.metrics:
                current = {m.key: m for m in version.metrics}
                for key, value in body.metrics.items():
                    if key in current:
                        current[key].value = value
                    else:
                        version.metrics.append(VersionMetric(key=key, value=value))
            version.updated_at = utcnow()
            s.flush()
            return self._versions_public(s, [version])[0]

    def set_version_tag(self, ref: VersionRef, tag: str, present: bool) -> VersionPublic:
        with self._tx() as s:
            version = self._resolve(s, ref, lock=True)
            tags = {t.tag for t in version.tags}
            if present and tag not in tags:
                version.tags.append(VersionTag(tag=tag))
            elif not present:
                if tag not in tags:
                    raise NotFound("tag_not_found", f"{ref} has no tag {tag!r}")
                version.tags = [t for t in version.tags if t.tag != tag]
            version.updated_at = utcnow()
            s.flush()
            return self._versions_public(s, [version])[0]

    def delete_version(self, ref: VersionRef, *, force: bool, actor: str | None) -> None:
        with self._tx() as s:
            version = self._resolve(s, ref)
            model = self._model(s, ref.name, lock=True)
            aliases = s.scalars(select(Alias).where(Alias.version_id == version.id)).all()
            if aliases and not force:
                names = ", ".join(sorted(f"{model.name}@{a.alias}" for a in aliases))
                raise Conflict(
                    "version_aliased",
                    f"{model.name}/{version.version} is aliased ({names}); pass force=true",
                )
            for alias in aliases:
                s.add(
                    AliasEvent(
                        model_id=model.id,
                        alias=alias.alias,
                        from_version=version.version,
                        to_version=None,
                        actor=actor,
                    )
                )
                s.delete(alias)
            s.flush()
            s.delete(version)

    def _versions_public(self, s: Session, versions: Sequence[ModelVersion]) -> list[VersionPublic]:
        if not versions:
            return []
        ids = [v.id for v in versions]
        loaded = {
            v.id: v
            for v in s.scalars(
                select(ModelVersion)
                .where(ModelVersion.id.in_(ids))
                .options(
                    selectinload(ModelVersion.model),
                    selectinload(ModelVersion.tags),
                    selectinload(ModelVersion.metrics),
                    selectinload(ModelVersion.artifacts),
                    selectinload(ModelVersion.parent).selectinload(ModelVersion.model),
                )
            )
        }
        aliases: dict[int, list[str]] = {i: [] for i in ids}
        for version_id, alias in s.execute(
            select(Alias.version_id, Alias.alias).where(Alias.version_id.in_(ids))
        ):
            aliases[version_id].append(alias)
        out = []
        for vid in ids:
            v = loaded[vid]
            parent = f"{v.parent.model.name}/{v.parent.version}" if v.parent is not None else None
            out.append(
                VersionPublic(
                    name=v.model.name,
                    version=v.version,
                    status=v.status,  # type: ignore[arg-type]
                    description=v.description,
                    preset=v.preset,
                    gpt_config=v.gpt_config,
                    tokenizer_kind=v.tokenizer_kind,
                    metrics={m.key: m.value for m in sorted(v.metrics, key=lambda m: m.key)},
                    lineage=Lineage(parent=parent, job_id=v.job_id, dataset_sha256=v.dataset_sha256),
                    tags=sorted(t.tag for t in v.tags),
                    aliases=sorted(aliases[vid]),
                    files={
                        a.path: FileInfo(size=a.size, sha256=a.sha256)
                        for a in sorted(v.artifacts, key=lambda a: a.path)
                    },
                    extra=v.extra or {},
                    created_at=as_utc(v.created_at),
                    created_by=v.created_by,
                    updated_at=as_utc(v.updated_at),
                    finalized_at=as_utc(v.finalized_at) if v.finalized_at else None,
                )
            )
        return out

    # --- uploads ----------------------------------------------------------------------

    def pending_version(self, ref: VersionRef) -> VersionPublic:
        """The version, which must still be pending (artifacts can only be added before finalize)."""
        version = self.get_version(ref)
        if version.status != "pending":
            raise Conflict(
                "version_not_pending",
                f"{version.name}/{version.version} is {version.status}; cannot upload",
            )
        return version

    def record_artifact(self, name: str, number: int, path: str, size: int, sha256: str) -> None:
        """Add (or replace) one artifact of a pending version."""
        with self._tx() as s:
            version = self._resolve(s, VersionRef(name=name, version=number), lock=True)
            if version.status != "pending":
                raise Conflict("version_not_pending", f"{name}/{number} is {version.status}; cannot upload")
            existing = s.scalars(
                select(Artifact).where(Artifact.version_id == version.id, Artifact.path == path)
            ).one_or_none()
            if existing is None:
                s.add(Artifact(version_id=version.id, path=path, size=size, sha256=sha256))
            else:
                existing.size, existing.sha256, existing.created_at = size, sha256, utcnow()
            version.updated_at = utcnow()

    def finalize(
        self,
        name: str,
        number: int,
        expected: dict[str, str],
        check_blob: Callable[[str, int], None],
        fill: dict[str, Any] | None = None,
    ) -> VersionPublic:
        """Make a pending version ready if its artifacts are exactly `expected` ({path: sha256}).

        `check_blob(sha256, size)` raises unless the blob is in the store; `fill` sets
        metadata fields that are still empty (the preset and config read from config.json).
        """
        with self._tx() as s:
            version = self._resolve(s, VersionRef(name=name, version=number), lock=True)
            label = f"{name}/{number}"
            if version.status != "pending":
                raise Conflict("version_not_pending", f"{label} is already {version.status}")
            uploaded = {a.path: a for a in version.artifacts}
            missing = sorted(set(expected) - set(uploaded))
            unexpected = sorted(set(uploaded) - set(expected))
            if missing or unexpected:
                raise Invalid(
                    "files_mismatch",
                    {
                        "missing": missing,
                        "unexpected": unexpected,
                        "message": f"{label}: uploaded files differ",
                    },
                )
            bad = {
                p: {"expected": expected[p], "actual": a.sha256}
                for p, a in uploaded.items()
                if a.sha256 != expected[p]
            }
            if bad:
                raise Invalid("checksum_mismatch", {"files": bad, "message": f"{label}: sha256 mismatch"})
            for artifact in uploaded.values():
                check_blob(artifact.sha256, artifact.size)
            for key, value in (fill or {}).items():
                if getattr(version, key) is None and value is not None:
                    setattr(version, key, value)
            version.status = "ready"
            version.finalized_at = version.updated_at = utcnow()
            s.flush()
            return self._versions_public(s, [version])[0]

    def mark_failed(self, name: str, number: int) -> None:
        with self._tx() as s:
            version = self._resolve(s, VersionRef(name=name, version=number), lock=True)
            if version.status == "pending":
                version.status = "failed"
                version.updated_at = utcnow()

    def artifact(self, ref: VersionRef, path: str) -> tuple[VersionPublic, FileInfo]:
        version = self.get_version(ref)
        if version.status != "ready":
            raise Conflict("version_not_ready", f"{version.name}/{version.version} is {version.status}")
        if path not in version.files:
            raise NotFound("file_not_found", f"{version.name}/{version.version} has no file {path!r}")
        return version, version.files[path]

    # --- aliases ----------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, target: int | str, actor: str | None) -> AliasPublic:
        check_alias(alias)
        with self._tx() as s:
            model = self._model(s, name, lock=True)
            ref = (
                VersionRef(name=name, version=target)
                if isinstance(target, int)
                else VersionRef.in_model(name, target)
            )
            version = self._resolve(s, ref)
            if version.status != "ready":
                raise Conflict("version_not_ready", f"{name}/{version.version} is {version.status}")
            current = s.get(Alias, (model.id, alias), with_for_update=True)
            before = None
            if current is None:
                current = Alias(model_id=model.id, alias=alias, version_id=version.id)
                s.add(current)
            else:
                before = s.get(ModelVersion, current.version_id)
                current.version_id = version.id
            current.updated_at = utcnow()
            from_version = before.version if before is not None else None
            if from_version != version.version:
                s.add(
                    AliasEvent(
                        model_id=model.id,
                        alias=alias,
                        from_version=from_version,
                        to_version=version.version,
                        actor=actor,
                    )
                )
            return AliasPublic(name=name, alias=alias, version=version.version, updated_at=current.updated_at)

    def delete_alias(self, name: str, alias: str, actor: str | None) -> None:
        with self._tx() as s:
            model = self._model(s, name, lock=True)
            current = s.get(Alias, (model.id, alias), with_for_update=True)
            if current is None:
                raise NotFound("alias_not_found", f"{name} has no alias {alias!r}")
            before = s.get(ModelVersion, current.version_id)
            s.add(
                AliasEvent(
                    model_id=model.id,
                    alias=alias,
                    from_version=before.version if before else None,
                    to_version=None,
                    actor=actor,
                )
            )
            s.delete(current)

    def list_aliases(self, name: str) -> list[AliasPublic]:
        with self._tx() as s:
            model = self._model(s, name)
            rows = s.execute(
                select(Alias.alias, ModelVersion.version, Alias.updated_at)
                .join(ModelVersion, ModelVersion.id == Alias.version_id)
                .where(Alias.model_id == model.id)
                .order_by(Alias.alias)
            ).all()
            return [AliasPublic(name=name, alias=a, version=v, updated_at=as_utc(t)) for a, v, t in rows]

    def alias_history(self, name: str, alias: str | None, *, limit: int, offset: int) -> AliasEventsPublic:
        with self._tx() as s:
            model = self._model(s, name)
            query = select(AliasEvent).where(AliasEvent.model_id == model.id)
            if alias is not None:
                query = query.where(AliasEvent.alias == alias)
            count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(AliasEvent.id.desc()).limit(limit).offset(offset)).all()
            data = [AliasEventPublic.model_validate(e) for e in rows]
            return AliasEventsPublic(data=data, count=count)

    # --- maintenance ------------------------------------------------------------------

    def fail_stale_pending(self, cutoff: datetime) -> list[str]:
        """Mark pending versions untouched since `cutoff` failed (abandoned uploads)."""
        with self._tx() as s:
            stale = s.scalars(
                select(ModelVersion)
                .options(selectinload(ModelVersion.model))
                .where(ModelVersion.status == "pending", ModelVersion.updated_at < cutoff)
                .with_for_update()
            ).all()
            for v in stale:
                v.status = "failed"
                v.updated_at = utcnow()
            return [f"{v.model.name}/{v.version}" for v in stale]

    def live_blobs(self) -> set[str]:
        """sha256 of every artifact that a ready or pending version references."""
        with self._tx() as s:
            return set(
                s.scalars(
                    select(Artifact.sha256)
                    .join(ModelVersion, ModelVersion.id == Artifact.version_id)
                    .where(ModelVersion.status.in_(("ready", "pending")))
                    .distinct()
                )
            )

    def version_counts(self) -> dict[str, int]:
        with self._tx() as s:
            return dict(
                s.execute(select(ModelVersion.status, func.count()).group_by(ModelVersion.status)).all()
            )
