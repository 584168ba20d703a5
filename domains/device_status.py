"""device_status: one row per device heartbeat; ``status.*`` flattened; only the IP hash is kept.

A raw IP address must never be stored (SPEC §2.1). A message that carries one in any of its text
fields -- ``ip_address_hash`` holding the address itself, or an address in ``device_id``,
``location``, ``error_code`` ... -- is rejected as ``schema_error`` before anything downstream (the
anomaly engine's state, alarms, the Parquet files) sees it. That check comes first, so the DLQ
detail names the field but never echoes the address. Fields outside the schema are dropped by
decoding and never stored.
"""

from __future__ import annotations

import polars as pl

from domains.base import INVALID_ENUM, PERSONAL_DATA_DETAIL, SCHEMA_ERROR, Domain, RecordCheck, TopicSpec, one_of

DEVICE_TYPES = ("env_sensor", "equipment_sensor", "robot", "gateway", "plc", "camera")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# A dotted quad anywhere in the text (also inside "::ffff:a.b.c.d", "a.b.c.d:port", "gw a.b.c.d").
_IPV4 = rf"(?:^|[^0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?:[^0-9]|$)"
_H16 = r"[0-9A-Fa-f]{1,4}"
# An IPv6 address anywhere in the text: the full eight groups, or a "::"-compressed form.
_IPV6 = (
    rf"(?:^|[^0-9A-Za-z:])(?:(?:{_H16}:){{7}}{_H16}"
    rf"|(?:{_H16}(?::{_H16}){{0,6}})?::(?:{_H16}(?::{_H16}){{0,6}})?)(?:[^0-9A-Za-z:]|$)"
)
# The whole value is colon-separated hex groups (e.g. "fe80:0:0:0:1:2:3:4" or "1:2:3").
_IPV6_WHOLE = r"^[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}$"
RAW_IP = rf"{_IPV4}|{_IPV6}"

# Text fields of a flattened device_status row (timestamps are checked as times elsewhere).
_TEXT_FIELDS = ("device_id", "device_type", "location", "ip_address_hash", "error_code", "schema_version")


def _holds_raw_ip() -> pl.Expr:
    anywhere = [pl.col(c).str.contains(RAW_IP).fill_null(False) for c in _TEXT_FIELDS]
    return pl.any_horizontal(*anywhere, pl.col("ip_address_hash").str.contains(_IPV6_WHOLE).fill_null(False))


def _fields_with_raw_ip() -> pl.Expr:
    names = [pl.when(pl.col(c).str.contains(RAW_IP)).then(pl.lit(c)) for c in _TEXT_FIELDS]
    return pl.concat_str(names, separator=", ", ignore_nulls=True)


DOMAIN = Domain(
    name="device_status",
    topic=TopicSpec("iot.device_status", partitions=8, retention_days=7, compression="zstd"),
    dlq_topic=TopicSpec("iot.device_status.dlq", partitions=3, retention_days=30),
    schema_file="device_status.v2.0.avsc",
    schema_version="v2.0",
    schema_id=106,
    entity_key="device_id",
    dedup_key=("device_id", "timestamp"),
    flatten=("status",),
    timestamp_fields=("timestamp", "status_last_success_at", "ingestion_timestamp"),
    retention_days=90,
    checks=(
        RecordCheck(
            reason=SCHEMA_ERROR,
            fails=_holds_raw_ip(),
            detail=pl.format(PERSONAL_DATA_DETAIL + "{} (only ip_address_hash, a hash, may be sent)",
                             _fields_with_raw_ip().replace("", "ip_address_hash")),  # fmt: skip
        ),
        one_of("device_type", DEVICE_TYPES, INVALID_ENUM, "device_type"),
        RecordCheck(
            reason=SCHEMA_ERROR,
            fails=pl.col("status_latency_ms") < 0,
            detail=pl.format("status.latency_ms {} is negative", pl.col("status_latency_ms")),
        ),
    ),
)
