"""Per-entity state of the stateful rules, partitioned by the source (topic, partition).

Entities are the Kafka keys of their topics, so an entity's state lives with one partition; the
caller checkpoints a partition's state together with that partition's offsets and drops or restores
it when the partition moves (:meth:`EngineState.snapshot` with ``only=``, :meth:`drop`,
:meth:`adopt`). Snapshots are canonical JSON: the same state gives the same bytes.

Kept per partition: de-dup keys seen within the watermark (with the position that first carried
them, so replaying that very message is not a duplicate), consecutive-exceedance counters, last-seen
records of robots and devices (for the offline sweep), previous robot status and battery samples.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import (
    ALARM_SCHEMA,
    DLQ_SCHEMA,
    OFFLINE_TIMEOUT,
    EngineConfig,
    alarm_id,
    empty_alarms,
    empty_dlq,
)

PartitionKey = tuple[str, int]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(at: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (at - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    """The aware UTC datetime of epoch microseconds."""
    return _EPOCH + timedelta(microseconds=us)


@dataclass
class PartitionState:
    """State of the entities whose messages come from one (topic, partition)."""

    max_event_us: int = 0
    seen: dict[str, list[int]] = field(default_factory=dict)  # de-dup key → [offset, item_index, event_us]
    runs: dict[str, int] = field(default_factory=dict)  # consecutive exceedances per entity key
    last_seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # robot/device id → last report
    status: dict[str, str] = field(default_factory=dict)  # robot id → last status
    battery: dict[str, list[float]] = field(default_factory=dict)  # robot id → [event_us, level]
    transitions: int = 0
    drain_pct: float = 0.0  # battery drained while not charging, summed over robots
    drain_hours: float = 0.0

    # Keys in arrival order (event time, key): expiry pops from the front instead of scanning
    # every key each batch. Not serialized; rebuilt from ``seen`` after a restore.
    order: deque[tuple[int, str]] | None = field(default=None, repr=False, compare=False)

    def remember(self, key: str, position: list[int]) -> None:
        """Record a de-dup key first seen at ``position`` = [offset, item_index, event_us]."""
        self.seen[key] = position
        if self.order is None:
            self.order = deque(sorted((v[2], k) for k, v in self.seen.items()))
        else:
            self.order.append((position[2], key))

    def expire(self, window: timedelta) -> None:
        """Forget de-dup keys older than the watermark (newest event time − ``window``)."""
        limit = self.max_event_us - window // timedelta(microseconds=1)
        if self.order is None:
            self.order = deque(sorted((v[2], k) for k, v in self.seen.items()))
        order, seen = self.order, self.seen
        while order and order[0][0] < limit:
            _, key = order.popleft()
            entry = seen.get(key)
            if entry is not None and entry[2] < limit:
                del seen[key]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "max_event_us": self.max_event_us,
            "seen": self.seen,
            "runs": self.runs,
            "last_seen": self.last_seen,
            "status": self.status,
            "battery": self.battery,
            "transitions": self.transitions,
            "drain_pct": self.drain_pct,
            "drain_hours": self.drain_hours,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionState:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: v for k, v in data.items() if k != "order"})


class EngineState:
    """All partitions' state; see the module docstring."""

    def __init__(self) -> None:
        self.partitions: dict[PartitionKey, PartitionState] = {}

    def partition(self, topic: str, partition: int) -> PartitionState:
        """The state of one source partition (created empty on first use)."""
        key = (topic, int(partition))
        if key not in self.partitions:
            self.partitions[key] = PartitionState()
        return self.partitions[key]

    def drop(self, topic: str, partition: int) -> None:
        """Forget a partition (it was revoked; its next owner restores it from the checkpoint)."""
        self.partitions.pop((topic, int(partition)), None)

    def adopt(self, other: EngineState) -> None:
        """Take over ``other``'s partitions (replacing ours of the same key)."""
        self.partitions.update(other.partitions)

    def snapshot(self, only: set[PartitionKey] | None = None) -> bytes:
        """Canonical JSON of the state (of the partitions in ``only``, if given)."""
        body = {
            f"{topic}|{partition}": state.to_json()
            for (topic, partition), state in sorted(self.partitions.items())
            if only is None or (topic, partition) in only
        }
        return json.dumps({"version": 1, "partitions": body}, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def restore(cls, data: bytes) -> EngineState:
        """The state a :meth:`snapshot` was taken of."""
        doc = json.loads(data)
        if doc.get("version") != 1:
            raise ValueError(f"unknown engine state version {doc.get('version')!r}")
        state = cls()
        for key, body in doc["partitions"].items():
            topic, partition = key.rsplit("|", 1)
            state.partitions[(topic, int(partition))] = PartitionState.from_json(body)
        return state

    def battery_drain_per_hour(self) -> float | None:
        """Average robot battery drain (% per hour, outside charging) seen so far."""
        pct = sum(p.drain_pct for p in self.partitions.values())
        hours = sum(p.drain_hours for p in self.partitions.values())
        return pct / hours if hours > 0 else None

    def sweep(
        self, now: datetime, dims: Dimensions, config: EngineConfig | None = None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Offline robots and devices: (alarms, dlq records), each silence reported exactly once.

        A robot or device is offline when ``now`` − its last report's event time exceeds its timeout
        (robots: ``dim_robot.heartbeat_cycle`` × ``robot_missed_heartbeats``, else
        ``robot_offline_timeout``; devices: heartbeat_cycle × timeout_multiplier). It is not reported
        again until a new report arrives and it falls silent again. The records point at the
        entity's last message (its alarm id is therefore stable across a replay of the sweep).
        """
        from anomaly.heartbeat import robot_timeouts, timeouts_for_devices

        config = config or EngineConfig()
        robots = robot_timeouts(dims, config)
        devices = timeouts_for_devices(dims, config)
        alarms: list[dict[str, Any]] = []
        dlq: list[dict[str, Any]] = []
        now_us = to_us(now)
        for (topic, partition), state in sorted(self.partitions.items()):
            for entity, seen in sorted(state.last_seen.items()):
                if seen["alerted"]:
                    continue
                domain = seen["domain"]
                if domain == "robot_status":
                    timeout = robots.get(entity, config.robot_offline_timeout.total_seconds())
                else:
                    timeout = devices(entity, seen.get("device_type"))
                silent = (now_us - seen["ts"]) / 1e6
                if silent <= timeout:
                    continue
                seen["alerted"] = True
                event_time = from_us(seen["ts"])
                detail = f"no report for {silent:.0f} s (timeout {timeout:.0f} s); last at {event_time.isoformat()}"
                alarms.append({
                    "alarm_id": alarm_id(domain, entity, OFFLINE_TIMEOUT, topic, partition, seen["offset"],
                                         seen["item_index"]),
                    "domain": domain, "entity_id": entity, "rule": OFFLINE_TIMEOUT, "severity": "critical",
                    "value": silent, "threshold_min": None, "threshold_max": timeout, "unit": "s",
                    "location": seen.get("location"), "description": detail, "event_time": event_time,
                    "detected_at": now, "source_topic": topic, "source_partition": partition,
                    "source_offset": seen["offset"], "source_item_index": seen["item_index"],
                })  # fmt: skip
                dlq.append({
                    "domain": domain, "kafka_topic": topic, "kafka_partition": partition,
                    "kafka_offset": seen["offset"], "reason": OFFLINE_TIMEOUT, "detail": detail, "rejected": False,
                    "entity_id": entity, "detected_at": now,
                })  # fmt: skip
        alarm_frame = pl.DataFrame(alarms, schema=ALARM_SCHEMA) if alarms else empty_alarms()
        dlq_frame = pl.DataFrame(dlq, schema=DLQ_SCHEMA) if dlq else empty_dlq()
        return alarm_frame, dlq_frame
