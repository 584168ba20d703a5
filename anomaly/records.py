"""What the engine outputs: flag columns per domain, DLQ and alarm record schemas, reason priority.

One message gets at most one DLQ reason. When several apply, the first in :data:`REASON_PRIORITY`
wins: rejections first (the message is not stored, so nothing else about it matters), then the
flagged reasons from the most to the least actionable.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import polars as pl

from domains.base import UNIT_MISMATCH, UTC_MICROS

# Reasons the engine adds (the decoder's schema_error / invalid_enum / unit_violation come first).
DUPLICATE = "duplicate"
BUSINESS_RULE_VIOLATION = "business_rule_violation"
THRESHOLD_MISSING = "threshold_missing"
LATE_ARRIVAL = "late_arrival"
MISSING_ERROR_CODE = "missing_error_code"
PING_FAILURE = "ping_failure"
LATENCY_VIOLATION = "latency_violation"
OFFLINE_TIMEOUT = "offline_timeout"

REJECTING = frozenset({DUPLICATE, UNIT_MISMATCH})
REASON_PRIORITY: tuple[str, ...] = (
    DUPLICATE,
    UNIT_MISMATCH,
    BUSINESS_RULE_VIOLATION,
    OFFLINE_TIMEOUT,
    MISSING_ERROR_CODE,
    PING_FAILURE,
    LATENCY_VIOLATION,
    THRESHOLD_MISSING,
    LATE_ARRIVAL,
)
RANK = {reason: i for i, reason in enumerate(REASON_PRIORITY)}

# Domains whose DLQ has late_arrival (SPEC §2.2).
LATE_ARRIVAL_DOMAINS = frozenset({"equipment_metrics", "qc_result", "energy_usage", "environmental_readings"})

_COMMON_FLAGS: dict[str, pl.DataType] = {
    "anomaly": pl.Boolean(),
    "anomaly_rule": pl.String(),
    "threshold_min": pl.Float64(),
    "threshold_max": pl.Float64(),
    "dlq_reason": pl.String(),
}
# Status comparison of equipment messages with the equipment's last status seen (see AnomalyEngine).
STATUS_TRANSITION = "status_transition"
STATUS_PREVIOUS_MISMATCH = "status_previous_mismatch"

_EXTRA_FLAGS: dict[str, dict[str, pl.DataType]] = {
    "equipment_metrics": {STATUS_TRANSITION: pl.Boolean(), STATUS_PREVIOUS_MISMATCH: pl.Boolean()},
    "energy_usage": {
        "usage_std": pl.Float64(),
        "standard_unit": pl.String(),
        "carbon_g": pl.Float64(),
        "cost": pl.Float64(),
    },
    "robot_status": {"error_description": pl.String(), "error_severity": pl.String()},
    "device_status": {"error_description": pl.String(), "error_severity": pl.String()},
}


def flag_schema(domain_name: str) -> dict[str, pl.DataType]:
    """Columns the engine appends to ``domain_name``'s stored rows, in order."""
    return {**_COMMON_FLAGS, **_EXTRA_FLAGS.get(domain_name, {})}


DLQ_SCHEMA: dict[str, pl.DataType] = {
    "domain": pl.String(),
    "kafka_topic": pl.String(),
    "kafka_partition": pl.Int32(),
    "kafka_offset": pl.Int64(),
    "reason": pl.String(),
    "detail": pl.String(),
    "rejected": pl.Boolean(),
    "entity_id": pl.String(),
    "detected_at": UTC_MICROS,
}

ALARM_SCHEMA: dict[str, pl.DataType] = {
    "alarm_id": pl.String(),
    "domain": pl.String(),
    "entity_id": pl.String(),
    "rule": pl.String(),
    "severity": pl.String(),
    "value": pl.Float64(),
    "threshold_min": pl.Float64(),
    "threshold_max": pl.Float64(),
    "unit": pl.String(),
    "location": pl.String(),
    "description": pl.String(),
    "event_time": UTC_MICROS,
    "detected_at": UTC_MICROS,
    "source_topic": pl.String(),
    "source_partition": pl.Int32(),
    "source_offset": pl.Int64(),
    "source_item_index": pl.Int32(),
}

# Fixed namespace: alarm ids are uuid5(namespace, "domain|entity|rule|topic|partition|offset|item").
ALARM_NAMESPACE = uuid.UUID("6f1d2c4e-7a3b-5e0f-9c1d-2b4a6e8f0a17")


def alarm_id(domain: str, entity: str, rule: str, topic: str, partition: int, offset: int, item_index: int = 0) -> str:
    """The deterministic id of an alarm: the same source record and rule always give the same id."""
    return str(uuid.uuid5(ALARM_NAMESPACE, f"{domain}|{entity}|{rule}|{topic}|{partition}|{offset}|{item_index}"))


@dataclass(frozen=True)
class EngineConfig:
    """Tunables of the rules (defaults from SPEC §2.2)."""

    late_after: timedelta = timedelta(minutes=10)
    # De-duplication windows (event-time watermark) per domain; a domain not listed is not de-duplicated.
    dedup_windows: dict[str, timedelta] = field(
        default_factory=lambda: {"equipment_metrics": timedelta(minutes=15), "energy_usage": timedelta(minutes=10)}
    )
    business_rule_band_fraction: float = 0.99  # beyond the band by more than this share of its width
    consecutive_alarm_count: int = 3  # energy and CO2
    # Peak-hours windows (UTC hour-of-day, start inclusive, end exclusive) for the energy alarm.
    peak_hours: tuple[tuple[int, int], ...] = ((9, 12), (17, 20))
    robot_battery_low: float = 20.0
    robot_offline_timeout: timedelta = timedelta(minutes=10)  # when dim_robot has no heartbeat_cycle
    robot_missed_heartbeats: float = 20.0  # with a heartbeat_cycle: timeout = cycle × this
    device_timeout_multiplier: float = 2.5  # when dim_device_threshold has none
    device_default_heartbeat: timedelta = timedelta(seconds=60)  # when dim_device has none
    co2_sensor_type: str = "co2"


@dataclass
class Evaluation:
    """Result of evaluating one batch of a domain.

    ``rows``: the fact rows to store (input rows of messages not rejected, plus
    :func:`flag_schema` columns); ``dlq``: one record per affected message (:data:`DLQ_SCHEMA`);
    ``alarms``: :data:`ALARM_SCHEMA` rows.
    """

    domain: str
    rows: pl.DataFrame
    dlq: pl.DataFrame
    alarms: pl.DataFrame

    def alarm_records(self) -> list[dict[str, Any]]:
        """Alarms as JSON-ready dicts (times as ISO-8601 UTC strings) for ``iot.alarm_log``."""
        return alarm_dicts(self.alarms)

    @property
    def rejected_positions(self) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of the messages the engine rejected."""
        rejected = self.dlq.filter(pl.col("rejected"))
        return set(zip(rejected["kafka_topic"], rejected["kafka_partition"], rejected["kafka_offset"], strict=True))


def alarm_dicts(alarms: pl.DataFrame) -> list[dict[str, Any]]:
    """Alarm rows as JSON-ready dicts."""
    out = alarms.with_columns(
        pl.col("event_time", "detected_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
    )
    return out.to_dicts()


def empty_dlq() -> pl.DataFrame:
    """A DLQ frame with no records."""
    return pl.DataFrame(schema=DLQ_SCHEMA)


def empty_alarms() -> pl.DataFrame:
    """An alarm frame with no records."""
    return pl.DataFrame(schema=ALARM_SCHEMA)
