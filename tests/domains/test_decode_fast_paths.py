"""The decoder's fast paths give exactly what the general paths give.

- timestamps: one Arrow cast when every value is 20 or 24 bytes ending in ``Z``, else the polars
  parsers; forcing the polars parsers must not change a row, a reason or a detail;
- Avro: the batch as one container block (strings read as bytes, the buffer reused between batches);
  a string that is not UTF-8 sends its group to per-record decoding like any corrupt record.
"""

from __future__ import annotations

import copy
import struct
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import domains.decode as decode_module
from domains import DOMAINS, avro
from domains.avro import encode_one
from domains.base import SCHEMA_ERROR, Domain, RecordCheck
from domains.decode import BatchDecoder, DecodedBatch, MessageBatch
from trafficgen.examples import canonical_example

COLLECTED_AT = datetime(2025, 5, 24, 15, 0, tzinfo=UTC)

# Values of the two fixed lengths that the Arrow cast refuses or that are not the fixed layouts.
TRICKY_24 = [
    "2025-05-24 14:20:00.123Z",  # space separator: the general parser takes it, same value
    "2025-05-24T23:59:60.000Z",  # leap second: Arrow refuses, polars accepts
    "2025-02-29T10:00:00.000Z",  # no such day
    "2025-05-24T24:00:00.000Z",
    "2025-05-24T14:20:00.000z",
    "2025-05-24t14:20:00.000Z",
    "2025-05-24T14:20:00.1+09",  # Arrow accepts this zone form, the polars parsers do not
    "2025-05-24T14:20:00+0900",
    "2025-05-24T14:20:00.0000",
    "0000-01-01T00:00:00.000Z",
]
TRICKY_20 = ["2025-05-24 14:20:00Z", "2025-05-24T23:59:60Z", "2025-02-29T10:00:00Z", "2025-05-24T14:20+0900"]
OTHER = ["2025-05-24T14:20:00.123456Z", "2025-05-24T14:20Z", "2025-05-24T14:20:00+09:00", "yesterday", ""]


def _encode(domain: Domain, record: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return orjson.dumps(record)
    raw = encode_one(record, domain.parsed_schema)
    return raw if fmt == "avro" else struct.pack(">bI", 0, domain.schema_id) + raw


def _batch(domain: Domain, values: list[bytes | None]) -> MessageBatch:
    n = len(values)
    return MessageBatch(domain.topic.name, values, [i % 3 for i in range(n)], list(range(n)), [i * 7 for i in range(n)])


def _decode(domain: Domain, values: list[bytes | None]) -> DecodedBatch:
    return BatchDecoder(domain).decode(_batch(domain, values), COLLECTED_AT)


def _assert_same(a: DecodedBatch, b: DecodedBatch) -> None:
    assert [(r.index, r.reason, r.detail) for r in a.rejected] == [(r.index, r.reason, r.detail) for r in b.rejected]
    assert a.rows.schema == b.rows.schema
    assert a.rows.equals(b.rows)


def _time(draw: st.DrawFn) -> str:
    """A time of the fixed layouts (mostly), or one of the values that are not."""
    kind = draw(st.sampled_from(["fixed", "fixed", "fixed", "tricky", "other"]))
    if kind == "tricky":
        return draw(st.sampled_from(TRICKY_24 + TRICKY_20))
    if kind == "other":
        return draw(st.sampled_from(OTHER))
    return _fixed_time(draw)


def _fixed_time(draw: st.DrawFn) -> str:
    stamp = draw(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)))
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{stamp.microsecond // 1000:03d}Z" if draw(st.booleans()) else "Z")


@st.composite
def _record(draw: st.DrawFn, name: str, clean: bool) -> dict[str, Any]:
    domain = DOMAINS[name]
    record = canonical_example(name)
    for ts in domain.timestamp_fields:
        top, _, sub = domain.source_paths[ts].partition(".")
        node = record[top] if sub else record
        node[sub or top] = _fixed_time(draw) if clean else _time(draw)
    return record


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arrow_timestamp_path_matches_the_polars_parsers(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(DOMAINS)))
    domain = DOMAINS[name]
    fmt = data.draw(st.sampled_from(["json", "avro", "avro-confluent"]))
    # Half the batches with clean layouts only, so that the Arrow cast is taken for whole columns.
    records = data.draw(st.lists(_record(name, data.draw(st.booleans())), min_size=1, max_size=12))
    values: list[bytes | None] = [_encode(domain, r, fmt) for r in records]
    fast = _decode(domain, values)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(decode_module, "_parse_fixed_utc", lambda texts: None)
        general = _decode(domain, values)
    _assert_same(fast, general)


