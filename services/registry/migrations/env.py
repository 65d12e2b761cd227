"""Alembic environment of the registry: its tables only, its own version table (see app.migrate)."""

from alembic import context

from services.common.database import run_alembic_env
from services.registry.models import Base

run_alembic_env(context, Base.metadata)
