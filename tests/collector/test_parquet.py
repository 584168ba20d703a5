"""Minute-file encoding: the manifest travels in the file and tells which positions a name holds."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from collector.parquet import encode_rows, stored_positions, verify


def _rows(offsets: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "entity": [f"EQ-{o % 3}" for o in offsets],
            "timestamp": [datetime(2025, 5, 24, 13, 0, o % 60, tzinfo=UTC) for o in offsets],
            "kafka_topic": ["iot.equipment_metrics"] * len(offsets),
            "kafka_partition": [o % 2 for o in offsets],
            "kafka_offset": offsets,
        }
    )


def _positions(rows: pl.DataFrame) -> list[dict[str, object]]:
    # What Collector.store_bucket puts in the manifest.
    return (
        rows.group_by("kafka_topic", "kafka_partition")
        .agg(pl.col("kafka_offset").min().alias("first"), pl.col("kafka_offset").max().alias("last"))
        .sort("kafka_topic", "kafka_partition")
        .to_dicts()
    )


def test_encoded_file_is_sorted_and_carries_its_positions() -> None:
    rows = _rows([7, 3, 10, 4, 5])
    schema = dict(rows.schema)
    data = encode_rows(rows, ["entity", "timestamp"], schema, {"positions": _positions(rows)})
    verify(data, 5)
    table = pq.read_table(pa.BufferReader(data))
    assert table.column("entity").to_pylist() == sorted(table.column("entity").to_pylist())
    # The stored manifest compares equal to a fresh computation over the same rows (a replay) ...
    assert stored_positions(data) == _positions(_rows([3, 4, 5, 7, 10]))
    assert stored_positions(data) == [
        {"kafka_topic": "iot.equipment_metrics", "kafka_partition": 0, "first": 4, "last": 10},
        {"kafka_topic": "iot.equipment_metrics", "kafka_partition": 1, "first": 3, "last": 7},
    ]
    # ... and unequal to other rows of the same minute.
    assert stored_positions(data) != _positions(_rows([3, 4, 5, 7]))


def test_file_without_manifest_has_no_positions() -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"a": [1]}), sink)
    assert stored_positions(sink.getvalue().to_pybytes()) is None
