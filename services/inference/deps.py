"""Dependencies of the inference routes as `Annotated` aliases; everything lives on `app.state`.

`HTTPConnection` (not `Request`) so the same aliases serve HTTP routes and the WebSocket. They are
`async def` although they only read an attribute: FastAPI runs a plain `def` dependency in its
thread pool, a thread hop and a GIL hand-over each, several per request, for nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from microgpt.settings import Settings
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import ModelPool


async def get_pool(conn: HTTPConnection) -> ModelPool:
    return conn.app.state.pool


async def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


async def get_metrics(conn: HTTPConnection) -> InferenceMetrics:
    return conn.app.state.metrics


PoolDep = Annotated[ModelPool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[InferenceMetrics, Depends(get_metrics)]
