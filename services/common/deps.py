"""How every service hands what its app factory built to its routes: `app.state` attributes,
read by `Annotated` dependency aliases made with `from_state`.

    SettingsDep = Annotated[Settings, from_state("settings")]   # in services/<name>/deps.py
    def route(settings: SettingsDep) -> ...

The factory (`create_app`) sets `app.state.<name>` once; a route names what it needs by
type. The getter takes an `HTTPConnection`, so the same alias serves HTTP routes and
WebSockets, and is `async def` although it only reads an attribute: FastAPI runs a plain
`def` dependency in its thread pool, a thread hop and a GIL hand-over each, for nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from starlette.requests import HTTPConnection


def from_state(name: str) -> Any:
    """A dependency that returns `app.state.<name>`."""

    async def get(conn: HTTPConnection) -> Any:
        return getattr(conn.app.state, name)

    get.__name__ = f"app_state_{name}"
    return Depends(get)
