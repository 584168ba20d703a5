"""Completeness markers: "is this period complete, can I report on it?"

A period of a domain is complete when every partition of the domain's topic has passed the period's
end plus the grace (from the realtime group's progress objects, see :mod:`common.progress`) and the
period's merged files are up to date. The merger then writes a small JSON marker,
``<domain>/_complete/<grain>/<name>.json`` (``"marker": "_COMPLETE"``), holding the row counts and the
Kafka offsets covered. Re-merging a period (late data) first withdraws its marker and those of the
coarser periods containing it; the marker is written again once the new merge is verified. While a
backfill is loading history (a plan without ``done.json`` under ``_backfill/<group>/``) no marker is
written: the realtime group's progress says nothing about the offsets before its start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from common.progress import PartitionProgress, progress_prefix
from domains import DOMAINS
from merger.catalog import DomainCatalog
from merger.periods import Calendar, Grain, Period, parse_name, period_of
from storage.base import ObjectStore

log = logging.getLogger("merger")

MARKER = "_COMPLETE"


def marker_key(domain: str, period: Period) -> str:
    """Object key of a period's completeness marker."""
    return f"{domain}/_complete/{period.grain.folder}/{period.name}.json"


@dataclass
class DomainProgress:
    """The progress objects of one domain's topic partitions."""

    partitions: dict[int, PartitionProgress] = field(default_factory=dict)

    def passed(self) -> datetime | None:
        """The instant every partition has passed (None unless every partition of the topic reported)."""
        if not self.partitions:
            return None
        expected = max(p.partitions for p in self.partitions.values())
        if expected <= 0 or any(i not in self.partitions for i in range(expected)):
            return None
        instants = [p.passed() for p in self.partitions.values()]
        return None if any(t is None for t in instants) else min(t for t in instants if t is not None)

    def newest_event(self) -> datetime | None:
        """Newest durable event time of any partition (freshness)."""
        times = [p.event_time for p in self.partitions.values() if p.event_time is not None]
        return max(times) if times else None


def load_progress(store: ObjectStore, group: str) -> dict[str, DomainProgress]:
    """Progress of every domain, from the consumer group's progress objects (malformed ones are skipped)."""
    out: dict[str, DomainProgress] = {}
    for info in store.list(progress_prefix(group)):
        try:
            progress = PartitionProgress.from_json(store.get(info.key))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable progress object skipped", extra={"key": info.key, "error": str(exc)})
            continue
        out.setdefault(progress.domain, DomainProgress()).partitions[progress.partition] = progress
    return out


def is_complete(progress: DomainProgress | None, period: Period, grace: timedelta) -> bool:
    """Whether every partition has passed the period's end plus the grace."""
    passed = progress.passed() if progress is not None else None
    return passed is not None and passed >= period.end + grace


def markers(store: ObjectStore, domain: str, grain: Grain, calendar: Calendar) -> dict[str, Period]:
    """Periods of ``grain`` that carry a marker."""
    found: dict[str, Period] = {}
    prefix = f"{domain}/_complete/{grain.folder}/"
    for info in store.list(prefix):
        period = parse_name(info.key.removeprefix(prefix).removesuffix(".json"), grain, calendar)
        if period is not None:
            found[period.name] = period
    return found


def withdraw(store: ObjectStore, domain: str, period: Period, calendar: Calendar) -> None:
    """Remove the markers of ``period`` and of every coarser period containing it (before a re-merge)."""
    for grain in Grain:
        if grain >= period.grain:
            store.delete(marker_key(domain, period_of(period.start, grain, calendar)))


def write_marker(
    store: ObjectStore,
    domain: str,
    period: Period,
    facts: DomainCatalog,
    dlq: DomainCatalog,
    progress: DomainProgress,
) -> bool:
    """Write the marker if the period's merged files are up to date; returns whether it was written."""
    held = [c for c in (facts, dlq) if period.name in c.merged[period.grain]]
    if not held or not all(c.up_to_date(period) for c in held):
        return False
    facts_manifest = facts.manifest(period)
    dlq_manifest = dlq.manifest(period)
    body = {
        "marker": MARKER,
        "domain": domain,
        "grain": period.grain.folder,
        "period": period.name,
        "start": period.start.isoformat(),
        "end": period.end.isoformat(),
        "rows": facts_manifest.rows if facts_manifest else 0,
        "dlq_rows": dlq_manifest.rows if dlq_manifest else 0,
        "positions": list(facts_manifest.positions) if facts_manifest else [],
        "dlq_positions": list(dlq_manifest.positions) if dlq_manifest else [],
        "partitions_passed": {str(i): str(p.passed()) for i, p in sorted(progress.partitions.items())},
        "created_at": datetime.now(UTC).isoformat(),
    }
    store.put(marker_key(domain, period), json.dumps(body, sort_keys=True).encode())
    log.info("complete", extra={"domain": domain, "period": period.name, "rows": body["rows"]})
    return True


def completeness_progress(store: ObjectStore, group: str) -> dict[str, DomainProgress]:
    """The progress that may mark periods complete: none while a backfill is still loading history
    (its offsets lie before the realtime group's progress)."""
    running = backfills_running(store)
    if running:
        log.info("a backfill is still loading history; no completeness markers yet", extra={"backfills": running})
        return {}
    return load_progress(store, group)


def backfills_running(store: ObjectStore) -> list[str]:
    """Backfill groups with a plan but no ``done.json``: history is still arriving, so no period is complete."""
    keys = {o.key for o in store.list("_backfill/")}
    return sorted(
        k.split("/")[1] for k in keys
        if k.endswith("/plan.json") and k.count("/") == 2 and k.replace("plan.json", "done.json") not in keys
    )  # fmt: skip


def mark_complete(
    store: ObjectStore,
    domain: str,
    grain: Grain,
    facts: DomainCatalog,
    dlq: DomainCatalog,
    progress: DomainProgress | None,
    grace: timedelta,
) -> list[Period]:
    """Write markers for every merged period of ``grain`` that became complete; returns them."""
    if progress is None:
        return []
    done = markers(store, domain, grain, facts.calendar)
    candidates = {p.name: p for c in (facts, dlq) for p in c.periods(grain, with_own=True)}
    written = []
    for period in sorted(candidates.values(), key=lambda p: p.start):
        if period.name in done or not is_complete(progress, period, grace):
            continue
        if write_marker(store, domain, period, facts, dlq, progress):
            written.append(period)
    return written


@dataclass(frozen=True)
class DomainStatus:
    """What an operator asks of a domain: how fresh, and up to where it is complete."""

    domain: str
    newest_event: datetime | None
    passed: datetime | None
    newest_complete: dict[str, Period]  # grain folder -> newest period with a marker


def status(store: ObjectStore, group: str, calendar: Calendar) -> list[DomainStatus]:
    """Freshness and the newest complete period of each grain, per domain."""
    progress = load_progress(store, group)
    out = []
    for name in DOMAINS:
        newest: dict[str, Period] = {}
        for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
            found = markers(store, name, grain, calendar)
            if found:
                newest[grain.folder] = max(found.values(), key=lambda p: p.start)
        domain_progress = progress.get(name)
        out.append(DomainStatus(
            name,
            domain_progress.newest_event() if domain_progress else None,
            domain_progress.passed() if domain_progress else None,
            newest,
        ))  # fmt: skip
    return out
