"""DLQ rows as stored: exact times, fall-backs and the personal-data rule of :func:`domains.dlq.dlq_rows`."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from domains.base import PERSONAL_DATA_DETAIL
from domains.dlq import DLQ_ROW_SCHEMA, dlq_rows

DETECTED = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)


def test_event_time_then_kafka_time_then_detection_time() -> None:
    records = [
        ("iot.energy_usage", 3, 40, 1_764_896_400_123, b"EM-1", b"v1"),  # decoded: its event time
        ("iot.energy_usage", 3, 41, 1_764_896_400_456, b"EM-2", b"v2"),  # not decoded: its Kafka time
        ("iot.energy_usage", 4, 7, -1, None, b"v3"),  # no Kafka time either: when it was detected
    ]
    reasons = [
        ("duplicate", "seen before", True, "EM-1", '{"energy_meter_id": "EM-1"}', 1_764_896_399_000_001),
        ("schema_error", "truncated", True, None, None, None),
        ("schema_error", "garbage", True, None, None, None),
    ]
    frame = dlq_rows("energy_usage", records, reasons, DETECTED)

    assert frame.schema == pl.Schema(DLQ_ROW_SCHEMA) and frame.columns == list(DLQ_ROW_SCHEMA)
    assert frame.get_column("timestamp").to_list() == [
        datetime(2025, 12, 5, 0, 59, 59, 1, tzinfo=UTC),
        datetime(2025, 12, 5, 1, 0, 0, 456000, tzinfo=UTC),
        DETECTED,
    ]
    assert frame.get_column("kafka_timestamp").to_list() == [
        datetime(2025, 12, 5, 1, 0, 0, 123000, tzinfo=UTC),
        datetime(2025, 12, 5, 1, 0, 0, 456000, tzinfo=UTC),
        DETECTED,
    ]
    assert frame.select("detected_at", "collected_at").unique().rows() == [(DETECTED, DETECTED)]
    assert frame.select("kafka_partition", "kafka_offset", "item_index", "kafka_key", "raw").rows() == [
        (3, 40, 0, b"EM-1", b"v1"), (3, 41, 0, b"EM-2", b"v2"), (4, 7, 0, None, b"v3"),
    ]  # fmt: skip
    assert frame.select("domain", "reason", "rejected", "entity_id", "decoded").row(0) == (
        "energy_usage", "duplicate", True, "EM-1", '{"energy_meter_id": "EM-1"}',
    )  # fmt: skip


def test_personal_data_keeps_only_reason_detail_and_position() -> None:
    frame = dlq_rows(
        "device_status",
        [("iot.device_status", 0, 9, 1_764_896_400_000, b"DEV-1", b'{"ip": "10.0.0.1"}')],
        [("schema_error", f"{PERSONAL_DATA_DETAIL}network.ip", True, "DEV-1", '{"ip": "10.0.0.1"}', None)],
        DETECTED,
    )
    row = frame.row(0, named=True)
    assert (row["entity_id"], row["kafka_key"], row["raw"], row["decoded"]) == (None, None, None, None)
    assert (row["reason"], row["detail"], row["kafka_offset"]) == (
        "schema_error", f"{PERSONAL_DATA_DETAIL}network.ip", 9,
    )  # fmt: skip


def test_no_records_make_an_empty_typed_frame() -> None:
    assert dlq_rows("qc_result", [], [], DETECTED).schema == pl.Schema(DLQ_ROW_SCHEMA)
