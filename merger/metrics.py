"""Merger metrics: per-domain freshness and the newest complete period, as Prometheus gauges.

The merger runs as a CronJob, so nothing scrapes it: after each run the gauges are pushed to a
Prometheus Pushgateway when ``PUSHGATEWAY_URL`` is set, and ``python -m merger status`` prints them.
"""

from __future__ import annotations

import logging
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from merger.complete import DomainStatus

log = logging.getLogger("merger")


def status_registry(statuses: list[DomainStatus], now: datetime) -> CollectorRegistry:
    """Gauges for ``statuses`` (``fms_freshness_seconds``, ``fms_newest_complete_period_end_timestamp_seconds``)."""
    registry = CollectorRegistry()
    freshness = Gauge("fms_freshness_seconds", "Seconds since the newest durable event time, per domain",
                      ["domain"], registry=registry)  # fmt: skip
    passed = Gauge("fms_progress_passed_timestamp_seconds",
                   "Instant every partition of the domain has passed (completeness watermark)", ["domain"],
                   registry=registry)  # fmt: skip
    complete = Gauge("fms_newest_complete_period_end_timestamp_seconds",
                     "End of the newest period with a completeness marker", ["domain", "grain"],
                     registry=registry)  # fmt: skip
    for status in statuses:
        if status.newest_event is not None:
            freshness.labels(status.domain).set((now - status.newest_event).total_seconds())
        if status.passed is not None:
            passed.labels(status.domain).set(status.passed.timestamp())
        for grain, period in status.newest_complete.items():
            complete.labels(status.domain, grain).set(period.end.timestamp())
    return registry


def push(registry: CollectorRegistry, url: str, job: str) -> None:
    """Push to a Pushgateway; a failure is logged, never fatal (the merge itself succeeded)."""
    try:
        push_to_gateway(url, job=job, registry=registry, timeout=10)
    except OSError as exc:
        log.warning("metrics push failed", extra={"url": url, "error": str(exc)})
