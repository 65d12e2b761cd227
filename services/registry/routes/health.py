"""Probes: `/healthz` says the process is up; `/readyz` that the database and the object store answer."""

from __future__ import annotations

import anyio
from fastapi import APIRouter

from services.common.errors import ApiError
from services.registry.deps import RepoDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(repo: RepoDep, store: StoreDep) -> dict[str, str]:
    problems = {}
    with anyio.move_on_after(10):
        try:
            await anyio.to_thread.run_sync(repo.ping)
        except Exception as e:
            problems["database"] = " ".join(str(e).split())[:300]
        try:
            await anyio.to_thread.run_sync(store.check)
        except Exception as e:
            problems["object_store"] = " ".join(str(e).split())[:300]
        if not problems:
            return {"status": "ready", "database": "ok", "object_store": "ok"}
    raise ApiError(503, "not_ready", problems or "the readiness checks timed out")
