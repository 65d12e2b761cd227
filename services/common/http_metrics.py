"""Prometheus request metrics for a FastAPI app, and its `GET /metrics`.

Labels are the route *template* (`/models/{name}`), never the raw path, so the number
of series stays bounded whatever clients send; unmatched paths share the label
`<unmatched>`. Metrics live in a registry the caller owns (one per app), so several
apps can run in one test process without clashing on the global registry. Latency runs
until the last byte of the response is sent, so streamed downloads count in full.
"""

from __future__ import annotations

import time

import prometheus_client
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"


class _MetricsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        requests: prometheus_client.Counter,
        latency: prometheus_client.Histogram,
        service: str,
    ) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.requests.labels(self.service, method, template, str(status)).inc()
            self.latency.labels(self.service, method, template).observe(time.perf_counter() - start)


def instrument(app: FastAPI, registry: prometheus_client.CollectorRegistry, service: str) -> None:
    """Count and time every HTTP request of `app` into `registry`, and serve it at `GET /metrics`."""
    requests = prometheus_client.Counter(
        "microgpt_http_requests",
        "HTTP requests by route template and status",
        ["service", "method", "route", "status"],
        registry=registry,
    )
    latency = prometheus_client.Histogram(
        "microgpt_http_request_duration_seconds",
        "HTTP request latency, until the last byte of the response",
        ["service", "method", "route"],
        registry=registry,
    )
    app.add_middleware(_MetricsMiddleware, requests=requests, latency=latency, service=service)

    def metrics() -> Response:
        return Response(
            prometheus_client.generate_latest(registry), media_type=prometheus_client.CONTENT_TYPE_LATEST
        )

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
