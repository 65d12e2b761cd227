"""What every service client shares: the bearer key, the JSON error shape, probes and `/metrics`.

Each service answers errors as `{"error": "<code>", "detail": ...}` (a list of
`{"loc", "msg"}` for validation errors). `ServiceError` carries them so a caller can
show a 422 next to the field it names; a service that cannot be reached is a
`ServiceUnavailable` (an OSError, as the CLI expects of a network failure).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx


class ServiceUnavailable(ConnectionError):
    """The service did not answer (refused, timed out, DNS)."""

    def __init__(self, service: str, url: str, reason: object) -> None:
        super().__init__(f"cannot reach the {service} at {url}: {reason}")
        self.service, self.url = service, url


class ServiceError(ValueError):
    """The service answered 4xx/5xx; `status`, `error` and `detail` are its JSON error."""

    def __init__(self, service: str, status: int, error: str, detail: Any) -> None:
        super().__init__(f"{service}: HTTP {status} {error}: {describe_detail(detail)}")
        self.service, self.status, self.error, self.detail = service, status, error, detail

    def field_errors(self) -> dict[str, str]:
        """Validation messages by dotted field path without the `body`/`query` prefix ("train.lr")."""
        if not isinstance(self.detail, list):
            return {}
        errors: dict[str, str] = {}
        for item in self.detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
                path = ".".join(loc) or "request"
                errors[path] = "; ".join(filter(None, [errors.get(path), str(item.get("msg", ""))]))
        return errors


def describe_detail(detail: Any) -> str:
    """One line of an error `detail`: validation items as `field: message`, joined by `; `."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query")]
                parts.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', '')}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        return str(detail.get("message", detail))
    return str(detail)


@dataclass
class ServiceStatus:
    """Liveness (`/healthz`), readiness (`/readyz`) and the scraped `/metrics` of one service."""

    service: str
    url: str
    healthy: bool
    ready: bool
    detail: str = ""
    latency_s: float | None = None
    metrics: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples of `name` whose labels include `labels`; None if there are none."""
        samples = [v for lab, v in self.metrics.get(name, []) if labels.items() <= lab.items()]
        return sum(samples) if samples else None


class ServiceClient:
    """httpx plumbing of one service: base URL, bearer key, JSON errors as `ServiceError`."""

    service = "service"

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ServiceUnavailable(self.service, self.base_url, e) from None
        if response.status_code >= 400:
            raise error_of(self.service, response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a successful answer (None for 204)."""
        response = self.send(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def status(self, timeout: float = 3.0) -> ServiceStatus:
        """Probe `/healthz`, `/readyz` and `/metrics`; never raises."""
        return probe(self.service, self.base_url, timeout=timeout)


def error_of(service: str, response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
    except ValueError:
        return ServiceError(service, response.status_code, "error", response.text[:300])
    if not isinstance(body, dict):
        return ServiceError(service, response.status_code, "error", body)
    error = body.get("error", "error")
    if isinstance(error, dict):  # the inference service's OpenAI-shaped errors under /v1
        error = error.get("code") or error.get("type") or "error"
    return ServiceError(service, response.status_code, str(error), body.get("detail"))


def probe(service: str, base_url: str, timeout: float = 3.0) -> ServiceStatus:
    """The health of any microgpt service (the registry's too) from its public probe routes."""
    from prometheus_client.parser import text_string_to_metric_families

    url = base_url.rstrip("/")
    status = ServiceStatus(service, url, healthy=False, ready=False)
    try:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            started = time.perf_counter()
            health = http.get("/healthz")
            status.latency_s = time.perf_counter() - started
            status.healthy = health.status_code == 200
            ready = http.get("/readyz")
            status.ready = ready.status_code == 200
            if not status.ready:
                status.detail = describe_detail(_json_or_text(ready).get("detail", ready.text[:200]))
            scraped = http.get("/metrics")
            if scraped.status_code == 200:
                for family in text_string_to_metric_families(scraped.text):
                    for sample in family.samples:
                        status.metrics.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except httpx.TransportError as e:
        status.detail = f"not reachable: {e}"
    except ValueError as e:  # a /metrics body that is not Prometheus text
        status.detail = f"unreadable /metrics: {e}"
    return status


def _json_or_text(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
