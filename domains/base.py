"""What a domain is: its topics, Avro schema, flattening rule, keys and record-level checks.

Each of the six domain modules builds one :class:`Domain`; :mod:`domains.decode` turns a batch of
Kafka message values into that domain's typed, flattened rows using only this description.
Adding a seventh domain means adding one module and one ``.avsc`` file.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, reduce
from typing import Any

import fastavro
import polars as pl
import pyarrow as pa

from domains import avro

DAY_MS = 24 * 3600 * 1000

# DLQ reasons (SPEC §2.2). Decoding decides the ones a message carries by itself; the anomaly
# engine adds the ones that need dimension tables or state.
SCHEMA_ERROR = "schema_error"
INVALID_ENUM = "invalid_enum"
UNIT_VIOLATION = "unit_violation"
UNIT_MISMATCH = "unit_mismatch"

UTC_MICROS = pl.Datetime("us", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_micros(at: datetime) -> int:
    """Microseconds since the epoch of ``at`` (naive: UTC), exactly; a literal of it needs no Series."""
    return ((at if at.tzinfo else at.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


# Start of the detail of a message rejected because it carries personal data (a raw IP address):
# such a message is never stored, not even as a DLQ row (only its reason and position are).
PERSONAL_DATA_DETAIL = "raw IP address in "

# Provenance columns carried by every stored row (SPEC §2.1).
PROVENANCE_SCHEMA: dict[str, pl.DataType] = {
    "item_index": pl.Int32(),
    "kafka_topic": pl.String(),
    "kafka_partition": pl.Int32(),
    "kafka_offset": pl.Int64(),
    "kafka_timestamp": UTC_MICROS,
    "collected_at": UTC_MICROS,
}
# Unique identity of a stored row: its Kafka position plus its index inside an exploded array.
POSITION_KEY = ("kafka_topic", "kafka_partition", "kafka_offset", "item_index")


@dataclass(frozen=True)
class TopicSpec:
    """A Kafka topic as SPEC §2 configures it (replication is chosen at bootstrap)."""

    name: str
    partitions: int
    retention_days: int
    compression: str | None = None

    def config(self) -> dict[str, str]:
        """Topic-level configs for CreateTopics."""
        configs = {"retention.ms": str(self.retention_days * DAY_MS)}
        if self.compression:
            configs["compression.type"] = self.compression
        return configs


@dataclass(frozen=True)
class RecordCheck:
    """A rule on flattened rows: a row where ``fails`` is true rejects its whole message."""

    reason: str
    fails: pl.Expr
    detail: pl.Expr


@dataclass(frozen=True)
class Domain:
    """Everything the pipeline needs to know about one IoT domain."""

    name: str
    topic: TopicSpec
    dlq_topic: TopicSpec
    schema_file: str
    schema_version: str
    schema_id: int  # id of the repo schema in Confluent framing when no registry is configured
    entity_key: str
    dedup_key: tuple[str, ...]
    explode: str | None = None  # array field exploded into one row per element
    flatten: tuple[str, ...] = ()  # struct fields flattened into <field>_<sub> columns
    timestamp_fields: tuple[str, ...] = ("timestamp", "ingestion_timestamp")
    checks: tuple[RecordCheck, ...] = ()
    retention_days: int = 365
    extra_dlq_reasons: tuple[str, ...] = field(default=())

    @cached_property
    def schema(self) -> dict[str, Any]:
        """The domain's Avro schema as JSON."""
        return avro.load_schema(self.schema_file)

    @cached_property
    def schema_json(self) -> str:
        """The schema as a compact JSON string (for containers and registries)."""
        return json.dumps(self.schema, separators=(",", ":"))

    @cached_property
    def parsed_schema(self) -> Any:
        """The schema parsed by fastavro."""
        return fastavro.parse_schema(self.schema)

    @cached_property
    def nested_schema(self) -> dict[str, pl.DataType]:
        """The polars schema of a decoded, not yet flattened message."""
        return avro.polars_schema(self.schema)

    @cached_property
    def source_paths(self) -> dict[str, str]:
        """Flattened column name → field path in the message (for error details)."""
        paths: dict[str, str] = {}
        for name, dtype in self.nested_schema.items():
            if name == self.explode:
                assert isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
                for sub in dtype.inner.fields:
                    paths[sub.name] = f"{name}[].{sub.name}"
            elif name in self.flatten:
                assert isinstance(dtype, pl.Struct)
                for sub in dtype.fields:
                    paths[f"{name}_{sub.name}"] = f"{name}.{sub.name}"
            else:
                paths[name] = name
        return paths

    @cached_property
    def nullable_columns(self) -> frozenset[str]:
        """Flattened columns that may be null (Avro unions with null)."""
        nullable: set[str] = set()
        for f in self.schema["fields"]:
            if isinstance(f["type"], list) and "null" in f["type"]:
                nullable.add(f["name"])
        return frozenset(nullable)

    @cached_property
    def flat_schema(self) -> dict[str, pl.DataType]:
        """Typed schema of one stored row: message fields, flattened, then provenance."""
        out: dict[str, pl.DataType] = {}
        for name, dtype in self.nested_schema.items():
            if name == self.explode:
                assert isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
                out.update({sub.name: sub.dtype for sub in dtype.inner.fields})  # type: ignore[misc]
            elif name in self.flatten:
                assert isinstance(dtype, pl.Struct)
                out.update({f"{name}_{sub.name}": sub.dtype for sub in dtype.fields})  # type: ignore[misc]
            else:
                out[name] = dtype
        for ts in self.timestamp_fields:
            out[ts] = UTC_MICROS
        out.update(PROVENANCE_SCHEMA)
        return out

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        """The stored row schema as Arrow (what the Parquet files hold)."""
        return pl.DataFrame(schema=self.flat_schema).to_arrow().schema

    @property
    def sort_key(self) -> tuple[str, ...]:
        """Row order inside files: entity, then event time, then position."""
        return (self.entity_key, "timestamp", "kafka_partition", "kafka_offset", "item_index")


