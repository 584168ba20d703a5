"""Batch decoding: Kafka message values → one typed, flattened table per domain + rejected messages.

The fast path runs no per-record Python for a well-formed batch: raw and Confluent-framed Avro are
decoded in one ``polars.read_avro`` call over the batch wrapped as an Avro container block (see
:mod:`domains.avro`), JSON in one ``polars.read_ndjson`` call. Only when a group of messages fails
to decode as a whole does the decoder fall back to per-record decoding, which isolates the bad
records. Validation, flattening and typing are polars expressions over the whole batch.

What a batch costs beyond the native decode, in the order it happens (see ``Benchmarks`` in the
README): a batch that looks like raw Avro is decoded as one block straight away (its first field
tells whether per-message format detection would have agreed); timestamps are parsed once per
message, before any explode, in one Arrow ISO-8601 cast when every value has one of the two fixed
layouts (else the polars parsers); flattening, typing, provenance and all the record checks run as
one lazy plan with one ``collect`` that also says whether any row fails; only then are failing rows
ranked to name each rejected message's reason and detail.

Every input message ends up exactly once either in the rows (one or more rows) or in
``rejected`` with one reason and a human-readable detail.
"""

from __future__ import annotations

import enum
import io
import operator
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import fastavro
import fastavro.validation
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from domains import avro
from domains.base import POSITION_KEY, SCHEMA_ERROR, UTC_MICROS, Domain, epoch_micros
from domains.registry import SchemaResolver

_ROW = "_row"
_CONFLUENT_HEADER = 5


class WireFormat(enum.StrEnum):
    """How message values are encoded."""

    AUTO = "auto"
    AVRO = "avro"  # schemaless Avro with the domain's schema
    AVRO_CONFLUENT = "avro-confluent"  # magic byte 0 + 4-byte schema id + Avro
    JSON = "json"


@dataclass(frozen=True)
class MessageBatch:
    """Values and Kafka positions of consumed messages from one topic, in consumption order."""

    topic: str
    values: Sequence[bytes | None]
    partitions: Sequence[int]
    offsets: Sequence[int]
    timestamps_ms: Sequence[int]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Rejected:
    """A message that produced no rows: its index in the batch, DLQ reason and detail."""

    index: int
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    """Result of decoding one batch: typed rows (``Domain.flat_schema``) and rejected messages."""

    domain: Domain
    rows: pl.DataFrame
    rejected: list[Rejected] = field(default_factory=list)