def test_arrow_timestamp_path_is_taken_for_the_fixed_layouts() -> None:
    texts = pl.Series("t", ["2025-05-24T14:20:00Z", "2025-05-24T14:20:00.123Z", None])
    parsed = decode_module._parse_fixed_utc([texts])
    assert parsed is not None
    assert parsed[0].to_list() == [
        datetime(2025, 5, 24, 14, 20, tzinfo=UTC),
        datetime(2025, 5, 24, 14, 20, 0, 123000, tzinfo=UTC),
        None,
    ]
    for tricky in TRICKY_24 + TRICKY_20 + OTHER:
        if tricky in ("2025-05-24 14:20:00.123Z", "0000-01-01T00:00:00.000Z", "2025-05-24 14:20:00Z"):
            continue  # fixed layouts Arrow parses exactly like the polars parsers
        assert decode_module._parse_fixed_utc([pl.Series("t", [tricky])]) is None, tricky


@pytest.mark.parametrize("fmt", ["avro", "avro-confluent"])
def test_string_that_is_not_utf8_is_isolated(fmt: str) -> None:
    domain = DOMAINS["robot_status"]
    record = dict(canonical_example("robot_status"), robot_id="ROBOT_X")
    good = _encode(domain, record, fmt)
    bad = good.replace(b"ROBOT_X", b"ROBOT_\xff")
    result = _decode(domain, [good, bad, good])
    assert [(r.index, r.reason) for r in result.rejected] == [(1, SCHEMA_ERROR)]
    assert "utf-8" in result.rejected[0].detail
    assert result.rows["kafka_offset"].to_list() == [0, 2]
    assert result.rows["robot_id"].to_list() == ["ROBOT_X", "ROBOT_X"]


@pytest.mark.parametrize("name", list(DOMAINS))
def test_clean_avro_batches_take_the_block_path_and_reuse_its_buffer(name: str) -> None:
    domain = DOMAINS[name]
    value = _encode(domain, canonical_example(name), "avro")
    for n in (50, 3, 200, 1):  # larger, then smaller: nothing of the previous batch is read again
        frame = avro.decode_block(domain.schema_json, [value] * n, 0, "_row")
        assert frame is not None
        assert frame.height == n
        assert frame["_row"].to_list() == list(range(n))
        assert dict(frame.drop("_row").schema) == domain.nested_schema
    framed = _encode(domain, canonical_example(name), "avro-confluent")
    assert avro.decode_block(domain.schema_json, [framed] * 4, 5) is not None


def test_record_checks_cannot_read_timestamps() -> None:
    base = DOMAINS["energy_usage"]
    check = RecordCheck(SCHEMA_ERROR, pl.col("timestamp").is_null(), pl.lit("no time"))
    domain = Domain(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "checks": (check,)})
    with pytest.raises(ValueError, match="timestamp"):
        _decode(domain, [_encode(domain, canonical_example("energy_usage"), "avro")])


@pytest.mark.parametrize("name", ["robot_status", "equipment_metrics"])
def test_rows_do_not_change_when_the_buffer_is_reused(name: str) -> None:
    domain = DOMAINS[name]
    first = dict(canonical_example(name))
    second = dict(canonical_example(name), location="somewhere_else_entirely")
    a = _decode(domain, [_encode(domain, first, "avro")] * 30)
    snapshot = a.rows.to_dicts()
    for n in (300, 10):
        b = _decode(domain, [_encode(domain, second, "avro")] * n)
        assert b.rows["location"].unique().to_list() == ["somewhere_else_entirely"]
    assert a.rows.to_dicts() == snapshot


