"""A merger run: take the lease, merge every pending period oldest first, then apply retention.

Running twice at once is safe: the lease makes the second run skip, and even without it merges are
deterministic (same sources, same name, whole-object overwrite) and sources are deleted only after
the stored manifest of the level above says it holds them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from domains import DOMAINS
from merger.catalog import DomainCatalog, manifest_key
from merger.merge import MergeResult, merge_period
from merger.periods import Calendar, Grain, Period, file_key, parse_name
from storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger("merger")


@dataclass(frozen=True)
class MergerConfig:
    """Settings of a merger run."""

    calendar: Calendar = field(default_factory=Calendar)
    grace: timedelta = timedelta(minutes=5)
    memory_limit_mb: int = 512
    minute_keep: timedelta = timedelta(hours=48)
    retention_days: dict[str, int] = field(default_factory=lambda: {d.name: d.retention_days for d in DOMAINS.values()})
    lease_seconds: float = 900.0


@dataclass
class RunReport:
    """What a run did."""

    merged: list[MergeResult] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: bool = False


class Lease:
    """A best-effort lock object in storage (``_locks/<name>.json``, e.g. ``merger-hour``)."""

    def __init__(self, store: ObjectStore, name: str, seconds: float) -> None:
        self.store, self.key, self.seconds = store, f"_locks/{name}.json", seconds
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _read(self) -> dict[str, object] | None:
        try:
            return json.loads(self.store.get(self.key))
        except (ObjectNotFound, ValueError):
            return None

    def acquire(self, now: float | None = None) -> bool:
        """Take the lease unless another live owner holds it."""
        current = self._read()
        clock = time.time() if now is None else now
        if current and current.get("owner") != self.owner and float(current.get("expires", 0)) > clock:  # type: ignore[arg-type]
            return False
        self.renew()
        time.sleep(0.5)  # let a concurrent writer land, then see who won
        current = self._read()
        return bool(current and current.get("owner") == self.owner)

    def renew(self) -> None:
        """Extend the lease."""
        body = {"owner": self.owner, "expires": time.time() + self.seconds}
        self.store.put(self.key, json.dumps(body).encode())

    def release(self) -> None:
        """Drop the lease if it is still ours."""
        current = self._read()
        if current and current.get("owner") == self.owner:
            self.store.delete(self.key)


def run(
    store: ObjectStore,
    grain: Grain,
    config: MergerConfig,
    now: datetime | None = None,
    domains: Iterable[str] | None = None,
    period_name: str | None = None,
) -> RunReport:
    """Merge every complete, missing or outdated period of ``grain`` (or just ``period_name``)."""
    if grain is Grain.MINUTE:
        raise ValueError("minute files are written by the collector")
    now = now or datetime.now(UTC)
    report = RunReport()
    lease = Lease(store, f"merger-{grain.folder}", config.lease_seconds)
    if not lease.acquire():
        log.warning("another merger holds the lease; nothing to do", extra={"grain": grain.folder})
        report.skipped = True
        return report
    try:
        for name in domains or DOMAINS:
            domain = DOMAINS[name]
            catalog = DomainCatalog.load(store, name, config.calendar)
            if period_name:
                period = parse_name(period_name, grain, config.calendar)
                if period is None:
                    raise ValueError(f"--period {period_name!r} is not a {grain.folder} name")
                periods = [period]
            else:
                periods = catalog.pending(grain, now, config.grace)
            for period in periods:
                sources, leaves = catalog.build_sources(period)
                if not sources:
                    continue
                result = merge_period(store, domain, period, sources, leaves, config.memory_limit_mb)
                catalog.remember(period, result.manifest)
                report.merged.append(result)
                lease.renew()
            report.deleted += apply_retention(store, DomainCatalog.load(store, name, config.calendar), config, now)
    finally:
        lease.release()
    return report


def apply_retention(store: ObjectStore, catalog: DomainCatalog, config: MergerConfig, now: datetime) -> list[str]:
    """Delete minute files held by a verified hour file past the keep period, and any file past retention."""
    deleted: list[str] = []
    oldest = now - timedelta(days=config.retention_days.get(catalog.domain, 365))
    for key, (minute, size) in sorted(catalog.minutes.items()):
        if minute.end <= oldest:
            store.delete(key)
            deleted.append(key)
            continue
        if now < minute.end + config.minute_keep:
            continue
        hour_name = minute.start.strftime("%Y%m%d_%H") + f"_{minute.start.hour + 1:02d}"
        hour = catalog.merged[Grain.HOUR].get(hour_name)
        manifest = catalog.manifest(hour) if hour else None
        if hour is not None and manifest is not None and manifest.leaves.get(key) == size and store.exists(
            file_key(catalog.domain, hour)
        ):
            store.delete(key)
            deleted.append(key)
    for periods in catalog.merged.values():
        for period in list(periods.values()):
            if period.end <= oldest:
                store.delete(file_key(catalog.domain, period))
                store.delete(manifest_key(catalog.domain, period))
                deleted.append(file_key(catalog.domain, period))
    if deleted:
        log.info("retention", extra={"domain": catalog.domain, "deleted": len(deleted)})
    return deleted


def pending_periods(store: ObjectStore, grain: Grain, config: MergerConfig, now: datetime) -> dict[str, list[Period]]:
    """Per domain, the periods a run would merge (for ``--dry-run``)."""
    return {
        name: DomainCatalog.load(store, name, config.calendar).pending(grain, now, config.grace) for name in DOMAINS
    }