class BatchDecoder:
    """Decodes batches of one domain's topic; the wire format is detected per message or pinned."""

    def __init__(
        self,
        domain: Domain,
        resolver: SchemaResolver | None = None,
        wire_format: WireFormat = WireFormat.AUTO,
    ) -> None:
        self.domain = domain
        self.resolver = resolver or SchemaResolver([domain])
        self.wire_format = wire_format
        self._strict_frames = 0
        self._whole_block_failed = False

    def decode(self, batch: MessageBatch, collected_at: datetime) -> DecodedBatch:
        """Decode, validate and flatten ``batch``; ``collected_at`` is stamped on every row."""
        rejected: list[Rejected] = []
        frames: list[pl.DataFrame] = []
        self._strict_frames = 0
        self._whole_block_failed = False
        whole = self._raw_avro_batch(batch)
        if whole is not None:
            frames.append(whole)
        else:
            for fmt, indices in self._group_by_format(batch, rejected):
                frames.extend(self._decode_group(fmt, batch, indices, rejected))
        nested = _concat(frames, self.domain)
        # Avro decoded natively cannot hold nulls outside unions: skip the null checks then.
        check_nulls = self._strict_frames < len(frames)
        # Row i is message i when nothing was set aside: no gather of the Kafka positions needed.
        in_batch_order = not rejected and len(frames) == 1
        rows, invalid = _typed_rows(self.domain, nested, batch, collected_at, check_nulls, in_batch_order)
        rejected.extend(invalid)
        rejected.sort(key=lambda r: r.index)
        return DecodedBatch(domain=self.domain, rows=rows, rejected=rejected)

    # -- format detection -------------------------------------------------------------------

    def _raw_avro_batch(self, batch: MessageBatch) -> pl.DataFrame | None:
        """The whole batch decoded as raw Avro, when that is what detection would have chosen.

        Detection sets apart a value starting with 0x00 (Confluent) or with a JSON start. Instead of
        looking at every first byte first, the batch is decoded as one block, and the decoded first
        field tells the first bytes: when it is a string, a value starts with the Avro long of its
        length, a byte of 2 * length below 64 (a negative length, an odd byte, fails the block). So
        a value starts with 0x00, "\\n" or " " exactly when that length is 0, 5 or 16. ``None``
        (then detection and decoding as usual) when the block fails or such a length is there.
        """
        values = batch.values
        text_first = self.domain.schema["fields"][0]["type"] == "string"
        if self.wire_format is not WireFormat.AUTO or not text_first or not values or not values[0]:
            return None
        if values[0][0] == 0 or values[0][0] in _JSON_STARTS:  # type: ignore[index]
            return None
        inline = _shape(self.domain).inline
        frame = avro.decode_block(self.domain.schema_json, values, 0, _ROW, inline)  # type: ignore[arg-type]
        if frame is None:
            self._whole_block_failed = True  # detection will find raw Avro again: do not retry the block
            return None
        first = pl.col(self.domain.schema["fields"][0]["name"]).str.len_bytes()
        if frame.select(first.is_in(_LENGTHS_OF_SET_APART_STARTS).any()).item():
            return None
        self._strict_frames += 1
        return frame

    def _group_by_format(
        self, batch: MessageBatch, rejected: list[Rejected]
    ) -> list[tuple[WireFormat, list[int] | None]]:
        """Split the batch by wire format; ``None`` indices mean 'the whole batch'."""
        n = len(batch)
        if n == 0:
            return []
        if self.wire_format is not WireFormat.AUTO and all(batch.values):
            return [(self.wire_format, None)]
        uniform = _uniform_format(batch.values)
        if uniform is not None:
            return [(uniform, None)]
        # Mixed or with empty values: sort by first byte. 0x00 cannot start raw Avro of our
        # schemas (an empty timestamp) nor JSON; "{" cannot start raw Avro (a negative length).
        groups: dict[WireFormat, list[int]] = {}
        for i, value in enumerate(batch.values):
            if not value:
                rejected.append(Rejected(i, SCHEMA_ERROR, "empty message value"))
                continue
            if self.wire_format is not WireFormat.AUTO:
                kind = self.wire_format
            elif value[0] == 0:
                kind = WireFormat.AVRO_CONFLUENT
            elif value[0] in _JSON_STARTS:
                kind = WireFormat.JSON
            else:
                kind = WireFormat.AVRO
            groups.setdefault(kind, []).append(i)
        return [(kind, groups[kind]) for kind in sorted(groups)]

    # -- decoding -----------------------------------------------------------------------------

    def _decode_group(
        self, fmt: WireFormat, batch: MessageBatch, indices: list[int] | None, rejected: list[Rejected]
    ) -> list[pl.DataFrame]:
        # Empty values were set aside by the grouping, so every value here is bytes.
        chosen = batch.values if indices is None else [batch.values[i] for i in indices]
        values: list[bytes] = list(chosen)  # type: ignore[arg-type]
        rows: list[int] | range = range(len(batch)) if indices is None else indices
        if fmt is WireFormat.JSON:
            return [self._decode_json(values, rows, rejected)]
        if fmt is WireFormat.AVRO:
            whole_failed = indices is None and self._whole_block_failed
            frame = None if whole_failed else self._decode_block(values, rows, 0)
            if frame is not None:
                return [frame]
            return [self._decode_avro_each(values, rows, self.domain.parsed_schema, 0, rejected)]
        return self._decode_confluent(values, rows, rejected)

    def _decode_confluent(
        self, values: list[bytes], rows: Sequence[int], rejected: list[Rejected]
    ) -> list[pl.DataFrame]:
        by_id: dict[bytes, list[int]] = {}
        for pos, value in enumerate(values):
            by_id.setdefault(value[1:_CONFLUENT_HEADER], []).append(pos)
        frames: list[pl.DataFrame] = []
        for raw_id, positions in by_id.items():
            group = values if len(by_id) == 1 else [values[p] for p in positions]
            group_rows = rows if len(by_id) == 1 else [rows[p] for p in positions]
            if len(raw_id) < 4:
                rejected.extend(Rejected(r, SCHEMA_ERROR, "Confluent frame shorter than 5 bytes") for r in group_rows)
                continue
            schema_id = struct.unpack(">I", raw_id)[0]
            writer = self.resolver.resolve(schema_id)
            if writer is None and self.resolver.uses_registry:
                detail = f"schema id {schema_id} is not in the schema registry"
                rejected.extend(Rejected(r, SCHEMA_ERROR, detail) for r in group_rows)
                continue
            if writer is None or writer.schema_json == self.domain.schema_json:
                # Unknown id without a registry: try the domain's own schema; validation decides.
                frame = self._decode_block(group, group_rows, _CONFLUENT_HEADER)
                if frame is not None:
                    frames.append(frame)
                    continue
                writer_parsed = self.domain.parsed_schema
            else:
                writer_parsed = writer.parsed  # another version: per-record Avro schema resolution
            frames.append(self._decode_avro_each(group, group_rows, writer_parsed, _CONFLUENT_HEADER, rejected))
        return frames

    def _decode_block(self, values: list[bytes], rows: Sequence[int], header_bytes: int) -> pl.DataFrame | None:
        """The fast path: all values in one native decode, with their batch positions as ``_row``."""
        numbered = isinstance(rows, range) and rows.start == 0 and rows.step == 1
        frame = avro.decode_block(
            self.domain.schema_json, values, header_bytes, _ROW if numbered else None, _shape(self.domain).inline
        )
        if frame is None:
            return None
        self._strict_frames += 1
        return frame if numbered else frame.with_columns(_row_column(rows))

    def _decode_avro_each(
        self, values: list[bytes], rows: Sequence[int], writer: Any, skip: int, rejected: list[Rejected]
    ) -> pl.DataFrame:
        """Per-record fallback: decode each value on its own to isolate the corrupt ones."""
        records: list[dict[str, Any]] = []
        good_rows: list[int] = []
        reader = None if writer is self.domain.parsed_schema else self.domain.parsed_schema
        for row, value in zip(rows, values, strict=True):
            try:
                records.append(avro.decode_one(value[skip:], writer, reader))
                good_rows.append(row)
            except Exception as exc:  # noqa: BLE001 - any decode failure is a bad record
                rejected.append(Rejected(row, SCHEMA_ERROR, f"Avro decode failed: {_describe(exc)}"))
        return self._frame_from_records(records, good_rows)

    def _decode_json(self, values: list[bytes], rows: Sequence[int], rejected: list[Rejected]) -> pl.DataFrame:
        blob = b"\n".join(values)
        if blob.count(b"\n") == len(values) - 1:  # no value spans lines: one value per NDJSON line
            try:
                frame = pl.read_ndjson(io.BytesIO(blob), schema=self.domain.nested_schema)
                if frame.height == len(values):
                    return _widen(frame.with_columns(_row_column(rows)), self.domain)
            except Exception:  # noqa: BLE001,S110 - the per-record path below names the culprit
                pass
        records: list[dict[str, Any]] = []
        good_rows: list[int] = []
        for row, value in zip(rows, values, strict=True):
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                rejected.append(Rejected(row, SCHEMA_ERROR, f"invalid JSON: {exc}"))
                continue
            if not isinstance(record, dict):
                rejected.append(Rejected(row, SCHEMA_ERROR, "JSON value is not an object"))
                continue
            problem = _schema_problem(record, self.domain)
            if problem:
                rejected.append(Rejected(row, SCHEMA_ERROR, problem))
                continue
            records.append(record)
            good_rows.append(row)
        return self._frame_from_records(records, good_rows)

    def _frame_from_records(self, records: list[dict[str, Any]], rows: Sequence[int]) -> pl.DataFrame:
        schema = self.domain.nested_schema
        trimmed = [{k: r.get(k) for k in schema} for r in records]
        frame = pl.from_dicts(trimmed, schema=schema, strict=False) if trimmed else pl.DataFrame(schema=schema)
        return _widen(frame.with_columns(_row_column(rows)), self.domain)


