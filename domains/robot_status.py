"""robot_status: one row per robot state report; ``status.*`` flattened, task_id nullable."""

from __future__ import annotations

import polars as pl

from domains.base import INVALID_ENUM, UNIT_VIOLATION, Domain, RecordCheck, TopicSpec, one_of

ROBOT_STATES = ("idle", "moving", "charging", "error")

_battery = pl.col("battery_level")

DOMAIN = Domain(
    name="robot_status",
    topic=TopicSpec("iot.robot_status", partitions=12, retention_days=7, compression="zstd"),
    dlq_topic=TopicSpec("iot.robot_status.dlq", partitions=4, retention_days=30),
    schema_file="robot_status.v2.0.avsc",
    schema_version="v2.0",
    schema_id=104,
    entity_key="robot_id",
    dedup_key=("robot_id", "timestamp"),
    flatten=("status",),
    timestamp_fields=("timestamp", "status_changed_at", "ingestion_timestamp"),
    checks=(
        one_of("status_current", ROBOT_STATES, INVALID_ENUM, "status.current"),
        one_of("status_previous", ROBOT_STATES, INVALID_ENUM, "status.previous"),
        RecordCheck(
            reason=UNIT_VIOLATION,
            fails=_battery.is_nan() | (_battery < 0) | (_battery > 100),
            detail=pl.format("battery_level {} is outside 0-100 %", _battery),
        ),
    ),
)
