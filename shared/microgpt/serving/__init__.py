"""Serving: the continuous-batching engine that the inference service drives (token ids only).

`from microgpt.serving import BatchEngine` works; the engine module (and torch) is
imported on first use, so importing the CLI stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BatchEngine", "EngineError", "EngineStats", "QueueFullError", "RequestHandle", "TokenEvent"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("microgpt.serving.engine"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
