"""A merger run: take the lease, merge every pending period oldest first, then apply retention.

Running twice at once is safe: the lease makes the second run skip, and even without it merges are
deterministic (same sources, same name, whole-object overwrite) and sources are deleted only after
the stored manifest of the level above says it holds them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from common.errors import CollectorError
from domains import DOMAINS
from merger.catalog import DomainCatalog, manifest_key
from merger.complete import DomainProgress, completeness_progress, mark_complete, marker_key, withdraw
from merger.dataset import Dataset, datasets
from merger.merge import MergeResult, merge_period, process_gone, remove_abandoned_scratch
from merger.periods import Calendar, Grain, Period, file_key, parse_name, period_of
from merger.stats import sources_of, stats_current, stats_key, stats_manifest_key, write_stats
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
    lease_seconds: float = 60.0  # renewed while a run works; a killed run's lease expires after this
    group: str = "fms-realtime-collector"  # the realtime group whose progress objects decide completeness


@dataclass
class RunReport:
    """What a run did."""

    merged: list[MergeResult] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)  # statistics objects written
    completed: list[str] = field(default_factory=list)  # "<domain>/<period>" markers written
    skipped: bool = False


class Lease:
    """A best-effort lock object in storage (``_locks/<name>.json``, e.g. ``merger-hour``).

    :meth:`held` renews it in the background while work runs, so it can be short: a killed holder's
    lease expires after ``seconds``, and on the same host a holder whose process is gone is taken
    over at once.
    """

    def __init__(self, store: ObjectStore, name: str, seconds: float) -> None:
        self.store, self.key, self.seconds = store, f"_locks/{name}.json", seconds
        self.host = socket.gethostname()
        self.owner = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _read(self) -> dict[str, object] | None:
        try:
            return json.loads(self.store.get(self.key))
        except (ObjectNotFound, ValueError):
            return None

    def _holder_gone(self, current: dict[str, object]) -> bool:
        """The holder ran on this host and its process no longer exists."""
        if current.get("host") != self.host:
            return False
        try:
            pid = int(current.get("pid", 0))  # type: ignore[call-overload]
        except ValueError:
            return False
        return process_gone(pid)

    def acquire(self, now: float | None = None) -> bool:
        """Take the lease unless another live owner holds it."""
        current = self._read()
        clock = time.time() if now is None else now
        if (current and current.get("owner") != self.owner and float(current.get("expires", 0)) > clock  # type: ignore[arg-type]
                and not self._holder_gone(current)):  # fmt: skip
            return False
        self.renew()
        time.sleep(0.5)  # let a concurrent writer land, then see who won
        current = self._read()
        return bool(current and current.get("owner") == self.owner)

    def renew(self) -> None:
        """Extend the lease."""
        body = {"owner": self.owner, "host": self.host, "pid": os.getpid(), "expires": time.time() + self.seconds}
        self.store.put(self.key, json.dumps(body).encode())

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Renew the lease every third of its length while the block runs."""
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(self.seconds / 3):
                try:
                    self.renew()
                except CollectorError as exc:
                    log.warning("lease renewal failed", extra={"lease": self.key, "error": str(exc)})

        thread = threading.Thread(target=keep, name=f"lease-{self.key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)

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
    """Merge every complete, missing or outdated period of ``grain`` (or just ``period_name``), for the
    facts and the DLQ rows of each domain; then statistics, completeness markers and retention."""
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
        with lease.held():
            remove_abandoned_scratch()
            progress = completeness_progress(store, config.group)
            for name in domains or DOMAINS:
                merge_domain(store, name, grain, config, now, period_name, report, progress)
    finally:
        lease.release()
    return report


def merge_domain(
    store: ObjectStore,
    name: str,
    grain: Grain,
    config: MergerConfig,
    now: datetime,
    period_name: str | None,
    report: RunReport,
    progress: dict[str, DomainProgress],
) -> None:
    """One domain's part of a run: merge its facts and DLQ rows, then statistics, markers, retention."""
    catalogs: list[DomainCatalog] = []
    merged: dict[str, Period] = {}
    for dataset in datasets(name):
        catalog = DomainCatalog.load(store, dataset.root, config.calendar)
        for period in _periods(catalog, grain, config, now, period_name):
            sources, leaves = catalog.build_sources(period)
            if not sources:
                continue
            withdraw(store, name, period, config.calendar)
            result = merge_period(store, dataset, period, sources, leaves, config.memory_limit_mb)
            catalog.remember(period, result.manifest)
            report.merged.append(result)
            merged[period.name] = period
        catalogs.append(catalog)
    facts, dlq = catalogs
    report.stats += refresh_stats(store, name, grain, facts, dlq, merged)
    report.completed += [f"{name}/{p.name}" for p in
                         mark_complete(store, name, grain, facts, dlq, progress.get(name), config.grace)]
    for dataset in datasets(name):
        report.deleted += apply_retention(
            store, DomainCatalog.load(store, dataset.root, config.calendar), dataset, config, now
        )


def _periods(
    catalog: DomainCatalog, grain: Grain, config: MergerConfig, now: datetime, period_name: str | None
) -> list[Period]:
    if not period_name:
        return catalog.pending(grain, now, config.grace)
    period = parse_name(period_name, grain, config.calendar)
    if period is None:
        raise ValueError(f"--period {period_name!r} is not a {grain.folder} name")
    return [period]


def refresh_stats(
    store: ObjectStore,
    domain: str,
    grain: Grain,
    facts: DomainCatalog,
    dlq: DomainCatalog,
    merged: dict[str, Period],
) -> list[str]:
    """(Re)compute the statistics of periods merged now, recent periods whose statistics are outdated
    (a crash between merge and statistics), and merged periods without statistics."""
    have = {o.key for o in store.list(f"{domain}/stats/{grain.folder}/")}
    candidates = dict(merged)
    for catalog in (facts, dlq):
        candidates.update({p.name: p for p in catalog.periods(grain)})
        candidates.update({n: p for n, p in catalog.merged[grain].items() if stats_key(domain, p) not in have})
    written = []
    for period in sorted(candidates.values(), key=lambda p: p.start):
        sources = sources_of(facts, dlq, period)
        if (sources.facts is None and sources.dlq is None) or stats_current(store, domain, period, sources):
            continue
        write_stats(store, domain, period, sources)
        written.append(stats_key(domain, period))
    return written


def apply_retention(
    store: ObjectStore, catalog: DomainCatalog, dataset: Dataset, config: MergerConfig, now: datetime
) -> list[str]:
    """Delete minute files held by a verified hour file past the keep period, and any file past retention
    (with its manifest, and for facts its statistics and marker)."""
    deleted: list[str] = []
    oldest = now - timedelta(days=config.retention_days.get(dataset.domain, dataset.retention_days))
    for key, (minute, size) in sorted(catalog.minutes.items()):
        if minute.end <= oldest:
            store.delete(key)
            deleted.append(key)
            continue
        if now < minute.end + config.minute_keep:
            continue
        hour = catalog.merged[Grain.HOUR].get(period_of(minute.start, Grain.HOUR, config.calendar).name)
        manifest = catalog.manifest(hour) if hour else None
        if hour is not None and manifest is not None and manifest.leaves.get(key) == size and store.exists(
            file_key(catalog.root, hour)
        ):
            store.delete(key)
            deleted.append(key)
    for periods in catalog.merged.values():
        for period in list(periods.values()):
            if period.end <= oldest:
                store.delete(file_key(catalog.root, period))
                store.delete(manifest_key(catalog.root, period))
                if dataset.root == dataset.domain:
                    for key in (stats_key(dataset.domain, period), stats_manifest_key(dataset.domain, period),
                                marker_key(dataset.domain, period)):  # fmt: skip
                        store.delete(key)
                deleted.append(file_key(catalog.root, period))
    if deleted:
        log.info("retention", extra={"root": catalog.root, "deleted": len(deleted)})
    return deleted


def pending_periods(store: ObjectStore, grain: Grain, config: MergerConfig, now: datetime) -> dict[str, list[Period]]:
    """Per domain, the periods a run would merge (for ``--dry-run``)."""
    return {
        dataset.root: DomainCatalog.load(store, dataset.root, config.calendar).pending(grain, now, config.grace)
        for name in DOMAINS
        for dataset in datasets(name)
    }
