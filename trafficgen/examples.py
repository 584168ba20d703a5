"""The six canonical example messages, copied verbatim from the seed document (seed 001).

They are the reference inputs of the tests: each is what the source system documents as a valid
message of its domain. (The device example's ``ip_address_hash`` is abbreviated in the seed and
kept as it is.) Integral values such as ``"value": 2`` stay integers, as in the seed.
"""

from __future__ import annotations

import copy
from typing import Any

CANONICAL_EXAMPLES: dict[str, dict[str, Any]] = {
    "equipment_metrics": {
        "timestamp": "2025-05-24T13:00:00Z",
        "equipment_id": "LINE_A_PRESS_001",
        "equipment_type": "hydraulic_press",
        "location": "line_a",
        "schema_version": "v1.2",
        "metrics": [
            {
                "sensor_id": "TEMP_SENSOR_001",
                "sensor_type": "temperature",
                "value": 68.2,
                "unit": "celsius",
                "quality": "good",
            },
            {
                "sensor_id": "VIB_SENSOR_001",
                "sensor_type": "vibration",
                "value": 0.8,
                "unit": "mm/s",
                "quality": "good",
            },
        ],
        "status": {"current": "running", "previous": "idle", "changed_at": "2025-05-24T12:58:30Z"},
        "operator_id": "OP001",
        "batch_id": "BATCH_20250524_001",
        "ingestion_timestamp": "2025-05-24T13:00:02Z",
    },
    "qc_result": {
        "timestamp": "2025-05-24T14:10:00Z",
        "equipment_id": "LINE_B_VISION_001",
        "inspection_type": "vision",
        "product_code": "P12345678",
        "batch_id": "BATCH_20250524_002",
        "operator_id": "OP001",
        "location": "line_b",
        "inspection_items": [
            {"item_id": "WIDTH", "value": 15.3, "unit": "mm"},
            {"item_id": "SCRATCH", "value": 2, "unit": "count"},
        ],
        "schema_version": "v2.0",
        "ingestion_timestamp": "2025-05-24T14:10:04Z",
    },
    "energy_usage": {
        "timestamp": "2025-05-24T14:15:00Z",
        "equipment_id": "LINE_C_PRESS_003",
        "energy_type": "electricity",
        "usage": 12.7,
        "unit": "kWh",
        "location": "line_c",
        "batch_id": "BATCH_20250524_002",
        "schema_version": "v1.1",
        "ingestion_timestamp": "2025-05-24T14:15:03Z",
    },
    "robot_status": {
        "timestamp": "2025-05-24T14:20:00Z",
        "robot_id": "ROBOT_005",
        "model": "agv_type_c",
        "status": {"current": "error", "previous": "moving", "changed_at": "2025-05-24T14:19:40Z"},
        "location": "zone_4",
        "battery_level": 23.5,
        "error_code": "E405",
        "task_id": "TSK_20250524_018",
        "schema_version": "v2.0",
        "ingestion_timestamp": "2025-05-24T14:20:03Z",
    },
    "environmental_readings": {
        "timestamp": "2025-05-24T14:30:00Z",
        "location": "line_d_zone_1",
        "readings": [
            {"sensor_id": "ENV_TEMP_01", "sensor_type": "temperature", "value": 29.8, "unit": "C"},
            {"sensor_id": "ENV_CO2_01", "sensor_type": "co2", "value": 1100, "unit": "ppm"},
        ],
        "schema_version": "v1.0",
        "ingestion_timestamp": "2025-05-24T14:30:04Z",
    },
    "device_status": {
        "timestamp": "2025-05-24T14:35:00Z",
        "device_id": "SENSOR_ENV_001",
        "device_type": "env_sensor",
        "location": "zone_7",
        "ip_address_hash": "0x7e239a...",
        "status": {"ping_success": True, "latency_ms": 43, "last_success_at": "2025-05-24T14:34:30Z"},
        "error_code": None,
        "schema_version": "v2.0",
        "ingestion_timestamp": "2025-05-24T14:35:02Z",
    },
}


def canonical_examples() -> dict[str, dict[str, Any]]:
    """A fresh deep copy of the six seed example messages, keyed by domain name."""
    return copy.deepcopy(CANONICAL_EXAMPLES)


def canonical_example(domain: str) -> dict[str, Any]:
    """A fresh deep copy of ``domain``'s seed example message."""
    return copy.deepcopy(CANONICAL_EXAMPLES[domain])
