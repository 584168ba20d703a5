"""Avro helpers: schema loading, Avro → polars types, and batch framing for the fast decode path.

The fast path wraps a batch of schemaless Avro records into one Avro object-container block so
that ``polars.read_avro`` decodes the whole batch in native code. Each record is prefixed with its
index in the batch (an Avro ``long``), and the container schema is the record schema with a leading
``_fms_idx: long`` field: after decoding, ``_fms_idx`` must read 0..n-1, which proves that every
record consumed exactly its own bytes. A corrupt record shifts that sequence (or fails the decode),
and the caller falls back to per-record decoding to isolate it. A sentinel record (numbered n, all
fields at their zero encoding) closes the block, so trailing bytes after the last value shift it too.

The container is written into a buffer that each thread reuses from batch to batch, and strings
are declared as ``bytes`` (same encoding, read faster) and cast back to strings in one call, which
checks their UTF-8: a string that is not UTF-8 fails the block like any other corrupt record.
"""

from __future__ import annotations

import io
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
import polars as pl

SCHEMA_DIR = Path(__file__).with_name("schemas")

_AVRO_TO_POLARS: dict[str, pl.DataType] = {
    "string": pl.String(),
    "double": pl.Float64(),
    "float": pl.Float32(),
    "int": pl.Int32(),
    "long": pl.Int64(),
    "boolean": pl.Boolean(),
    "bytes": pl.Binary(),
}

_SYNC_MARKER = b"fms-collector-sy"  # 16 bytes; any constant works for an in-memory container


def load_schema(file_name: str) -> dict[str, Any]:
    """Read an ``.avsc`` file shipped in ``domains/schemas``."""
    return json.loads((SCHEMA_DIR / file_name).read_text(encoding="utf-8"))


