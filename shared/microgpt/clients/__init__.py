"""Typed HTTP clients of the trainer and inference services (the registry's is `microgpt.registry`).

One client per service, shared by the CLI and the dashboard, so neither has request code of its own.
"""

from microgpt.clients.http import ServiceClient, ServiceError, ServiceStatus, ServiceUnavailable
from microgpt.clients.inference import InferenceClient
from microgpt.clients.trainer import TrainerClient

__all__ = [
    "InferenceClient",
    "ServiceClient",
    "ServiceError",
    "ServiceStatus",
    "ServiceUnavailable",
    "TrainerClient",
]
