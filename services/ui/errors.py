"""A refusing or unreachable service as a clear message on the page, never a traceback.

    with shown_errors("Loading the jobs"):
        jobs = clients().trainer.list_jobs()
        ...

Everything inside the block stops at the first error, the message replaces it, and the
rest of the page (and every other page) keeps working.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import streamlit as st

from microgpt.clients.http import describe_detail

log = logging.getLogger("microgpt.ui")


def explain(e: Exception) -> str:
    """What went wrong, in words a user can act on, from a client's exception."""
    status: int | None = getattr(e, "status", None)
    service = getattr(e, "service", None) or (
        "registry" if type(e).__name__ == "RegistryError" else "service"
    )
    detail = describe_detail(getattr(e, "detail", str(e)))
    if isinstance(e, ConnectionError):
        return f"{e}. Is it running? `microgpt up` starts every service."
    if status in (401, 403):
        return (
            f"The {service} refused the request (HTTP {status}): set `MICROGPT_API_KEY` to a key it accepts."
        )
    if status == 404:
        return f"Not found (the {service} answered 404): {detail}"
    if status == 409:
        return f"The {service} refused (HTTP 409): {detail}"
    if status in (400, 413, 422):
        return f"The {service} rejected the request (HTTP {status}): {detail}"
    if status == 429:
        return f"The {service} is busy (HTTP 429): too many requests; try again in a moment."
    if status is not None and status >= 500:
        return f"The {service} failed (HTTP {status} {getattr(e, 'error', '')}): {detail}"
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def shown_errors(action: str, container: Any = None) -> Iterator[None]:
    """Run the block; on any error show `action` and what went wrong instead of raising.

    Streamlit's own control flow (rerun, stop) derives from BaseException and passes through.
    """
    try:
        yield
    except Exception as e:
        if not hasattr(e, "status") and not isinstance(e, ConnectionError):
            log.exception("%s failed", action)
        (container or st).error(f"**{action} failed.** {explain(e)}", icon=":material/error:")
