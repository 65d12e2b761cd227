"""Bearer-key auth for mutating routes: off when no key is configured.

`Authorization: Bearer <key>` is checked against every configured key with
`hmac.compare_digest`, so timing does not leak how much of a key matched. A missing or
malformed header is 401 (with `WWW-Authenticate: Bearer`); a well-formed wrong key is 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header

from services.common.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_bearer(authorization: str | None, keys: frozenset[str]) -> None:
    """Raise ApiError 401/403 unless `authorization` carries one of `keys` (no-op if `keys` is empty)."""
    if not keys:
        return
    if not authorization:
        raise ApiError(
            401, "unauthorized", "this route needs an 'Authorization: Bearer <key>' header", _CHALLENGE
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer <key>'", _CHALLENGE)
    given = token.encode("utf-8")
    matched = False
    for key in keys:  # no early exit: every key is compared
        matched |= hmac.compare_digest(given, key.encode("utf-8"))
    if not matched:
        raise ApiError(403, "forbidden", "the bearer key is not valid")


def require_api_key(keys: frozenset[str]) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that enforces `check_bearer` with `keys` (async: no thread-pool hop)."""

    async def dependency(authorization: Annotated[str | None, Header()] = None) -> None:
        check_bearer(authorization, keys)

    return dependency
