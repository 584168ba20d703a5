"""DLQ records as stored rows: what the collector writes under ``<domain>/_dlq/minute/`` beside the facts.

Every message sent to a domain's DLQ topic because of itself (rejected by decoding or by the anomaly
engine, or flagged and kept) is also filed as one row here, so the MinIO console and DuckDB show what
was rejected and why without consuming the DLQ topic. Offline-sweep findings (no source message) are
only on the topic and the alarm log.

A row is filed under the minute of its event time when the message was decoded, else of its Kafka
timestamp; its identity is its Kafka position, like a fact row's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from domains.base import PERSONAL_DATA_DETAIL, POSITION_KEY, PROVENANCE_SCHEMA, UTC_MICROS, epoch_micros

DLQ_DIR = "_dlq"

DLQ_ROW_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": UTC_MICROS,  # event time if the message was decoded, else its Kafka timestamp
    "domain": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
    "rejected": pl.Boolean(),  # True: not stored as a fact row; False: flagged and stored
    "entity_id": pl.String(),
    "detected_at": UTC_MICROS,
    "kafka_key": pl.Binary(),
    "raw": pl.Binary(),  # the message value as consumed (null if it carried personal data)
    "decoded": pl.String(),  # the decoded row as JSON when decoding got that far, else null
    **PROVENANCE_SCHEMA,
}
DLQ_DEDUP_KEY = POSITION_KEY
DLQ_SORT_KEY = ("reason", "timestamp", "kafka_partition", "kafka_offset", "item_index")


def dlq_root(domain: str) -> str:
    """Storage prefix of a domain's DLQ rows (``<domain>/_dlq``); minute/hour/day/week folders below it."""
    return f"{domain}/{DLQ_DIR}"


def dlq_rows(
    domain: str,
    records: Sequence[tuple[str, int, int, int, bytes | None, bytes | None]],
    reasons: Sequence[tuple[str, str, bool, str | None, str | None, int | None]],
    detected_at: datetime,
) -> pl.DataFrame:
    """Typed DLQ rows.

    ``records``: (topic, partition, offset, kafka timestamp ms, key, value) per message;
    ``reasons``: (reason, detail, rejected, entity id, decoded JSON, event time as epoch µs) for the
    same messages. A message rejected for carrying personal data keeps only its reason, detail and
    position. Times go in as integers and are cast once (converting Python datetimes one by one
    cost several µs a record).
    """
    if len(records) != len(reasons):
        raise ValueError("records and reasons differ in length")
    detected_us = epoch_micros(detected_at)
    kafka_us = [r[3] * 1000 if r[3] > 0 else detected_us for r in records]
    personal = [r[1].startswith(PERSONAL_DATA_DETAIL) for r in reasons]
    frame = pl.DataFrame(
        {
            "timestamp": [kts if event is None else event for (*_, event), kts in zip(reasons, kafka_us, strict=True)],
            "reason": [r[0] for r in reasons],
            "detail": [r[1] for r in reasons],
            "rejected": [r[2] for r in reasons],
            "entity_id": [None if p else r[3] for r, p in zip(reasons, personal, strict=True)],
            "kafka_key": [None if p else r[4] for r, p in zip(records, personal, strict=True)],
            "raw": [None if p else r[5] for r, p in zip(records, personal, strict=True)],
            "decoded": [None if p else r[4] for r, p in zip(reasons, personal, strict=True)],
            "kafka_topic": [r[0] for r in records],
            "kafka_partition": [r[1] for r in records],
            "kafka_offset": [r[2] for r in records],
            "kafka_timestamp": kafka_us,
        },
        schema_overrides={"timestamp": pl.Int64, "kafka_timestamp": pl.Int64, "entity_id": pl.String,
                          "kafka_key": pl.Binary, "raw": pl.Binary, "decoded": pl.String},  # fmt: skip
    )
    detected = pl.lit(detected_us, pl.Int64)
    same_for_all = {"domain": pl.lit(domain), "detected_at": detected, "item_index": pl.lit(0),
                    "collected_at": detected}  # fmt: skip
    return frame.with_columns(**same_for_all).select(list(DLQ_ROW_SCHEMA)).cast(DLQ_ROW_SCHEMA)  # type: ignore[arg-type]