def polars_dtype(avro_type: Any) -> pl.DataType:
    """Translate an Avro type (as parsed JSON) into the polars dtype ``read_avro`` produces."""
    if isinstance(avro_type, str):
        return _AVRO_TO_POLARS[avro_type]
    if isinstance(avro_type, list):  # union: only ["null", T] is used in our schemas
        non_null = [t for t in avro_type if t != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unsupported union {avro_type}")
        return polars_dtype(non_null[0])
    kind = avro_type["type"]
    if kind == "record":
        return pl.Struct({f["name"]: polars_dtype(f["type"]) for f in avro_type["fields"]})
    if kind == "array":
        return pl.List(polars_dtype(avro_type["items"]))
    if kind == "enum":
        return pl.String()
    return polars_dtype(kind)


def polars_schema(record_schema: dict[str, Any]) -> dict[str, pl.DataType]:
    """The nested polars schema of a top-level Avro record."""
    return {f["name"]: polars_dtype(f["type"]) for f in record_schema["fields"]}


def zigzag_varint(n: int) -> bytes:
    """Avro's encoding of a long: zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_INDEX_PREFIXES: list[bytes] = []


def index_prefixes(n: int) -> list[bytes]:
    """Avro-encoded longs 0..n-1, computed once and reused, used to number the records of a block."""
    if len(_INDEX_PREFIXES) < n:
        _INDEX_PREFIXES.extend(zigzag_varint(i) for i in range(len(_INDEX_PREFIXES), n))
    return _INDEX_PREFIXES[:n]


def _strings_as_bytes(avro_type: Any) -> Any:
    """``avro_type`` with every ``string`` turned into ``bytes`` (strings are length + UTF-8 bytes)."""
    if avro_type == "string":
        return "bytes"
    if isinstance(avro_type, list):
        return [_strings_as_bytes(t) for t in avro_type]
    if not isinstance(avro_type, dict):
        return avro_type
    kind = avro_type["type"]
    if kind == "record":
        return {**avro_type, "fields": [{**f, "type": _strings_as_bytes(f["type"])} for f in avro_type["fields"]]}
    if kind == "array":
        return {**avro_type, "items": _strings_as_bytes(avro_type["items"])}
    if kind == "map":
        return {**avro_type, "values": _strings_as_bytes(avro_type["values"])}
    return {**avro_type, "type": _strings_as_bytes(kind)}


def inline_records(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``record`` with each record-typed field of ``names`` replaced by its fields, ``<name>_<sub>``.

    A record is encoded as its fields one after the other, so the encoding does not change.
    """
    fields: list[dict[str, Any]] = []
    for field in record["fields"]:
        if field["name"] not in names:
            fields.append(field)
            continue
        kind = field["type"]
        if not isinstance(kind, dict) or kind.get("type") != "record":
            raise ValueError(f"field {field['name']} is not a record: it cannot be inlined")
        fields += [{**sub, "name": f"{field['name']}_{sub['name']}"} for sub in kind["fields"]]
    return {**record, "fields": fields}


@lru_cache(maxsize=64)
def _string_casts(schema_json: str, inline: tuple[str, ...]) -> dict[str, pl.DataType]:
    """Columns read as bytes by the container and the string dtypes they are cast back to."""
    record = inline_records(json.loads(schema_json), inline)
    as_read = polars_schema(_strings_as_bytes(record))
    return {name: dtype for name, dtype in polars_schema(record).items() if as_read[name] != dtype}


@lru_cache(maxsize=64)
def _container_header(schema_json: str, header_bytes: int, inline: tuple[str, ...]) -> bytes:
    # The container schema is the record schema with leading fields for the index (and the skipped
    # framing bytes). A record encoding is the concatenation of its fields, so "index + header +
    # value" is a valid encoding of it, and the columns come out flat, with no struct to unnest;
    # for the same reason the fields of the records in ``inline`` are read as top-level columns.
    # Strings are declared as bytes (the same encoding): polars reads bytes faster than strings,
    # and one cast afterwards checks the UTF-8 of every column at once (see _string_casts).
    record = _strings_as_bytes(inline_records(json.loads(schema_json), inline))
    leading: list[dict[str, Any]] = [{"name": _IDX, "type": "long"}]
    if header_bytes:
        leading.append({"name": _HDR, "type": {"type": "fixed", "name": "FmsHdr", "size": header_bytes}})
    wrapper = json.dumps({**record, "fields": leading + record["fields"]})
    meta = {b"avro.schema": wrapper.encode(), b"avro.codec": b"null"}
    head = bytearray(b"Obj\x01")
    head += zigzag_varint(len(meta))
    for key, value in meta.items():
        head += zigzag_varint(len(key)) + key + zigzag_varint(len(value)) + value
    head += zigzag_varint(0) + _SYNC_MARKER
    return bytes(head)


_IDX = "_fms_idx"
_HDR = "_fms_hdr"
_SIZE_WIDTH = 5  # bytes reserved for the block size: a long of up to 2**34 - 1
_BUFFERS = threading.local()


def _padded_varint(n: int) -> bytes:
    """``n`` as an Avro long in exactly ``_SIZE_WIDTH`` bytes (continuation bits on the leading ones)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    for _ in range(_SIZE_WIDTH - 1):
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    if z > 0x7F:
        raise ValueError(f"Avro block of {n} bytes is too large")
    out.append(z)
    return bytes(out)


def _buffer() -> io.BytesIO:
    """This thread's container buffer, reused from batch to batch.

    A fresh multi-megabyte ``bytes`` per batch costs a page fault per 4 KiB on first touch, which
    is as much as the native decode of the batch; the reused buffer keeps its pages.
    """
    buffer: io.BytesIO | None = getattr(_BUFFERS, "buffer", None)
    if buffer is None:
        buffer = _BUFFERS.buffer = io.BytesIO()
    return buffer


@lru_cache(maxsize=4)
def _numbers(n: int) -> pl.Series:
    """0..n-1 as Int64, what the record numbers of a sound block read (batches mostly share a size)."""
    return pl.int_range(0, n, eager=True, dtype=pl.Int64)


@lru_cache(maxsize=64)
def _sentinel(schema_json: str, header_bytes: int) -> bytes:
    """The value bytes of the closing record: the framing bytes, then every field at its zero encoding."""
    schema = json.loads(schema_json)
    return bytes(header_bytes) + zero_encoding(schema, _named_types(schema))


def _named_types(avro_type: Any, found: dict[str, Any] | None = None) -> dict[str, Any]:
    found = {} if found is None else found
    if isinstance(avro_type, list):
        for branch in avro_type:
            _named_types(branch, found)
    elif isinstance(avro_type, dict):
        if avro_type.get("type") in ("record", "enum", "fixed") and "name" in avro_type:
            found[avro_type["name"]] = avro_type
            found[f"{avro_type.get('namespace')}.{avro_type['name']}"] = avro_type
        for field in avro_type.get("fields", []):
            _named_types(field["type"], found)
        for key in ("items", "values"):
            if key in avro_type:
                _named_types(avro_type[key], found)
        if isinstance(avro_type.get("type"), dict | list):
            _named_types(avro_type["type"], found)
    return found


def zero_encoding(avro_type: Any, named: dict[str, Any]) -> bytes:
    """The shortest valid encoding of ``avro_type``: zeros, empty strings and collections, the first
    branch of a union, the first symbol of an enum."""
    if isinstance(avro_type, list):
        return b"\x00" + zero_encoding(avro_type[0], named)
    if isinstance(avro_type, str):
        if avro_type == "null":
            return b""
        if avro_type in ("boolean", "int", "long", "string", "bytes"):
            return b"\x00"
        if avro_type in ("float", "double"):
            return bytes(4 if avro_type == "float" else 8)
        return zero_encoding(named[avro_type], named)
    kind = avro_type["type"]
    if kind == "record":
        return b"".join(zero_encoding(f["type"], named) for f in avro_type["fields"])
    if kind in ("enum", "array", "map"):
        return b"\x00"
    if kind == "fixed":
        return bytes(avro_type["size"])
    return zero_encoding(kind, named)  # a primitive with attributes (e.g. a logicalType)


def _fill(buffer: io.BytesIO, header: bytes, values: list[bytes], sentinel: bytes) -> None:
    """Write ``values`` and the ``sentinel`` into ``buffer`` as one numbered container block (see the
    module docstring)."""
    n = len(values)
    parts: list[bytes] = [b""] * (2 * n + 2)
    parts[0::2] = index_prefixes(n + 1)
    parts[1:-1:2] = values
    parts[-1] = sentinel
    buffer.seek(0)
    buffer.write(header)
    buffer.write(zigzag_varint(n + 1))
    size_at = buffer.tell()
    buffer.write(bytes(_SIZE_WIDTH))  # the block size, written once the records are in
    buffer.writelines(parts)
    size = buffer.tell() - size_at - _SIZE_WIDTH
    buffer.write(_SYNC_MARKER)
    buffer.truncate()
    buffer.seek(size_at)
    buffer.write(_padded_varint(size))
    buffer.seek(0)


def decode_block(
    schema_json: str,
    values: list[bytes],
    header_bytes: int = 0,
    row_column: str | None = None,
    inline: tuple[str, ...] = (),
) -> pl.DataFrame | None:
    """Decode schemaless Avro records in one native call; ``None`` if any record is malformed.

    ``header_bytes`` skips a fixed-size prefix on every value (5 for Confluent framing), so the
    framed values need no per-record slicing in Python. With ``row_column`` the record numbers
    (0..n-1, Int64) are kept as that column. The record fields named in ``inline`` come out as
    columns ``<name>_<sub>`` instead of a struct (see :func:`inline_records`).
    """
    n = len(values)
    header = _container_header(schema_json, header_bytes, inline)
    sentinel = _sentinel(schema_json, header_bytes)
    buffer = _buffer()
    try:
        try:
            _fill(buffer, header, values, sentinel)
        except BufferError:  # a reader still holds a view of the previous batch: take a new buffer
            buffer = _BUFFERS.buffer = io.BytesIO()
            _fill(buffer, header, values, sentinel)
        frame = pl.read_avro(buffer)
    except BaseException as exc:  # noqa: BLE001 - polars raises a PanicException (BaseException)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        _BUFFERS.buffer = None  # start the next batch from a clean buffer
        return None
    index = frame.get_column(_IDX)
    if frame.height != n + 1 or not index.equals(_numbers(n + 1), check_names=False):
        return None
    frame = frame.head(n)  # without the sentinel
    index = index.head(n)
    casts = _string_casts(schema_json, inline)
    try:
        columns = [
            c.cast(casts[c.name]) if c.name in casts else c for c in frame.get_columns() if c.name not in (_IDX, _HDR)
        ]
    except pl.exceptions.PolarsError:  # a string that is not UTF-8
        return None
    if row_column is not None:
        columns.insert(0, index.alias(row_column))
    return pl.DataFrame(columns)


def decode_one(payload: bytes, writer: Any, reader: Any | None = None) -> dict[str, Any]:
    """Decode one schemaless Avro record strictly: every byte must be consumed."""
    buffer = io.BytesIO(payload)
    record = fastavro.schemaless_reader(buffer, writer, reader)
    if buffer.tell() != len(payload):
        raise ValueError(f"{len(payload) - buffer.tell()} trailing bytes after the record")
    if not isinstance(record, dict):
        raise ValueError("not a record")
    return record


def encode_one(record: dict[str, Any], parsed_schema: Any) -> bytes:
    """Encode one record as schemaless Avro."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed_schema, record)
    return buffer.getvalue()
