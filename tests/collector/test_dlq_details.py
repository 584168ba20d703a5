"""What the collector adds to the engine's DLQ records before sending and filing them (:func:`dlq_details`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl

from anomaly.records import DLQ_SCHEMA
from collector.app import dlq_details
from domains.base import UTC_MICROS, epoch_micros
from domains.decode import MessageBatch

TOPIC = "iot.energy_usage"
AT = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)


def test_each_record_gets_its_message_index_first_row_and_event_time() -> None:
    # Two partitions interleaved, offsets with gaps (compaction, transaction markers): no arithmetic on offsets.
    batch = MessageBatch(TOPIC, values=[b""] * 5, partitions=[1, 0, 1, 0, 1], offsets=[10, 3, 14, 9, 15],
                         timestamps_ms=[0] * 5)  # fmt: skip
    rows = pl.DataFrame(
        {
            "timestamp": [datetime(2026, 12, 5, 0, 59, s, tzinfo=UTC) for s in (1, 2, 3, 4, 5, 6)],
            "meter": ["A", "B", "C", "C2", "D", "E"],
            "kafka_topic": [TOPIC] * 6,
            "kafka_partition": [1, 0, 1, 1, 0, 1],
            "kafka_offset": [10, 3, 14, 14, 9, 15],
            "item_index": [0, 0, 1, 0, 0, 0],  # offset 14 has two rows, its first is item 0 ("C2")
        },
        schema_overrides={"timestamp": UTC_MICROS, "kafka_partition": pl.Int32, "item_index": pl.Int32},
    )
    dlq = pl.DataFrame(
        {"domain": ["energy_usage"] * 2, "kafka_topic": [TOPIC] * 2, "kafka_partition": [1, 0], "kafka_offset": [14, 9],
         "reason": ["duplicate", "threshold_missing"], "detail": ["d1", "d2"], "rejected": [True, False],
         "entity_id": ["C", "D"], "detected_at": [AT, AT]},
        schema=DLQ_SCHEMA,
    )  # fmt: skip

    details = dlq_details(rows, dlq, batch)

    assert details.get_column("_message").to_list() == [2, 3]
    assert details.get_column("reason").to_list() == ["duplicate", "threshold_missing"]
    assert details.get_column("_event").to_list() == [epoch_micros(t) for t in rows["timestamp"][3:5]]
    assert [json.loads(d)["meter"] for d in details.get_column("_decoded")] == ["C2", "D"]
