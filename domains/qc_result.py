"""qc_result: inspection results, one row per element of ``inspection_items[]``."""

from __future__ import annotations

from domains.base import Domain, TopicSpec, finite, unit_catalog_check

# Unit of each known inspection item (the repo's default dim_inspection_item). An unknown item is
# not rejected here: the anomaly engine marks it threshold_missing.
ITEM_UNITS: dict[str, tuple[str, ...]] = {
    "WIDTH": ("mm",),
    "LENGTH": ("mm",),
    "HEIGHT": ("mm",),
    "THICKNESS": ("mm",),
    "DIAMETER": ("mm",),
    "WEIGHT": ("g",),
    "SCRATCH": ("count",),
    "DENT": ("count",),
    "COLOR_DELTA_E": ("dE",),
    "ROUGHNESS": ("um",),
}

DOMAIN = Domain(
    name="qc_result",
    topic=TopicSpec("iot.qc_result", partitions=12, retention_days=14, compression="lz4"),
    dlq_topic=TopicSpec("iot.qc_result.dlq", partitions=4, retention_days=30),
    schema_file="qc_result.v2.0.avsc",
    schema_version="v2.0",
    schema_id=102,
    entity_key="equipment_id",
    dedup_key=("batch_id", "item_id", "timestamp"),
    explode="inspection_items",
    checks=(
        finite("value", "inspection_items[].value"),
        unit_catalog_check("item_id", ITEM_UNITS, "inspection_items[].item_id"),
    ),
)
