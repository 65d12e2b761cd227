"""How the `microgpt` command reaches code that lives with the services, without importing it.

The library must import (and its commands run) where `services/` is not installed, so it
never imports `services.*` at module level; the commands that start or administer a
service look their entry point up here when they run, and a missing `services` package
is one clear error line instead of a traceback.

    run_worker = service_entry("services.trainer.worker_entry", "run_worker")
"""

from __future__ import annotations

import importlib
from typing import Any


class ServicesMissing(ValueError):
    """The command needs microgpt's services (the `services` package), which are not importable."""


def service_entry(module: str, name: str) -> Any:
    """`module.name`, imported now; ServicesMissing when the `services` package is not installed."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "services":
            raise
        raise ServicesMissing(
            f"this command needs microgpt's services ({module}), which are not installed here: "
            f"run it from a checkout of microgpt or install the package with its services"
        ) from e
    return getattr(found, name)
