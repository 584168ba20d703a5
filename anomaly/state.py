"""Per-entity state of the stateful rules, partitioned by the source (topic, partition).

Entities are the Kafka keys of their topics, so an entity's state lives with one partition; the
caller checkpoints a partition's state together with that partition's offsets and drops or restores
it when the partition moves (:meth:`EngineState.snapshot` with ``only=``, :meth:`drop`,
:meth:`adopt`).

Kept per partition: de-dup keys seen within the watermark (with the position that first carried
them, so replaying that very message is not a duplicate; a compact table, :mod:`anomaly.dedup`),
consecutive-exceedance counters, last-seen records of robots and devices (for the offline sweep),
previous robot status and battery samples, last equipment status and the transition counters.

Snapshots (version 2) are deterministic, the same state giving the same bytes::

    b"FMS-ENGINE-STATE\n" + header + b"\n" + seen tables

The header is canonical JSON, ``{"version": 2, "partitions": {"<topic>|<partition>": {...}}}``, with
the small per-entity parts of each partition as they were in version 1 and, under ``"seen"``, null
or where its de-dup table lies in the bytes after the header (``offset``, ``length``, ``rows``,
``keys``, ``event``): Parquet, zstd, the live entries ordered by position. :meth:`EngineState.restore`
also reads version 1 (one canonical JSON document, de-dup keys as "|"-joined strings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from anomaly.dedup import EVENT, SeenKeys
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
from domains import DOMAINS

PartitionKey = tuple[str, int]
SNAPSHOT_MAGIC = b"FMS-ENGINE-STATE\n"
SNAPSHOT_VERSION = 2
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
    seen: SeenKeys = field(default_factory=SeenKeys)  # de-dup keys within the watermark
    runs: dict[str, int] = field(default_factory=dict)  # consecutive exceedances per entity key
    last_seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # robot/device id → last report
    status: dict[str, str] = field(default_factory=dict)  # robot id → last status
    battery: dict[str, list[float]] = field(default_factory=dict)  # robot id → [event_us, level]
    transitions: int = 0  # robot status changes
    drain_pct: float = 0.0  # battery drained while not charging, summed over robots
    drain_hours: float = 0.0
    # Entities whose status transitions are compared (RuleSet.status_entity: equipment): id → [event_us,
    # status.current] of its newest message, and the transitions counted.
    entity_status: dict[str, list[Any]] = field(default_factory=dict)
    status_transitions: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form of everything but the de-dup table."""
        return {
            "max_event_us": self.max_event_us,
            "runs": self.runs,
            "last_seen": self.last_seen,
            "status": self.status,
            "battery": self.battery,
            "transitions": self.transitions,
            "drain_pct": self.drain_pct,
            "drain_hours": self.drain_hours,
            "entity_status": self.entity_status,
            "status_transitions": self.status_transitions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], seen: SeenKeys | None = None) -> PartitionState:
        """Inverse of :meth:`to_json` (fields a version-1 snapshot lacks keep their defaults)."""
        known = set(cls.__dataclass_fields__) - {"seen"}
        return cls(**{k: v for k, v in data.items() if k in known}, seen=seen or SeenKeys())


def _v1_seen(topic: str, seen: dict[str, list[int]]) -> SeenKeys:
    """A version-1 de-dup dict as a table, typed by the de-dup key of the topic's domain."""
    domain = next((d for d in DOMAINS.values() if d.topic.name == topic), None)
    if domain is None or not seen:
        return SeenKeys()  # no domain reads this topic: its keys could never be looked up
    key_schema = {k: domain.flat_schema[k] for k in domain.dedup_key}
    return SeenKeys.from_v1(seen, key_schema, "timestamp" if "timestamp" in key_schema else EVENT)


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
        """Version-2 snapshot of the state (of the partitions in ``only``, if given); see the module docstring."""
        partitions: dict[str, Any] = {}
        tables: list[bytes] = []
        offset = 0
        for (topic, partition), state in sorted(self.partitions.items()):
            if only is not None and (topic, partition) not in only:
                continue
            body = state.to_json()
            rows, blob = state.seen.to_parquet()
            body["seen"] = None
            if rows:
                body["seen"] = {"offset": offset, "length": len(blob), "rows": rows, "keys": list(state.seen.keys),
                                "event": state.seen.event}  # fmt: skip
                tables.append(blob)
                offset += len(blob)
            partitions[f"{topic}|{partition}"] = body
        header = json.dumps({"version": SNAPSHOT_VERSION, "partitions": partitions}, sort_keys=True,
                            separators=(",", ":"))  # fmt: skip
        return b"".join([SNAPSHOT_MAGIC, header.encode(), b"\n", *tables])

    @classmethod
    def restore(cls, data: bytes) -> EngineState:
        """The state a :meth:`snapshot` was taken of (version 2, or version 1 of the previous release).

        Anything else, or a damaged snapshot, raises ValueError.
        """
        try:
            return cls._read_v2(data) if data.startswith(SNAPSHOT_MAGIC) else cls._read_v1(data)
        except ValueError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
            raise ValueError(f"damaged engine state snapshot: {exc!r}") from exc

    @classmethod
    def _read_v2(cls, data: bytes) -> EngineState:
        end = data.index(b"\n", len(SNAPSHOT_MAGIC))
        doc = json.loads(data[len(SNAPSHOT_MAGIC) : end])
        if doc.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown engine state version {doc.get('version')!r}")
        tables = memoryview(data)[end + 1 :]
        state = cls()
        for key, body in doc["partitions"].items():
            topic, partition = key.rsplit("|", 1)
            where = body.pop("seen")
            seen = SeenKeys()
            if where is not None:
                blob = bytes(tables[where["offset"] : where["offset"] + where["length"]])
                seen = SeenKeys.from_parquet(blob, where["keys"], where["event"])
                if len(seen) != where["rows"]:
                    raise ValueError(f"engine state of {key}: {len(seen)} de-dup rows, the header says {where['rows']}")
            state.partitions[(topic, int(partition))] = PartitionState.from_json(body, seen)
        return state

    @classmethod
    def _read_v1(cls, data: bytes) -> EngineState:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not an engine state snapshot (neither version 2 nor a version-1 JSON document)")
        state = cls()
        for key, body in doc["partitions"].items():
            topic, partition = key.rsplit("|", 1)
            seen = _v1_seen(topic, body.pop("seen", {}))
            state.partitions[(topic, int(partition))] = PartitionState.from_json(body, seen)
        return state

    def status_transitions(self) -> int:
        """Equipment status transitions counted so far (over the partitions held)."""
        return sum(p.status_transitions for p in self.partitions.values())

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
