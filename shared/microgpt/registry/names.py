"""The registry's naming rules, once: model (and data set) names, aliases, version numbers, refs.

The registry's schemas, the trainer's job validation, the inference service's model specs and
`load_model` all parse the same strings, so they share these patterns (unanchored: callers use
`fullmatch`, or `anchored` for a JSON Schema pattern).

    REF_RE.fullmatch("names@production")      # a model reference
    PINNED_REF_RE.fullmatch("names/3")        # a ref naming one version or alias, not a bare name
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a model's or a data set's name
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
VERSION_NUMBER_RE = re.compile(r"[0-9]{1,9}")  # a version number that fits its INTEGER column
_VERSION_OR_ALIAS = rf"(?:/{VERSION_NUMBER_RE.pattern}|@{ALIAS_RE.pattern})"
REF_RE = re.compile(rf"(?:{NAME_RE.pattern}){_VERSION_OR_ALIAS}?")  # name, name/3 or name@alias
PINNED_REF_RE = re.compile(rf"(?:{NAME_RE.pattern}){_VERSION_OR_ALIAS}")  # name/3 or name@alias


def anchored(regex: re.Pattern[str]) -> str:
    """`regex` as a JSON Schema pattern that must match the whole value."""
    return f"^(?:{regex.pattern})$"
