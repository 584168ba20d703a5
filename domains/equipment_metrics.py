"""equipment_metrics: sensor readings per machine, one row per element of ``metrics[]``."""

from __future__ import annotations

from domains.base import SCHEMA_ERROR, Domain, TopicSpec, finite, one_of

SENSOR_QUALITIES = ("good", "bad", "uncertain")

DOMAIN = Domain(
    name="equipment_metrics",
    topic=TopicSpec("iot.equipment_metrics", partitions=20, retention_days=7, compression="lz4"),
    dlq_topic=TopicSpec("iot.equipment_metrics.dlq", partitions=5, retention_days=30),
    schema_file="equipment_metrics.v1.2.avsc",
    schema_version="v1.2",
    schema_id=101,
    entity_key="equipment_id",
    dedup_key=("equipment_id", "sensor_type", "timestamp"),
    explode="metrics",
    flatten=("status",),
    timestamp_fields=("timestamp", "status_changed_at", "ingestion_timestamp"),
    # The equipment DLQ has no invalid_enum reason (SPEC §2.2): a bad quality is a schema error.
    checks=(
        finite("value", "metrics[].value"),
        one_of("quality", SENSOR_QUALITIES, SCHEMA_ERROR, "metrics[].quality"),
    ),
)