_JSON_STARTS = frozenset(b"{ \t\r\n")
# Lengths of a leading Avro string whose encoding starts with 0x00, "\n" or " " (bytes 2 * length).
_LENGTHS_OF_SET_APART_STARTS = [0, 5, 16]


def _uniform_format(values: Sequence[bytes | None]) -> WireFormat | None:
    """The format of every value when they visibly share one (cheap: first bytes only)."""
    try:
        first_bytes = set(map(operator.itemgetter(0), values))  # type: ignore[arg-type]
    except (IndexError, TypeError):  # an empty or null value: let the slow path sort it out
        return None
    if first_bytes == {0}:
        return WireFormat.AVRO_CONFLUENT
    if first_bytes <= _JSON_STARTS:
        return WireFormat.JSON
    if 0 not in first_bytes and not first_bytes & _JSON_STARTS:
        return WireFormat.AVRO
    return None


def _row_column(rows: Sequence[int]) -> pl.Series:
    if isinstance(rows, range) and rows.step == 1:
        return pl.int_range(rows.start, rows.stop, dtype=pl.Int64, eager=True).alias(_ROW)
    return pl.Series(_ROW, rows, dtype=pl.Int64)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _schema_problem(record: dict[str, Any], domain: Domain) -> str | None:
    """Why a JSON record does not match the Avro schema (None if it does)."""
    try:
        fastavro.validation.validate(record, domain.parsed_schema, raise_errors=True)
    except fastavro.validation.ValidationError as exc:
        return f"does not match schema {domain.schema_version}: {_describe(exc)}"
    except Exception as exc:  # noqa: BLE001 - odd values (e.g. NaN keys) are schema errors too
        return f"does not match schema {domain.schema_version}: {_describe(exc)}"
    return None


