"""The model refs a page offers: what the inference service holds, then the registry's aliases.

Loaded models come first (they answer at once); the registry's aliases and latest
versions follow (loaded on first use). A registry that cannot be reached leaves its part
out: a typed ref still works, and the Registry page says what is wrong with it.
"""

from __future__ import annotations

import contextlib

from services.ui.connection import clients
from services.ui.errors import shown_errors


def registry_refs(limit: int = 200) -> list[str]:
    """`name@alias` and `name/N` (the latest version) of the registry's models; raises what the
    registry client raises when it cannot be reached."""
    refs: list[str] = []
    for model in clients().registry.list_models(limit=limit):
        refs += [f"{model['name']}@{a}" for a in sorted(model.get("aliases", {}))]
        if model.get("latest_version"):
            refs.append(f"{model['name']}/{model['latest_version']}")
    return refs


def model_choices() -> list[str]:
    """Loaded model ids, then the registry's refs (`registry_refs`), deduplicated."""
    choices: list[str] = []
    with shown_errors("Listing the inference service's models"):
        choices += [m.id for m in clients().inference.models()]
    with contextlib.suppress(ConnectionError, ValueError):  # the Registry page says what is wrong
        choices += registry_refs()
    return list(dict.fromkeys(choices))
