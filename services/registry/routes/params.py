"""Path and query parameters shared by several routes; their patterns and bounds are in the OpenAPI."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from services.common.errors import ApiError
from services.common.schemas import MAX_BIGINT
from services.registry.schemas import (
    ALIAS_RE,
    NAME_RE,
    TAG_RE,
    VERSION_SELECTOR,
    VersionRef,
    anchored,
)

NamePath = Annotated[str, Path(pattern=anchored(NAME_RE), description="model name")]


def _ref(
    name: NamePath,
    version: Annotated[str, Path(**VERSION_SELECTOR)],
) -> VersionRef:
    try:
        return VersionRef.in_model(name, version)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None


VersionRefDep = Annotated[VersionRef, Depends(_ref)]
NameDep = NamePath
AliasPath = Annotated[
    str, Path(pattern=anchored(ALIAS_RE), description="an alias such as `production` (not `latest`)")
]
TagPath = Annotated[str, Path(pattern=anchored(TAG_RE))]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_BIGINT)]
Force = Annotated[bool, Query(description="also remove the aliases that point here")]
