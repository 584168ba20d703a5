"""Rows waiting to be written, bucketed by domain, kind (facts or DLQ rows) and event-time minute.

A bucket remembers, for each (topic, partition), the first offset it holds: until the bucket is
stored, the partition's committed offset must not pass that offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from common.layout import minute_end

TopicPartition = tuple[str, int]
FACTS = "facts"
DLQ = "dlq"


@dataclass
class Bucket:
    """Rows of one domain and kind whose event time falls in one UTC minute."""

    domain: str
    minute: datetime
    kind: str = FACTS
    frames: list[pl.DataFrame] = field(default_factory=list)
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    nbytes: float = 0
    rows: int = 0

    def add(self, rows: pl.DataFrame) -> None:
        """Append rows (all of this bucket's domain and minute)."""
        self.frames.append(rows)
        self.nbytes += rows.estimated_size()
        self.rows += rows.height
        firsts = rows.group_by("kafka_topic", "kafka_partition").agg(pl.col("kafka_offset").min())
        for topic, partition, offset in firsts.iter_rows():
            key = (topic, partition)
            self.first_offsets[key] = min(offset, self.first_offsets.get(key, offset))

    def table(self) -> pl.DataFrame:
        """All rows of the bucket as one frame."""
        return pl.concat(self.frames, how="vertical", rechunk=True) if len(self.frames) > 1 else self.frames[0]


class MinuteBuffer:
    """Buckets keyed by (domain, minute); tells which are due and what they hold back."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str, datetime], Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def nbytes(self) -> float:
        """Estimated memory held by buffered rows."""
        return sum(b.nbytes for b in self._buckets.values())

    @property
    def rows(self) -> int:
        """Number of buffered rows."""
        return sum(b.rows for b in self._buckets.values())

    def add(self, domain: str, rows: pl.DataFrame, kind: str = FACTS) -> None:
        """Split rows by event-time minute into their buckets."""
        if rows.is_empty():
            return
        minutes = rows.with_columns(pl.col("timestamp").dt.truncate("1m").alias("_minute"))
        for (minute,), part in minutes.partition_by("_minute", as_dict=True, maintain_order=True).items():
            key = (domain, kind, minute)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = Bucket(domain=domain, minute=minute, kind=kind)
            bucket.add(part.drop("_minute"))

    def due(self, now: datetime, grace_seconds: float, future_seconds: float = 120.0) -> list[Bucket]:
        """Buckets whose minute ended more than ``grace_seconds`` before ``now``, and buckets of minutes
        starting more than ``future_seconds`` after ``now`` (events stamped by a clock running ahead must
        not hold their partition's commit until that time comes), oldest first."""
        due = [
            b for b in self._buckets.values()
            if (now - minute_end(b.minute)).total_seconds() >= grace_seconds
            or (b.minute - now).total_seconds() > future_seconds
        ]  # fmt: skip
        return sorted(due, key=lambda b: (b.minute, b.domain, b.kind))

    def all(self) -> list[Bucket]:
        """Every bucket, oldest first."""
        return sorted(self._buckets.values(), key=lambda b: (b.minute, b.domain, b.kind))

    def remove(self, bucket: Bucket) -> None:
        """Forget a bucket once it is stored."""
        self._buckets.pop((bucket.domain, bucket.kind, bucket.minute), None)

    def held_offsets(self) -> dict[TopicPartition, int]:
        """For each partition, the lowest offset still only in memory."""
        held: dict[TopicPartition, int] = {}
        for bucket in self._buckets.values():
            for tp, offset in bucket.first_offsets.items():
                held[tp] = min(offset, held.get(tp, offset))
        return held

    def drop_partitions(self, partitions: set[TopicPartition]) -> int:
        """Discard rows of partitions this process no longer owns; returns rows dropped."""
        dropped = 0
        for key, bucket in list(self._buckets.items()):
            if not partitions & bucket.first_offsets.keys():
                continue
            keep = [
                f.filter(
                    ~pl.struct("kafka_topic", "kafka_partition").is_in(
                        [{"kafka_topic": t, "kafka_partition": p} for t, p in partitions]
                    )
                )
                for f in bucket.frames
            ]
            fresh = Bucket(domain=bucket.domain, minute=bucket.minute, kind=bucket.kind)
            for frame in keep:
                if frame.height:
                    fresh.add(frame)
            dropped += bucket.rows - fresh.rows
            if fresh.rows:
                self._buckets[key] = fresh
            else:
                del self._buckets[key]
        return dropped
