"""Server-Sent Events as OpenAI streams them: `data: <json>\\n\\n` per chunk, then `data: [DONE]\\n\\n`.

`EventStream` closes its generator however the response ends, so a generator's `finally`
(which cancels the engine handles) runs at once when the client goes away, not whenever
the garbage collector finalises it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


class EventStream(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: Any) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