@dataclass(frozen=True)
class _Shape:
    """Decoded messages before flattening: the nested schema, with the flattened records inlined.

    The fields of a flattened struct that is a plain Avro record are read by the native Avro decode
    directly as ``<name>_<sub>`` columns (no struct to build, then to take apart); frames decoded
    otherwise are widened to the same shape.
    """

    inline: tuple[str, ...]
    schema: dict[str, pl.DataType]
    widen: tuple[pl.Expr, ...]  # from a nested frame to this shape


_SHAPES: dict[int, tuple[Domain, _Shape]] = {}


def _shape(domain: Domain) -> _Shape:
    """The shape of ``domain``'s decoded messages, built on first use."""
    cached = _SHAPES.get(id(domain))
    if cached is not None and cached[0] is domain:
        return cached[1]
    avro_types = {f["name"]: f["type"] for f in domain.schema["fields"]}
    inline = tuple(
        name
        for name in domain.flatten
        if isinstance(avro_types[name], dict) and avro_types[name].get("type") == "record"
    )
    schema: dict[str, pl.DataType] = {}
    widen: list[pl.Expr] = []
    for name, dtype in domain.nested_schema.items():
        if name in inline:
            assert isinstance(dtype, pl.Struct)
            for sub in dtype.fields:
                schema[f"{name}_{sub.name}"] = sub.dtype  # type: ignore[assignment]
                widen.append(pl.col(name).struct.field(sub.name).alias(f"{name}_{sub.name}"))
        else:
            schema[name] = dtype
            widen.append(pl.col(name))
    shape = _Shape(inline, schema, tuple(widen))
    _SHAPES[id(domain)] = (domain, shape)
    return shape


