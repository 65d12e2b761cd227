"""Domain errors: what went wrong, in terms of the domain, never of a transport.

The library, the repositories and the services' own logic raise these; each service maps
them to HTTP in one place (`services.common.errors`: NotFound 404, Conflict 409, Invalid
400, InvalidFields 422, Unavailable 503), and the CLI prints them as one line (Invalid is a ValueError, so
callers that already refuse bad input with ValueError keep working).

    raise NotFound("model_not_found", f"no model named {name!r}")

`code` is a short machine-readable name (`model_not_found`); `detail` is for a person
(a string, or a list of field errors for Invalid).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """An expected failure: a short code and a detail for a person."""

    def __init__(self, code: str, detail: Any = None) -> None:
        super().__init__(detail if isinstance(detail, str) else f"{code}: {detail}")
        self.code = code
        self.detail = detail


class NotFound(DomainError):
    """The named thing does not exist (or is not loaded)."""


class Conflict(DomainError):
    """The thing exists, but is in a state that refuses the operation (exists already, not ready, ...)."""


class Invalid(DomainError, ValueError):
    """The input is wrong in itself, whatever the state."""


class InvalidFields(Invalid):
    """Named fields of the input are wrong: `detail` is a list of {loc, msg, type}, the shape of
    pydantic's (and so FastAPI's request validation) errors, so a client reads both alike."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("validation_error", detail)


class Unavailable(DomainError):
    """A service this operation depends on did not answer; trying again later may work."""
