"""environmental_readings: zone readings, one row per element of ``readings[]``."""

from __future__ import annotations

from domains.base import Domain, TopicSpec, finite, unit_catalog_check

# Expected unit per sensor type (the repo's default; dim_env_threshold.expected_unit refines it).
SENSOR_UNITS: dict[str, tuple[str, ...]] = {
    "temperature": ("C",),
    "humidity": ("%",),
    "co2": ("ppm",),
    "pm25": ("ug/m3",),
    "noise": ("dB",),
    "pressure": ("hPa",),
}

DOMAIN = Domain(
    name="environmental_readings",
    topic=TopicSpec("iot.environmental_readings", partitions=8, retention_days=14, compression="zstd"),
    dlq_topic=TopicSpec("iot.environmental_readings.dlq", partitions=3, retention_days=30),
    schema_file="environmental_readings.v1.0.avsc",
    schema_version="v1.0",
    schema_id=105,
    entity_key="location",
    dedup_key=("sensor_id", "timestamp"),
    explode="readings",
    checks=(
        finite("value", "readings[].value"),
        unit_catalog_check("sensor_type", SENSOR_UNITS, "readings[].sensor_type"),
    ),
)
