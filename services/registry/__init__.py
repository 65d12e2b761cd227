"""The model registry: versions, aliases, lineage and sha256-checked artifacts on SQL + object storage.

microgpt serve registry          # or: uvicorn services.registry.app:create_app --factory --port 8001
"""