def _widen(frame: pl.DataFrame, domain: Domain) -> pl.DataFrame:
    """A nested frame (with ``_row``) in the shape of natively decoded ones."""
    shape = _shape(domain)
    return frame.select(*shape.widen, pl.col(_ROW)) if shape.inline else frame


def _concat(frames: list[pl.DataFrame], domain: Domain) -> pl.DataFrame:
    schema = {**_shape(domain).schema, _ROW: pl.Int64()}
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema=schema)
    if len(frames) == 1:
        frame = frames[0]
        return frame if set(frame.columns) == set(schema) else frame.select(list(schema))
    return pl.concat([f.select(list(schema)).cast(schema) for f in frames], how="vertical")  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Flattening:
    """A domain's explode and struct flattening as expressions, built once."""

    has_items: pl.Expr | None  # rows kept before the explode (None: nothing explodes)
    item_index: pl.Expr
    struct_fields: tuple[pl.Expr, ...]  # <field>_<sub> of every flattened struct


def _flattening(domain: Domain) -> _Flattening:
    if domain.explode:
        items = pl.col(domain.explode)
        has_items: pl.Expr | None = items.list.len() > 0
        item_index = pl.int_ranges(0, items.list.len(), dtype=pl.Int32).alias("item_index")
    else:
        has_items, item_index = None, pl.lit(0, pl.Int32).alias("item_index")
    fields: list[pl.Expr] = []
    for name in _structs_left(domain):
        dtype = domain.nested_schema[name]
        assert isinstance(dtype, pl.Struct)
        fields += [pl.col(name).struct.field(sub.name).alias(f"{name}_{sub.name}") for sub in dtype.fields]
    return _Flattening(has_items, item_index, tuple(fields))


def _structs_left(domain: Domain) -> tuple[str, ...]:
    """Flattened structs that decoding did not inline (a struct that may be null, for instance)."""
    inline = _shape(domain).inline
    return tuple(name for name in domain.flatten if name not in inline)


def _flatten(domain: Domain, steps: _Flattening, frame: pl.LazyFrame) -> pl.LazyFrame:
    """Explode the domain's array (one row per element, ``item_index``) and flatten its structs."""
    if steps.has_items is not None:
        assert domain.explode
        frame = (
            frame.filter(steps.has_items)
            .with_columns(steps.item_index)
            .explode([domain.explode, "item_index"])
            .unnest(domain.explode)
        )
    else:
        frame = frame.with_columns(steps.item_index)
    if steps.struct_fields:
        frame = frame.with_columns(steps.struct_fields).drop(_structs_left(domain))
    return frame


# Fixed-width layouts parse ~4x faster than the general ISO-8601 parser; try them first.
_FIXED_ISO_FORMATS = {20: "%Y-%m-%dT%H:%M:%SZ", 24: "%Y-%m-%dT%H:%M:%S.%3fZ"}
_ARROW_UTC_MICROS = pa.timestamp("us", "UTC")
_BAD = "_bad"
# Kafka positions of the decoded messages, carried as columns through the explode.
_PARTITION, _OFFSET, _TIMESTAMP_MS = "__kafka_partition", "__kafka_offset", "__kafka_timestamp_ms"

Rule = tuple[str, pl.Expr, pl.Expr]  # (reason, fails, detail)
# The plans here are short and already lean (every column is used): optimizing them costs more
# (~0.5 ms a batch) than it saves. Types are still coerced and checked.
_AS_WRITTEN = pl.QueryOptFlags.none()


def _ts(column: str) -> str:
    """Name of the parsed twin of timestamp column ``column`` while rows are checked."""
    return f"__ts_{column}"


