"""Batch decoding of every domain and wire format: exact rows, rejects with the right reason."""

from __future__ import annotations

import copy
import struct
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl
import pytest

from domains import DOMAINS
from domains.avro import encode_one
from domains.base import INVALID_ENUM, SCHEMA_ERROR, UNIT_MISMATCH, UNIT_VIOLATION, Domain
from domains.decode import BatchDecoder, MessageBatch, WireFormat
from trafficgen.examples import canonical_example

COLLECTED_AT = datetime(2025, 5, 24, 15, 0, tzinfo=UTC)
FORMATS = ("json", "avro", "avro-confluent")


def encode(domain: Domain, record: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return orjson.dumps(record)
    raw = encode_one(record, domain.parsed_schema)
    return raw if fmt == "avro" else struct.pack(">bI", 0, domain.schema_id) + raw


def batch_of(domain: Domain, values: list[bytes | None], first_offset: int = 100) -> MessageBatch:
    n = len(values)
    return MessageBatch(
        topic=domain.topic.name,
        values=values,
        partitions=[3] * n,
        offsets=list(range(first_offset, first_offset + n)),
        timestamps_ms=[1748095200000 + i for i in range(n)],
    )


def decode(domain: Domain, values: list[bytes | None], fmt: WireFormat = WireFormat.AUTO):
    return BatchDecoder(domain, wire_format=fmt).decode(batch_of(domain, values), COLLECTED_AT)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Exact expected rows of the seed examples (seeds/001), without provenance columns.
EXPECTED_ROWS: dict[str, list[dict[str, Any]]] = {
    "equipment_metrics": [
        {"timestamp": ts("2025-05-24T13:00:00Z"), "equipment_id": "LINE_A_PRESS_001", "sensor_id": "TEMP_SENSOR_001",
         "sensor_type": "temperature", "value": 68.2, "unit": "celsius", "quality": "good",
         "status_current": "running", "status_previous": "idle", "status_changed_at": ts("2025-05-24T12:58:30Z"),
         "operator_id": "OP001", "batch_id": "BATCH_20250524_001", "item_index": 0},
        {"timestamp": ts("2025-05-24T13:00:00Z"), "equipment_id": "LINE_A_PRESS_001", "sensor_id": "VIB_SENSOR_001",
         "sensor_type": "vibration", "value": 0.8, "unit": "mm/s", "quality": "good",
         "status_current": "running", "status_previous": "idle", "status_changed_at": ts("2025-05-24T12:58:30Z"),
         "operator_id": "OP001", "batch_id": "BATCH_20250524_001", "item_index": 1},
    ],
    "qc_result": [
        {"timestamp": ts("2025-05-24T14:10:00Z"), "equipment_id": "LINE_B_VISION_001", "product_code": "P12345678",
         "item_id": "WIDTH", "value": 15.3, "unit": "mm", "inspection_type": "vision", "item_index": 0},
        {"timestamp": ts("2025-05-24T14:10:00Z"), "equipment_id": "LINE_B_VISION_001", "product_code": "P12345678",
         "item_id": "SCRATCH", "value": 2.0, "unit": "count", "inspection_type": "vision", "item_index": 1},
    ],
    "energy_usage": [
        {"timestamp": ts("2025-05-24T14:15:00Z"), "equipment_id": "LINE_C_PRESS_003", "energy_type": "electricity",
         "usage": 12.7, "unit": "kWh", "location": "line_c", "ingestion_timestamp": ts("2025-05-24T14:15:03Z")},
    ],
    "robot_status": [
        {"timestamp": ts("2025-05-24T14:20:00Z"), "robot_id": "ROBOT_005", "model": "agv_type_c",
         "status_current": "error", "status_previous": "moving", "status_changed_at": ts("2025-05-24T14:19:40Z"),
         "location": "zone_4", "battery_level": 23.5, "error_code": "E405", "task_id": "TSK_20250524_018",
         "schema_version": "v2.0", "ingestion_timestamp": ts("2025-05-24T14:20:03Z")},
    ],
    "environmental_readings": [
        {"timestamp": ts("2025-05-24T14:30:00Z"), "location": "line_d_zone_1", "sensor_id": "ENV_TEMP_01",
         "sensor_type": "temperature", "value": 29.8, "unit": "C", "item_index": 0},
        {"timestamp": ts("2025-05-24T14:30:00Z"), "location": "line_d_zone_1", "sensor_id": "ENV_CO2_01",
         "sensor_type": "co2", "value": 1100.0, "unit": "ppm", "item_index": 1},
    ],
    "device_status": [
        {"timestamp": ts("2025-05-24T14:35:00Z"), "device_id": "SENSOR_ENV_001", "device_type": "env_sensor",
         "location": "zone_7", "ip_address_hash": "0x7e239a...", "status_ping_success": True,
         "status_latency_ms": 43, "status_last_success_at": ts("2025-05-24T14:34:30Z"), "error_code": None},
    ],
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(DOMAINS))
def test_seed_example_decodes_to_exact_rows(name: str, fmt: str) -> None:
    domain = DOMAINS[name]
    result = decode(domain, [encode(domain, canonical_example(name), fmt)])
    assert result.rejected == []
    expected = EXPECTED_ROWS[name]
    assert result.rows.height == len(expected)
    assert result.rows.schema == pl.Schema(domain.flat_schema)
    got = result.rows.to_dicts()
    for row, want in zip(got, expected, strict=True):
        assert {k: row[k] for k in want} == want
        assert row["kafka_topic"] == domain.topic.name
        assert (row["kafka_partition"], row["kafka_offset"]) == (3, 100)
        assert row["kafka_timestamp"] == datetime(2025, 5, 24, 14, 0, tzinfo=UTC)
        assert row["collected_at"] == COLLECTED_AT


def test_device_status_never_stores_a_raw_ip() -> None:
    domain = DOMAINS["device_status"]
    record = canonical_example("device_status")
    record["ip_address"] = "10.1.2.3"  # an extra field a producer might add
    leaked = dict(canonical_example("device_status"), ip_address_hash="192.168.0.17")
    result = decode(domain, [orjson.dumps(record), orjson.dumps(leaked)])
    assert "ip_address" not in result.rows.columns
    assert result.rows.height == 1
    assert [(r.index, r.reason) for r in result.rejected] == [(1, SCHEMA_ERROR)]
    assert "raw IP" in result.rejected[0].detail


def _mutate(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DROP:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


_DROP = object()

# (domain, field path, new value or _DROP, formats, expected reason, text expected in the detail)
FAULTS = [
    ("equipment_metrics", "equipment_id", _DROP, ["json"], SCHEMA_ERROR, "equipment_id"),
    ("equipment_metrics", "metrics.1.sensor_type", _DROP, ["json"], SCHEMA_ERROR, "sensor_type"),
    ("equipment_metrics", "metrics.0.value", "hot", ["json"], SCHEMA_ERROR, "value"),
    ("equipment_metrics", "metrics.0.quality", "excellent", FORMATS, SCHEMA_ERROR, "quality 'excellent'"),
    ("equipment_metrics", "metrics", [], FORMATS, SCHEMA_ERROR, "metrics[] is missing or empty"),
    ("equipment_metrics", "timestamp", "yesterday", FORMATS, SCHEMA_ERROR, "not an ISO-8601 time"),
    ("qc_result", "inspection_items.0.unit", _DROP, ["json"], SCHEMA_ERROR, "unit"),
    ("qc_result", "inspection_items.0.unit", "cm", FORMATS, UNIT_MISMATCH, "unit 'cm' for"),
    ("energy_usage", "usage", "lots", ["json"], SCHEMA_ERROR, "usage"),
    ("energy_usage", "usage", float("nan"), ["avro"], SCHEMA_ERROR, "usage is not a finite number"),
    ("equipment_metrics", "metrics.0.value", float("inf"), ["avro"], SCHEMA_ERROR, "metrics[].value is not a finite"),
    ("qc_result", "inspection_items.0.value", float("-inf"), ["avro"], SCHEMA_ERROR, "is not a finite number"),
    ("environmental_readings", "readings.0.value", float("nan"), ["avro"], SCHEMA_ERROR, "is not a finite number"),
    ("energy_usage", "unit", "m3", FORMATS, UNIT_MISMATCH, "expected kWh|Wh|MWh"),
    ("robot_status", "status.current", "flying", FORMATS, INVALID_ENUM, "status.current 'flying'"),
    ("robot_status", "battery_level", 140.0, FORMATS, UNIT_VIOLATION, "outside 0-100"),
    ("robot_status", "battery_level", -5.0, FORMATS, UNIT_VIOLATION, "outside 0-100"),
    ("robot_status", "model", _DROP, ["json"], SCHEMA_ERROR, "model"),
    ("environmental_readings", "readings.0.unit", "F", FORMATS, UNIT_MISMATCH, "unit 'F'"),
    ("device_status", "device_type", "toaster", FORMATS, INVALID_ENUM, "device_type 'toaster'"),
    ("device_status", "status.ping_success", "yes", ["json"], SCHEMA_ERROR, "ping_success"),
    ("device_status", "status.latency_ms", "slow", ["json"], SCHEMA_ERROR, "latency_ms"),
]


@pytest.mark.parametrize(("name", "path", "value", "formats", "reason", "detail"), FAULTS)
def test_fault_is_rejected_with_reason_and_good_messages_are_kept(
    name: str, path: str, value: Any, formats: list[str], reason: str, detail: str
) -> None:
    domain = DOMAINS[name]
    good = canonical_example(name)
    bad = _mutate(good, path, value)
    per_message = len(EXPECTED_ROWS[name])
    for fmt in formats:
        values = [encode(domain, good, fmt), encode(domain, bad, fmt), encode(domain, good, fmt)]
        result = decode(domain, values)
        assert [(r.index, r.reason) for r in result.rejected] == [(1, reason)], fmt
        assert detail in result.rejected[0].detail, result.rejected[0].detail
        assert result.rows.height == 2 * per_message
        assert sorted(set(result.rows["kafka_offset"].to_list())) == [100, 102]


@pytest.mark.parametrize("name", list(DOMAINS))
def test_garbage_truncated_and_empty_values_are_isolated(name: str) -> None:
    domain = DOMAINS[name]
    good = canonical_example(name)
    raw = encode(domain, good, "avro")
    framed = encode(domain, good, "avro-confluent")
    values: list[bytes | None] = [
        raw, raw[:-4], raw, b"\xff\xfe garbage \x01\x02", framed[:-1], None, b"", b"{not json", framed, raw[:3],
        orjson.dumps(good), b"\x00\x00",
    ]
    result = decode(domain, values)
    assert {r.index for r in result.rejected} == {1, 3, 4, 5, 6, 7, 9, 11}
    assert {r.reason for r in result.rejected} == {SCHEMA_ERROR}
    assert sorted(set(result.rows["kafka_offset"].to_list())) == [100, 102, 108, 110]
    assert result.rows.height == 4 * len(EXPECTED_ROWS[name])


def test_mixed_formats_in_one_batch_keep_order_of_positions() -> None:
    domain = DOMAINS["equipment_metrics"]
    good = canonical_example("equipment_metrics")
    values = [encode(domain, good, f) for f in ("json", "avro", "avro-confluent", "avro", "json")]
    result = decode(domain, values)
    assert result.rejected == []
    offsets = result.rows.sort("kafka_offset", "item_index")["kafka_offset"].to_list()
    assert offsets == [100, 100, 101, 101, 102, 102, 103, 103, 104, 104]
    assert result.rows.select(pl.struct("kafka_offset", "item_index").n_unique()).item() == 10


def test_pinned_format_rejects_other_formats() -> None:
    domain = DOMAINS["robot_status"]
    good = canonical_example("robot_status")
    result = decode(domain, [encode(domain, good, "json"), encode(domain, good, "avro")], WireFormat.JSON)
    assert [(r.index, r.reason) for r in result.rejected] == [(1, SCHEMA_ERROR)]
    assert result.rows.height == 1


def test_unknown_schema_id_without_registry_is_tried_with_the_domain_schema() -> None:
    domain = DOMAINS["energy_usage"]
    raw = encode(domain, canonical_example("energy_usage"), "avro")
    result = decode(domain, [struct.pack(">bI", 0, 999) + raw])
    assert result.rejected == [] and result.rows.height == 1


def test_late_arrivals_and_duplicates_are_kept_for_the_anomaly_engine() -> None:
    domain = DOMAINS["robot_status"]
    late = dict(canonical_example("robot_status"), ingestion_timestamp="2025-05-24T14:45:00Z")
    value = encode(domain, late, "avro")
    result = decode(domain, [value, value])
    assert result.rejected == []
    assert result.rows["kafka_offset"].to_list() == [100, 101]