def _domain_with_item_times() -> Domain:
    """environmental_readings with a time on each reading (``readings[].read_at``)."""
    base = DOMAINS["environmental_readings"]
    schema = copy.deepcopy(base.schema)
    items = next(f for f in schema["fields"] if f["name"] == "readings")["type"]["items"]
    items["fields"].append({"name": "read_at", "type": "string"})
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    domain = Domain(**{**fields, "timestamp_fields": (*base.timestamp_fields, "read_at")})
    domain.__dict__["schema"] = schema  # the cached schema, instead of a file
    return domain


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_timestamps_inside_the_exploded_array(fmt: str) -> None:
    domain = _domain_with_item_times()
    records = []
    for read_at in ("2025-05-24T14:29:59.500Z", "2025-05-24T14:29:58Z", "2025-02-30T00:00:00Z"):
        record = copy.deepcopy(canonical_example("environmental_readings"))
        for i, reading in enumerate(record["readings"]):
            reading["read_at"] = read_at if i else "2025-05-24T14:29:00Z"
        records.append(record)
    values: list[bytes | None] = [_encode(domain, r, fmt) for r in records]
    fast = _decode(domain, values)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(decode_module, "_parse_fixed_utc", lambda texts: None)
        _assert_same(fast, _decode(domain, values))
    assert [(r.index, r.reason, r.detail) for r in fast.rejected] == [
        (2, SCHEMA_ERROR, "readings[].read_at '2025-02-30T00:00:00Z' is not an ISO-8601 time")
    ]
    assert fast.rows["read_at"].to_list() == [
        datetime(2025, 5, 24, 14, 29, tzinfo=UTC),
        datetime(2025, 5, 24, 14, 29, 59, 500000, tzinfo=UTC),
        datetime(2025, 5, 24, 14, 29, tzinfo=UTC),
        datetime(2025, 5, 24, 14, 29, 58, tzinfo=UTC),
    ]


@pytest.mark.parametrize("name", list(DOMAINS))
@pytest.mark.parametrize("first_field", ["", "12345", "2025-05-24T14:20", "2025-05-24T14:20:00Z"])
def test_whole_batch_block_agrees_with_per_message_detection(name: str, first_field: str) -> None:
    # A raw Avro value whose first string has 0, 5 or 16 bytes starts with 0x00, "\n" or " ": format
    # detection sets it apart (as Confluent or JSON); the whole-batch block must not keep it as Avro.
    domain = DOMAINS[name]
    good = canonical_example(name)
    odd = dict(good, **{domain.schema["fields"][0]["name"]: first_field})
    batches: list[list[bytes | None]] = [
        [_encode(domain, good, "avro"), _encode(domain, odd, "avro"), _encode(domain, good, "avro")],
        [_encode(domain, good, "avro"), _encode(domain, good, "json"), _encode(domain, odd, "avro")],
        [_encode(domain, good, "avro"), None, _encode(domain, good, "avro-confluent")],
    ]
    for values in batches:
        whole = _decode(domain, values)
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(BatchDecoder, "_raw_avro_batch", lambda self, batch: None)
            _assert_same(whole, _decode(domain, values))


@pytest.mark.parametrize("name", ["robot_status", "equipment_metrics", "device_status"])
def test_inlined_records_read_as_their_fields(name: str) -> None:
    domain = DOMAINS[name]
    value = _encode(domain, canonical_example(name), "avro")
    nested = avro.decode_block(domain.schema_json, [value] * 3)
    inlined = avro.decode_block(domain.schema_json, [value] * 3, inline=("status",))
    assert nested is not None and inlined is not None
    widened = nested.select(
        pl.exclude("status"),
        *(pl.col("status").struct.field(f).alias(f"status_{f}") for f in nested.schema["status"].to_schema()),  # type: ignore[attr-defined]
    )
    assert inlined.select(sorted(inlined.columns)).equals(widened.select(sorted(widened.columns)))
    with pytest.raises(ValueError, match="not a record"):
        avro.inline_records(domain.schema, ("timestamp",))


@pytest.mark.parametrize("name", list(DOMAINS))
@pytest.mark.parametrize("fmt", ["avro", "avro-confluent"])
@pytest.mark.parametrize("where", [0, 2, 4])
def test_trailing_bytes_after_a_record_reject_it_wherever_it_sits_in_the_batch(name: str, fmt: str, where: int) -> None:
    """The block is closed by a sentinel record, so junk after the *last* value shifts it like junk
    after any other value: the message is rejected, its neighbours kept."""
    domain = DOMAINS[name]
    values: list[bytes | None] = [_encode(domain, canonical_example(name), fmt) for _ in range(5)]
    values[where] = bytes(values[where] or b"") + b"\x02junk"
    decoded = _decode(domain, values)
    assert [(r.index, r.reason) for r in decoded.rejected] == [(where, SCHEMA_ERROR)]
    clean = _decode(domain, [v for i, v in enumerate(values) if i != where])
    assert decoded.rows.height == clean.rows.height
    assert sorted(set(decoded.rows["kafka_offset"].to_list())) == [i for i in range(5) if i != where]


def test_zero_encoding_is_a_valid_record_of_every_domain_schema() -> None:
    import io

    import fastavro

    for domain in DOMAINS.values():
        schema = domain.parsed_schema
        data = avro.zero_encoding(domain.schema, avro._named_types(domain.schema))
        stream = io.BytesIO(data)
        fastavro.schemaless_reader(stream, schema, None)
        assert stream.tell() == len(data)