def _parse_fixed_utc(texts: Sequence[pl.Series]) -> list[pl.Series] | None:
    """Parse columns of fixed-layout times in one Arrow cast; ``None`` if a value may not fit.

    Arrow's ISO-8601 cast accepts more than the fixed layouts (other zones and precisions, ``hh:mm``),
    but among strings of 20 or 24 bytes ending in ``Z`` only ``YYYY-MM-DD[T ]hh:mm:ss[.fff]Z``, which
    :func:`parse_utc` accepts with the same value. A value the cast refuses (an impossible date, a
    leap second) sends the columns to :func:`parse_utc`.
    """
    array = pa.chunked_array([t.to_arrow() for t in texts], pa.large_string())
    lengths = pc.binary_length(array)
    fits = pc.and_(pc.or_(pc.equal(lengths, 20), pc.equal(lengths, 24)), pc.ends_with(array, "Z"))
    if not pc.all(fits).as_py():
        return None
    try:
        parsed = array.cast(_ARROW_UTC_MICROS)
    except pa.ArrowInvalid:
        return None
    out, start = [], 0
    for t in texts:
        out.append(pl.Series(t.name, parsed.slice(start, t.len())))
        start += t.len()
    return out


def _parse_timestamps(texts: pl.Series) -> pl.Series:
    """Parse one timestamp column: one Arrow cast when the layout allows, else :func:`parse_utc`.

    The polars path parses with the fixed layout of the first value, then retries the misses.
    """
    fast = _parse_fixed_utc([texts])
    if fast is not None:
        return fast[0]
    first = texts.drop_nulls().head(1).to_list()
    layout = _FIXED_ISO_FORMATS.get(len(first[0]) if first else 0, _FIXED_ISO_FORMATS[20])
    parsed = texts.str.to_datetime(layout, time_unit="us", time_zone="UTC", strict=False)
    if parsed.null_count() != texts.null_count():
        parsed = parse_utc(texts, parsed)
    return parsed


def _parse_all(texts: list[pl.Series]) -> list[pl.Series]:
    """Parse several timestamp columns, in one Arrow cast when all of them allow it."""
    if not texts:
        return []
    return _parse_fixed_utc(texts) or [_parse_timestamps(t) for t in texts]


@dataclass(frozen=True)
class _RowPlan:
    """The parts of a domain's flattening, typing and checks that do not depend on the batch."""

    message_ts: tuple[tuple[str, str, str], ...]  # (column, top field, sub field or "") parsed per message
    item_ts: tuple[str, ...]  # timestamp columns inside the exploded array, parsed per row
    null_rules: tuple[Rule, ...]
    ts_rules: dict[str, Rule]
    check_rules: tuple[Rule, ...]
    columns: tuple[tuple[str, pl.Expr | None], ...]  # final typed columns; None: a per-batch literal
    flattening: _Flattening


_PLANS: dict[int, tuple[Domain, _RowPlan]] = {}


