"""Client of the model registry service (`services/registry`): push, resolve and pull checkpoints.

    client = RegistryClient.from_settings(get_settings())
    info = client.push("runs/names/checkpoint", "names", metrics={"val_loss": 1.9}, alias="staging")
    path = client.pull("names@staging")     # a local checkpoint directory, every file sha256-verified

Importing this package does nothing; `microgpt registry ...` is in `microgpt.registry.cli`.
"""

from microgpt.registry.client import RegistryClient, RegistryError, VersionInfo

__all__ = ["RegistryClient", "RegistryError", "VersionInfo"]
