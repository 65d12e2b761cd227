"""The model refs a page offers: what the inference service holds, then the registry's aliases.

Loaded models come first (they answer at once); the registry's aliases and latest
versions follow (loaded on first use). A registry that cannot be reached leaves its part
out: a typed ref still works, and the Registry page says what is wrong with it.
"""

from __future__ import annotations

from services.ui.connection import clients
from services.ui.errors import shown_errors


def model_choices() -> list[str]:
    """Loaded model ids, then `name@alias` and `name/latest` of the registry's models, deduplicated."""
    choices: list[str] = []
    with shown_errors("Listing the inference service's models"):
        choices += [m.id for m in clients().inference.models()]
    try:
        for model in clients().registry.list_models(limit=100):
            choices += [f"{model['name']}@{a}" for a in sorted(model.get("aliases", {}))]
            if model.get("latest_version"):
                choices.append(f"{model['name']}/{model['latest_version']}")
    except (ConnectionError, ValueError):
        pass
    return list(dict.fromkeys(choices))
