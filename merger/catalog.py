"""What is stored for one domain: minute files, merged files and their manifests, and which
sources a period's merge needs (pure planning over a listing; the only I/O is reading manifests).

A merged file's manifest (``<domain>/_manifests/<grain>/<name>.json``, written after the file)
records its direct sources, its *leaves* (every minute file whose rows it holds, with its size)
and its row count. A merged file is up to date when it holds every minute file now stored in its
period (same size) and every leaf of every finer merged file inside it; otherwise the period is
merged again, from the old merged file plus what is new, de-duplicated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from common.layout import parse_minute_key
from merger.periods import Calendar, Grain, Period, children, file_key, is_complete, parse_name, period_of
from storage.base import ObjectNotFound, ObjectStore


@dataclass(frozen=True)
class Manifest:
    """What a merged file was built from."""

    sources: tuple[str, ...]
    leaves: dict[str, int]
    rows: int
    created_at: str
    positions: tuple[dict[str, object], ...] = ()  # per topic/partition: first/last offset and rows held

    def to_json(self) -> bytes:
        """Serialized form."""
        return json.dumps(
            {"sources": list(self.sources), "leaves": self.leaves, "rows": self.rows, "created_at": self.created_at,
             "positions": list(self.positions)},
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse a stored manifest."""
        raw = json.loads(data)
        return cls(tuple(raw["sources"]), dict(raw["leaves"]), int(raw["rows"]), str(raw["created_at"]),
                   tuple(raw.get("positions", ())))  # fmt: skip


def manifest_key(root: str, period: Period) -> str:
    """Where a merged file's manifest lives (outside the folders readers glob)."""
    return f"{root}/_manifests/{period.grain.folder}/{period.name}.json"


