"""Path and query parameters shared by several routes, validated into 422 errors."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from services.common.errors import ApiError
from services.registry.schemas import VersionRef, check_name


def _ref(
    name: Annotated[str, Path(description="model name")],
    version: Annotated[str, Path(description="a version number, an alias, or `latest` (newest ready)")],
) -> VersionRef:
    try:
        return VersionRef.in_model(check_name(name), version)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None


def _name(name: Annotated[str, Path(description="model name")]) -> str:
    try:
        return check_name(name)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None


VersionRefDep = Annotated[VersionRef, Depends(_ref)]
NameDep = Annotated[str, Depends(_name)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]
Force = Annotated[bool, Query(description="also remove the aliases that point here")]
