"""The dashboard's clients of the three services, built from the one `Settings` object.

Pages never build requests themselves: they call these clients (the same the CLI uses),
so the dashboard can only do what the services' APIs allow. The clients are kept per
process and per set of URLs (`st.cache_resource`), so a page run reuses their connections.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from microgpt.clients import InferenceClient, TrainerClient
from microgpt.registry import RegistryClient
from microgpt.settings import get_settings

TIMEOUT_S = 10.0  # a page waits this long for a metadata answer before it says so
GENERATION_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Clients:
    registry: RegistryClient
    trainer: TrainerClient
    inference: InferenceClient


@st.cache_resource(show_spinner=False)
def _clients(
    registry_url: str, trainer_url: str, inference_url: str, api_key: str | None, cache: str
) -> Clients:
    return Clients(
        registry=RegistryClient(registry_url, api_key=api_key, cache_dir=cache, timeout=TIMEOUT_S),
        trainer=TrainerClient(trainer_url, api_key, timeout=TIMEOUT_S),
        inference=InferenceClient(inference_url, api_key, timeout=GENERATION_TIMEOUT_S),
    )


def clients() -> Clients:
    """The clients for the current settings (`MICROGPT_*_URL`, `MICROGPT_API_KEY`)."""
    s = get_settings()
    return _clients(s.registry_url, s.trainer_url, s.inference_url, s.client_api_key(), str(s.cache))
