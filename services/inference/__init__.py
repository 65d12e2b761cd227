"""The inference service: registry models behind OpenAI-compatible REST, native routes and WebSocket chat.

microgpt serve inference            # http://127.0.0.1:8000, docs at /docs
"""
