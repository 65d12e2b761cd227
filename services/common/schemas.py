"""The schema pieces every service shares: the error body, strict request bodies, database-safe fields.

Every constraint lives in the type, so it is checked once at the edge (a 422 before a route
runs) and it is in the OpenAPI document, where clients and fuzzers read it:

- `SqlText`: PostgreSQL refuses a NUL character in text (`cannot contain NUL`, a 500 if it
  reaches the driver), so every string a route may write or look up is refused with 422 instead.
- `MAX_INT`, `MAX_BIGINT`: the bounds of integers that reach an INTEGER column or an OFFSET.
- `RequestModel`: a request body is validated strictly, so `false` is not the integer 0 and
  `0` is not the boolean false, and unknown fields are refused. Its integers are `JsonInt`:
  JSON Schema counts `3.0` as an integer, so it is one here too (but `true` is not).
- `ErrorResponse`: the body of every error, `{"error": "<code>", "detail": ...}`, documented
  on every route by `services.common.openapi`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

NO_NUL = r"^[^\x00]*$"
MAX_INT = 2**31 - 1  # SQL INTEGER
MAX_BIGINT = 2**63 - 1  # SQL BIGINT, and OFFSET


def _integral_float_as_int(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bounds go before the validator (`Annotated[int, Field(ge=1), AS_INT]`), or on the model field
# (`n: JsonInt = Field(ge=1)`); after it they would be left out of the JSON schema.
AS_INT = BeforeValidator(_integral_float_as_int)
JsonInt = Annotated[int, AS_INT]
SqlText = Annotated[str, Field(pattern=NO_NUL)]


class RequestModel(BaseModel):
    """A request body: no type coercion (JSON types must match), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class FieldError(BaseModel):
    """One invalid field of a 422: where (`["body", "train", "lr"]`), what, and pydantic's error type."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: str = Field(description="a machine-readable code: not_found, validation_error, conflict, ...")
    detail: str | list[FieldError] | dict[str, Any] | None = Field(
        description="a message; for 422 the invalid fields; for a failed readiness check, per check"
    )
