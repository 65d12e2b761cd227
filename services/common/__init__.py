"""Pieces every microgpt service shares: JSON errors, bearer auth, HTTP metrics and the SQL engine.

Each service builds its own FastAPI app from these (`create_app` factories), so the
error shape, the auth rules and the metric names are the same everywhere.
"""