def _plan(domain: Domain) -> _RowPlan:
    """The row plan of ``domain``, built on first use."""
    cached = _PLANS.get(id(domain))
    if cached is not None and cached[0] is domain:
        return cached[1]
    message_ts: list[tuple[str, str, str]] = []
    item_ts: list[str] = []
    for ts in domain.timestamp_fields:
        path = domain.source_paths[ts]
        if "[]" in path:
            item_ts.append(ts)
        else:
            top, _, sub = path.partition(".")
            inlined = top in _shape(domain).inline
            message_ts.append((ts, f"{top}_{sub}", "") if inlined else (ts, top, sub))
    # In priority order: missing fields, then times, then domain rules.
    null_rules = tuple(
        (SCHEMA_ERROR, pl.col(column).is_null(), pl.lit(f"missing or null field '{path}'"))
        for column, path in domain.source_paths.items()
        if column not in domain.nullable_columns
    )
    ts_rules = {
        ts: (
            SCHEMA_ERROR,
            pl.col(ts).is_not_null() & pl.col(_ts(ts)).is_null(),
            pl.format(f"{domain.source_paths[ts]} '{{}}' is not an ISO-8601 time", pl.col(ts)),
        )
        for ts in domain.timestamp_fields
    }
    for check in domain.checks:
        # The checks see the typed row, with timestamps still as text: a check on a time would not.
        if set(check.fails.meta.root_names()) & set(domain.timestamp_fields):
            raise ValueError(f"{domain.name}: record checks cannot read timestamp columns")
    check_rules = tuple((c.reason, c.fails.fill_null(False), c.detail) for c in domain.checks)
    inputs: dict[str, pl.Expr | None] = {
        **{c: pl.col(c) for c in domain.flat_schema},
        **{ts: pl.col(_ts(ts)) for ts in domain.timestamp_fields},
        "kafka_topic": None,
        "kafka_partition": pl.col(_PARTITION),
        "kafka_offset": pl.col(_OFFSET),
        "kafka_timestamp": (pl.col(_TIMESTAMP_MS) * 1000).cast(UTC_MICROS),
        "collected_at": None,
    }
    columns = tuple(
        (c, None if inputs[c] is None else inputs[c].cast(t).alias(c))  # type: ignore[union-attr]
        for c, t in domain.flat_schema.items()
    )
    plan = _RowPlan(
        tuple(message_ts), tuple(item_ts), null_rules, ts_rules, check_rules, columns, _flattening(domain)
    )
    _PLANS[id(domain)] = (domain, plan)
    return plan


def _grew_nulls(names: Sequence[str], texts: list[pl.Series], parsed: list[pl.Series]) -> set[str]:
    """Timestamp columns where parsing turned a value into null: only they can fail the time rule."""
    return {ts for ts, t, p in zip(names, texts, parsed, strict=True) if p.null_count() != t.null_count()}


def _provenance(batch: MessageBatch, rows: pl.Series | None) -> list[pl.Series]:
    """Kafka partition, offset and timestamp of each message (of message ``rows`` when given)."""
    columns = [
        pl.Series(_PARTITION, batch.partitions, dtype=pl.Int32),
        pl.Series(_OFFSET, batch.offsets, dtype=pl.Int64),
        pl.Series(_TIMESTAMP_MS, batch.timestamps_ms, dtype=pl.Int64),
    ]
    return columns if rows is None else [c.gather(rows) for c in columns]


