"""Services of the microgpt platform: registry, trainer, inference and UI."""
