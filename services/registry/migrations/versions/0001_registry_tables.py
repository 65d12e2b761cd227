"""The registry's tables: models, versions, tags, metrics, artifacts, aliases and alias events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=4000), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "registry_alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("registry_alias_events", schema=None) as batch_op:
        batch_op.create_index("ix_registry_alias_events_model_alias", ["model_id", "alias"], unique=False)

    op.create_table(
        "registry_model_tags",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "tag"),
    )
    with op.batch_alter_table("registry_model_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_model_tags_tag"), ["tag"], unique=False)

    op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=4000), nullable=False),
        sa.Column("preset", sa.String(length=128), nullable=True),
        sa.Column("gpt_config", sa.JSON(), nullable=True),
        sa.Column("tokenizer_kind", sa.String(length=64), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parent_id"], ["registry_versions.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "version", name="uq_registry_versions_model_version"),
    )
    with op.batch_alter_table("registry_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_versions_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_registry_versions_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index("ix_registry_versions_status", ["status"], unique=False)

    op.create_table(
        "registry_aliases",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registry_models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("model_id", "alias"),
    )
    with op.batch_alter_table("registry_aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_aliases_version_id"), ["version_id"], unique=False)

    op.create_table(
        "registry_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "path", name="uq_registry_artifacts_version_path"),
    )
    with op.batch_alter_table("registry_artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_artifacts_sha256"), ["sha256"], unique=False)

    op.create_table(
        "registry_version_metrics",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "key"),
    )
    with op.batch_alter_table("registry_version_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_registry_version_metrics_key_value", ["key", "value"], unique=False)

    op.create_table(
        "registry_version_tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "tag"),
    )
    with op.batch_alter_table("registry_version_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_version_tags_tag"), ["tag"], unique=False)

    if op.get_bind().dialect.name == "postgresql":  # lets `name LIKE 'prefix%'` use an index
        op.create_index(
            "ix_registry_models_name_pattern",
            "registry_models",
            ["name"],
            postgresql_ops={"name": "text_pattern_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_registry_models_name_pattern", table_name="registry_models")
    with op.batch_alter_table("registry_version_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_version_tags_tag"))

    op.drop_table("registry_version_tags")
    with op.batch_alter_table("registry_version_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_registry_version_metrics_key_value")

    op.drop_table("registry_version_metrics")
    with op.batch_alter_table("registry_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_artifacts_sha256"))

    op.drop_table("registry_artifacts")
    with op.batch_alter_table("registry_aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_aliases_version_id"))

    op.drop_table("registry_aliases")
    with op.batch_alter_table("registry_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_registry_versions_status")
        batch_op.drop_index(batch_op.f("ix_registry_versions_parent_id"))
        batch_op.drop_index(batch_op.f("ix_registry_versions_job_id"))

    op.drop_table("registry_versions")
    with op.batch_alter_table("registry_model_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_model_tags_tag"))

    op.drop_table("registry_model_tags")
    with op.batch_alter_table("registry_alias_events", schema=None) as batch_op:
        batch_op.drop_index("ix_registry_alias_events_model_alias")

    op.drop_table("registry_alias_events")
    op.drop_table("registry_models")
