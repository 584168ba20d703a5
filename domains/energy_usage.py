"""energy_usage: one row per consumption report."""

from __future__ import annotations

from domains.base import Domain, TopicSpec, finite, unit_catalog_check

# Units each energy type may be reported in (convertible to its standard unit through
# dim_energy_type). Any other unit for a known type is a unit_mismatch.
ENERGY_UNITS: dict[str, tuple[str, ...]] = {
    "electricity": ("kWh", "Wh", "MWh"),
    "gas": ("m3", "Nm3"),
    "steam": ("kg", "t"),
    "water": ("m3", "L"),
    "compressed_air": ("Nm3", "m3"),
}

DOMAIN = Domain(
    name="energy_usage",
    topic=TopicSpec("iot.energy_usage", partitions=12, retention_days=14, compression="zstd"),
    dlq_topic=TopicSpec("iot.energy_usage.dlq", partitions=4, retention_days=30),
    schema_file="energy_usage.v1.1.avsc",
    schema_version="v1.1",
    schema_id=103,
    entity_key="equipment_id",
    dedup_key=("equipment_id", "energy_type", "timestamp"),
    checks=(finite("usage", "usage"), unit_catalog_check("energy_type", ENERGY_UNITS, "energy_type"),),
)
