"""Alembic environment of the trainer: its own version table, run by `run_migrations`."""

from alembic import context

from services.common.database import run_alembic_env
from services.trainer.models import TrainerBase

run_alembic_env(context, TrainerBase.metadata)