def _typed_rows(
    domain: Domain,
    nested: pl.DataFrame,
    batch: MessageBatch,
    collected_at: datetime,
    check_nulls: bool,
    in_batch_order: bool,
) -> tuple[pl.DataFrame, list[Rejected]]:
    """Flatten, type and check decoded messages in one lazy plan; bad rows reject their message.

    Timestamps outside the exploded array are parsed per message, before the explode. One ``collect``
    yields the typed rows and whether any row fails a check; only then are the failing rows ranked
    (first failing rule of each message) to name the reason and detail of each rejected message.
    """
    plan = _plan(domain)
    rejected: list[Rejected] = []
    if domain.explode:
        sizes = nested.get_column(domain.explode).list.len()
        if sizes.null_count() or (not sizes.is_empty() and sizes.min() == 0):
            empty = (sizes.is_null() | (sizes == 0)).arg_true()
            rows = nested.get_column(_ROW).gather(empty).to_list()
            rejected += [Rejected(int(r), SCHEMA_ERROR, f"{domain.explode}[] is missing or empty") for r in rows]

    # A time rule can only fail in a column whose nulls grew when parsed; the others are left out.
    texts = [
        nested.get_column(top).struct.field(sub) if sub else nested.get_column(top) for _, top, sub in plan.message_ts
    ]
    names = [ts for ts, _, _ in plan.message_ts]
    parsed = [p.alias(_ts(ts)) for p, ts in zip(_parse_all(texts), names, strict=True)]
    failing = _grew_nulls(names, texts, parsed)
    in_order = in_batch_order and nested.height == len(batch)
    provenance = _provenance(batch, None if in_order else nested.get_column(_ROW))
    flat = _flatten(domain, plan.flattening, nested.hstack([*parsed, *provenance]).lazy())
    if plan.item_ts:
        items_frame = flat.collect(optimizations=_AS_WRITTEN)
        item_texts = [items_frame.get_column(ts) for ts in plan.item_ts]
        more = [p.alias(_ts(ts)) for p, ts in zip(_parse_all(item_texts), plan.item_ts, strict=True)]
        failing |= _grew_nulls(plan.item_ts, item_texts, more)
        flat = items_frame.hstack(more).lazy()

    rules: list[Rule] = [
        *(plan.null_rules if check_nulls else ()),
        *(plan.ts_rules[ts] for ts in domain.timestamp_fields if ts in failing),
        *plan.check_rules,
    ]
    per_batch = {
        "kafka_topic": pl.lit(batch.topic, pl.String).alias("kafka_topic"),
        "collected_at": pl.lit(epoch_micros(collected_at), pl.Int64).cast(UTC_MICROS).alias("collected_at"),
    }
    columns = [per_batch[c] if e is None else e for c, e in plan.columns]
    bad = pl.any_horizontal([fails for _, fails, _ in rules]) if rules else pl.lit(False)
    frame = flat.select(*columns, pl.col(_ROW), bad.alias(_BAD)).collect(optimizations=_AS_WRITTEN)
    if not frame.get_column(_BAD).any():
        return _without_last(frame, 2), rejected

    priority: pl.Expr = pl.lit(None, pl.Int32)
    for i in reversed(range(len(rules))):
        priority = pl.when(rules[i][1]).then(pl.lit(i, pl.Int32)).otherwise(priority)
    # Eager sort, then unique: the first row of each message is the one with its first failing rule.
    failing_rows = flat.filter(bad).with_columns(priority.alias("_rule")).collect(optimizations=_AS_WRITTEN)
    ranked_rows = failing_rows.sort([_ROW, "_rule"], maintain_order=True)  # ties: the first item reports
    ranked_rows = ranked_rows.unique(_ROW, keep="first")
    for rule_index in ranked_rows.get_column("_rule").unique().to_list():
        reason, _, detail = rules[rule_index]
        hits = ranked_rows.filter(pl.col("_rule") == rule_index).select(_ROW, detail.alias("_detail"))
        rejected += [Rejected(int(row), reason, str(text)) for row, text in hits.iter_rows()]
    kept = frame.filter(~pl.col(_ROW).is_in(ranked_rows.get_column(_ROW).implode()))
    return _without_last(kept, 2), rejected


def _without_last(frame: pl.DataFrame, count: int) -> pl.DataFrame:
    """``frame`` without its last ``count`` columns (no query plan: cheaper than ``drop``)."""
    return pl.DataFrame(frame.get_columns()[:-count])


def parse_utc(texts: pl.Series, parsed: pl.Series | None = None) -> pl.Series:
    """Parse ISO-8601 strings to UTC microsecond timestamps; unparseable ones become null.

    ``parsed`` holds values already parsed (nulls are tried again): fixed layouts first, then
    the general parser (offsets like ``+09:00``, other precisions).
    """
    if parsed is None:
        parsed = pl.Series(texts.name, [None] * texts.len(), dtype=UTC_MICROS)
    for fmt in [*_FIXED_ISO_FORMATS.values(), "%+"]:
        idx = (parsed.is_null() & texts.is_not_null()).arg_true()
        if idx.is_empty():
            break
        retry = texts.gather(idx).str.to_datetime(fmt, time_unit="us", time_zone="UTC", strict=False)
        parsed = parsed.scatter(idx, retry)
    return parsed.alias(texts.name)


__all__ = [
    "POSITION_KEY",
    "BatchDecoder",
    "DecodedBatch",
    "MessageBatch",
    "Rejected",
    "WireFormat",
]
