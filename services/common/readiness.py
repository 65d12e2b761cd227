"""`microgpt_ready{service, check}`: a service's readiness checks as a Prometheus gauge, run at scrape time.

`/readyz` answers a load balancer; Prometheus needs the same verdict as a series to alert
on ("the registry cannot reach its object store for 5 minutes"). Each scrape runs the
checks again, so the gauge is never stale, and a check that raises reads 0 rather than
failing the scrape: the process is up (`up` stays 1) but not ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class ReadinessCollector(Collector):
    """One 0/1 sample per named check; a check passes unless it raises or returns False."""

    def __init__(self, service: str, checks: Mapping[str, Callable[[], object]]) -> None:
        self.service, self.checks = service, checks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "microgpt_ready", "1 when the service's readiness check passes", labels=["service", "check"]
        )
        for name, check in self.checks.items():
            try:
                ready = check() is not False
            except Exception as e:
                log.warning("readiness check %s of %s failed: %s", name, self.service, e)
                ready = False
            family.add_metric([self.service, name], 1.0 if ready else 0.0)
        yield family
