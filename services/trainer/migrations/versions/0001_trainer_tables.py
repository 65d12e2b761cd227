"""The trainer's first tables: jobs, job metrics, job logs, data sets, workers.

Revision ID: trainer_0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

from services.trainer.models import UTCDateTime

revision = "trainer_0001"
down_revision = None
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "trainer_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("preset", sa.String(64)),
        sa.Column("output_model", sa.String(128)),
        sa.Column("base_model", sa.String(160)),
        sa.Column("dataset", sa.String(128)),
        sa.Column("dataset_sha256", sa.String(64)),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("total_steps", sa.Integer),
        sa.Column("loss", sa.Float),
        sa.Column("val_loss", sa.Float),
        sa.Column("tokens_per_s", sa.Float),
        sa.Column("checkpoint_step", sa.Integer),
        sa.Column("resumed_from_step", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("heartbeat_at", UTCDateTime()),
        sa.Column("registry_version", sa.String(160)),
        sa.Column("best_version", sa.String(160)),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_trainer_jobs"),
    )
    op.create_index("ix_trainer_jobs_kind", "trainer_jobs", ["kind"])
    op.create_index("ix_trainer_jobs_state", "trainer_jobs", ["state"])
    op.create_index("ix_trainer_jobs_output_model", "trainer_jobs", ["output_model"])
    op.create_index("ix_trainer_jobs_created_at", "trainer_jobs", ["created_at"])
    op.create_table(
        "trainer_job_metrics",
        sa.Column("id", _BIGINT, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("values", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trainer_job_metrics"),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["trainer_jobs.id"],
            name="fk_trainer_job_metrics_job_id_trainer_jobs",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("job_id", "kind", "step", name="uq_trainer_job_metrics_point"),
    )
    op.create_index("ix_trainer_job_metrics_job_id", "trainer_job_metrics", ["job_id"])
    op.create_table(
        "trainer_job_logs",
        sa.Column("id", _BIGINT, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trainer_job_logs"),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["trainer_jobs.id"],
            name="fk_trainer_job_logs_job_id_trainer_jobs",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_trainer_job_logs_job_id", "trainer_job_logs", ["job_id"])
    op.create_table(
        "trainer_datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trainer_datasets"),
    )
    op.create_index("ix_trainer_datasets_name", "trainer_datasets", ["name"])
    op.create_table(
        "trainer_workers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("current_job", sa.String(32)),
        sa.PrimaryKeyConstraint("name", name="pk_trainer_workers"),
    )


def downgrade() -> None:
    op.drop_table("trainer_workers")
    op.drop_table("trainer_datasets")
    op.drop_table("trainer_job_logs")
    op.drop_table("trainer_job_metrics")
    op.drop_table("trainer_jobs")