@dataclass
class DomainCatalog:
    """A listing of one dataset's files (a domain's facts or its DLQ rows), indexed by grain and period."""

    root: str
    calendar: Calendar
    store: ObjectStore
    minutes: dict[str, tuple[Period, int]] = field(default_factory=dict)  # key -> (minute period, size)
    merged: dict[Grain, dict[str, Period]] = field(default_factory=dict)  # grain -> name -> period
    _manifests: dict[str, Manifest | None] = field(default_factory=dict)

    @classmethod
    def load(cls, store: ObjectStore, root: str, calendar: Calendar) -> DomainCatalog:
        """List the files under ``root`` (``<domain>`` or ``<domain>/_dlq``) once."""
        catalog = cls(root, calendar, store, merged={g: {} for g in (Grain.HOUR, Grain.DAY, Grain.WEEK)})
        for info in store.list(f"{root}/"):
            parts = info.key.removeprefix(f"{root}/").split("/")
            if len(parts) != 2 or not parts[1].endswith(".parquet"):
                continue
            if parts[0] == Grain.MINUTE.folder:
                parsed = parse_minute_key(info.key)
                if parsed is not None:
                    catalog.minutes[info.key] = (period_of(parsed.start, Grain.MINUTE, calendar), info.size)
                continue
            for grain in (Grain.HOUR, Grain.DAY, Grain.WEEK):
                if parts[0] == grain.folder:
                    period = parse_name(parts[1].removesuffix(".parquet"), grain, calendar)
                    if period is not None:
                        catalog.merged[grain][period.name] = period
        return catalog

    def manifest(self, period: Period) -> Manifest | None:
        """The manifest of the merged file for ``period`` (None if no file or no manifest)."""
        key = manifest_key(self.root, period)
        if key not in self._manifests:
            found: Manifest | None = None
            if period.name in self.merged.get(period.grain, {}):
                try:
                    found = Manifest.from_json(self.store.get(key))
                except ObjectNotFound:
                    found = None  # crashed between file and manifest: treat as missing
            self._manifests[key] = found
        return self._manifests[key]

    def remember(self, period: Period, manifest: Manifest) -> None:
        """Record a merge done in this run."""
        self.merged[period.grain][period.name] = period
        self._manifests[manifest_key(self.root, period)] = manifest

    def minutes_in(self, period: Period) -> dict[str, int]:
        """Minute files inside ``period`` with their sizes."""
        return {k: size for k, (p, size) in self.minutes.items() if period.start <= p.start and p.end <= period.end}

    def merged_in(self, period: Period) -> list[Period]:
        """Finer merged files lying inside ``period``."""
        return [
            p
            for grain in self.merged
            if grain < period.grain
            for p in self.merged[grain].values()
            if period.contains(p)
        ]

    def up_to_date(self, period: Period) -> bool:
        """Whether the merged file of ``period`` holds everything now stored inside it."""
        manifest = self.manifest(period)
        if manifest is None:
            return False
        leaves = manifest.leaves
        if any(leaves.get(k) != size for k, size in self.minutes_in(period).items()):
            return False
        for finer in self.merged_in(period):
            finer_manifest = self.manifest(finer)
            if finer_manifest is not None and any(leaves.get(k) != s for k, s in finer_manifest.leaves.items()):
                return False
        return True

    def cover(self, period: Period) -> tuple[list[str], dict[str, int]]:
        """Source keys that together hold every row stored for ``period``, and their leaves.

        Prefers the coarsest up-to-date files; an outdated merged file is used together with
        the minute files it lacks (the merge de-duplicates the overlap).
        """
        if period.grain is Grain.MINUTE:
            raise ValueError("minute periods are not merged")
        manifest = self.manifest(period)
        if manifest is not None:
            if self.up_to_date(period):
                return [file_key(self.root, period)], dict(manifest.leaves)
            return self._with_missing(period, manifest)
        return self.build_sources(period)

    def build_sources(self, period: Period) -> tuple[list[str], dict[str, int]]:
        """Sources for (re)building ``period``'s file from what is below it."""
        manifest = self.manifest(period)
        if manifest is not None:
            return self._with_missing(period, manifest)
        if period.grain is Grain.HOUR:
            minutes = self.minutes_in(period)
            return sorted(minutes), minutes
        sources: list[str] = []
        leaves: dict[str, int] = {}
        inside = children(period, self.calendar)
        for child in inside:
            child_sources, child_leaves = self.cover(child)
            sources += child_sources
            leaves.update(child_leaves)
        # Edges not covered by whole children (zones with non-whole-hour offsets): minute files.
        for key, size in self.minutes_in(period).items():
            minute = self.minutes[key][0]
            if not any(c.contains(minute) for c in inside):
                sources.append(key)
                leaves[key] = size
        return sources, leaves

    def _with_missing(self, period: Period, manifest: Manifest) -> tuple[list[str], dict[str, int]]:
        """The outdated merged file itself plus every finer file or minute file holding rows it lacks."""
        leaves = dict(manifest.leaves)
        sources = [file_key(self.root, period)]
        for finer in sorted(self.merged_in(period), key=lambda p: (-p.grain, p.start)):
            finer_manifest = self.manifest(finer)
            if finer_manifest and any(leaves.get(k) != s for k, s in finer_manifest.leaves.items()):
                sources.append(file_key(self.root, finer))
                leaves.update(finer_manifest.leaves)
        for key, size in self.minutes_in(period).items():
            if leaves.get(key) != size:
                sources.append(key)
                leaves[key] = size
        return sources, leaves

    def periods(self, grain: Grain, with_own: bool = False) -> list[Period]:
        """Periods of ``grain`` with minute or finer merged files inside (and, with ``with_own``, those
        with a merged file of their own), oldest first."""
        found: dict[str, Period] = dict(self.merged.get(grain, {})) if with_own else {}
        for minute, _ in self.minutes.values():
            p = period_of(minute.start, grain, self.calendar)
            found[p.name] = p
        for finer_grain, periods in self.merged.items():
            if finer_grain < grain:
                for finer in periods.values():
                    p = period_of(finer.start, grain, self.calendar)
                    found[p.name] = p
        return sorted(found.values(), key=lambda p: p.start)

    def pending(self, grain: Grain, now: datetime, grace: timedelta) -> list[Period]:
        """Complete periods of ``grain`` with data that have no merged file or an outdated one, oldest first."""
        return [p for p in self.periods(grain) if is_complete(p, now, grace) and not self.up_to_date(p)]