def finite(column: str, path: str) -> RecordCheck:
    """schema_error when a measured value is NaN or infinite (Avro doubles can carry them; they would
    turn every sum -- energy cost, carbon, statistics -- into NaN or infinity)."""
    return RecordCheck(
        reason=SCHEMA_ERROR,
        fails=pl.col(column).is_not_null() & ~pl.col(column).is_finite(),
        detail=pl.format(f"{path} is not a finite number ({{}})", pl.col(column)),
    )


def one_of(column: str, allowed: frozenset[str] | tuple[str, ...], reason: str, path: str) -> RecordCheck:
    """A check that ``column`` holds one of ``allowed`` (nulls are left to the required-field check)."""
    choices = "|".join(sorted(allowed))
    value = pl.col(column)
    # A few comparisons of short strings cost less than a hash lookup per row; same result.
    few = 0 < len(allowed) <= 8
    listed = reduce(operator.or_, [value == a for a in allowed]) if few else value.is_in(list(allowed))
    return RecordCheck(
        reason=reason,
        fails=value.is_not_null() & ~listed,
        detail=pl.format(f"{path} '{{}}' is not one of {choices}", pl.col(column)),
    )


def unit_catalog_check(kind_column: str, units: dict[str, tuple[str, ...]], path: str) -> RecordCheck:
    """unit_mismatch when ``unit`` is not a known unit for a known ``kind_column`` value."""
    pairs = [f"{kind}|{unit}" for kind, allowed in units.items() for unit in allowed]
    pair = pl.concat_str([pl.col(kind_column), pl.lit("|"), pl.col("unit")])
    expected = pl.col(kind_column).replace_strict(
        {k: "|".join(v) for k, v in units.items()}, default=None, return_dtype=pl.String
    )
    return RecordCheck(
        reason=UNIT_MISMATCH,
        fails=pl.col(kind_column).is_in(list(units)) & pl.col("unit").is_not_null() & ~pair.is_in(pairs),
        detail=pl.format(
            f"unit '{{}}' for {path} '{{}}', expected {{}}", pl.col("unit"), pl.col(kind_column), expected
        ),
    )
