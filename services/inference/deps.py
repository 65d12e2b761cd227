"""Dependencies of the inference routes as `Annotated` aliases over what `create_app` put on
`app.state` (`services.common.deps`); they serve HTTP routes and the WebSocket alike."""

from __future__ import annotations

from typing import Annotated

import anyio

from microgpt.settings import Settings
from services.common.deps import from_state
from services.inference.metrics import InferenceMetrics
from services.inference.model_pool import ModelPool

PoolDep = Annotated[ModelPool, from_state("pool")]
SettingsDep = Annotated[Settings, from_state("settings")]
MetricsDep = Annotated[InferenceMetrics, from_state("metrics")]
# one interpret request at a time per app: each may use every core for a moment
InterpretLimiterDep = Annotated[anyio.CapacityLimiter, from_state("interpret_limiter")]
