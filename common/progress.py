"""Per-partition progress objects: how far the durable data of a partition reaches in event time.

The collector writes one small JSON object per assigned partition every ``WATERMARK_INTERVAL_SECONDS``
(``_progress/<group>/<topic>/<partition>.json``); the merger reads them to decide whether a period is
complete (every partition of the domain's topic has passed the period's end plus the grace).

A partition's *watermark* is the newest event time among the messages below its committed offset
(everything below that offset is stored or in the DLQ). A partition with nothing left to read
(committed offset at the high watermark when checked) has passed every instant up to ``checked_at``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

PROGRESS_DIR = "_progress"


def progress_key(group: str, topic: str, partition: int) -> str:
    """Object key of one partition's progress."""
    return f"{PROGRESS_DIR}/{group}/{topic}/{partition}.json"


def progress_prefix(group: str) -> str:
    """Prefix of a consumer group's progress objects."""
    return f"{PROGRESS_DIR}/{group}/"


@dataclass(frozen=True)
class PartitionProgress:
    """What one partition's durable data covers."""

    domain: str
    topic: str
    partition: int
    partitions: int  # partitions of the topic when checked (all must report before a period is complete)
    committed: int
    event_time: datetime | None  # newest event time below ``committed`` (None: nothing consumed yet)
    caught_up: bool  # committed offset was at the high watermark when checked
    checked_at: datetime
    writer: str = ""

    def passed(self) -> datetime | None:
        """The instant this partition's durable data has reached (None if unknown).

        Never later than ``checked_at``: events stamped in the future (producer clock skew) must not
        make a period look complete before it has even ended.
        """
        if self.caught_up:
            return self.checked_at
        if self.event_time is None:
            return None
        return min(self.event_time, self.checked_at)

    def to_json(self) -> bytes:
        """Serialized form."""
        body = asdict(self)
        body["event_time"] = self.event_time.isoformat() if self.event_time else None
        body["checked_at"] = self.checked_at.isoformat()
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PartitionProgress:
        """Parse a stored object (ValueError/KeyError on a malformed one)."""
        raw = json.loads(data)
        return cls(
            domain=str(raw["domain"]),
            topic=str(raw["topic"]),
            partition=int(raw["partition"]),
            partitions=int(raw["partitions"]),
            committed=int(raw["committed"]),
            event_time=datetime.fromisoformat(raw["event_time"]) if raw.get("event_time") else None,
            caught_up=bool(raw["caught_up"]),
            checked_at=datetime.fromisoformat(raw["checked_at"]),
            writer=str(raw.get("writer", "")),
        )
