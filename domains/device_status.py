"""device_status: one row per device heartbeat; ``status.*`` flattened; only the IP hash is kept."""

from __future__ import annotations

import polars as pl

from domains.base import INVALID_ENUM, SCHEMA_ERROR, Domain, RecordCheck, TopicSpec, one_of

DEVICE_TYPES = ("env_sensor", "equipment_sensor", "robot", "gateway", "plc", "camera")

# A dotted quad or a colon-separated IPv6 address is a raw IP, which must never be stored.
_RAW_IP = r"^(\d{1,3}\.){3}\d{1,3}$|^[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}$"

DOMAIN = Domain(
    name="device_status",
    topic=TopicSpec("iot.device_status", partitions=8, retention_days=7, compression="zstd"),
    dlq_topic=TopicSpec("iot.device_status.dlq", partitions=3, retention_days=30),
    schema_file="device_status.v2.0.avsc",
    schema_version="v2.0",
    schema_id=106,
    entity_key="device_id",
    dedup_key=("device_id", "timestamp"),
    flatten=("status",),
    timestamp_fields=("timestamp", "status_last_success_at", "ingestion_timestamp"),
    retention_days=90,
    checks=(
        one_of("device_type", DEVICE_TYPES, INVALID_ENUM, "device_type"),
        RecordCheck(
            reason=SCHEMA_ERROR,
            fails=pl.col("status_latency_ms") < 0,
            detail=pl.format("status.latency_ms {} is negative", pl.col("status_latency_ms")),
        ),
        RecordCheck(
            reason=SCHEMA_ERROR,
            fails=pl.col("ip_address_hash").str.contains(_RAW_IP),
            detail=pl.lit("ip_address_hash holds a raw IP address, not its hash"),
        ),
    ),
)
