"""Parquet encoding of a minute file: bytes in, bytes out, no storage involved."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_KEY = b"fms.manifest"
ROW_GROUP_ROWS = 128 * 1024


def encode_rows(
    rows: pl.DataFrame,
    sort_key: Sequence[str],
    schema: Mapping[str, pl.DataType],
    manifest: Mapping[str, object],
) -> bytes:
    """Rows sorted by ``sort_key``, as zstd Parquet with statistics and a manifest in metadata.

    ``schema`` fixes the columns and their types (a domain's row schema, or the DLQ row schema).
    """
    table = rows.sort(list(sort_key)).select([pl.col(c).cast(t) for c, t in schema.items()]).to_arrow()
    metadata = dict(table.schema.metadata or {})
    metadata[MANIFEST_KEY] = json.dumps({**manifest, "rows": table.num_rows}, default=str).encode()
    table = table.replace_schema_metadata(metadata)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        write_statistics=True,
        row_group_size=ROW_GROUP_ROWS,
    )
    return sink.getvalue()


def verify(data: bytes, expected_rows: int) -> None:
    """Check that encoded bytes are a readable Parquet file with the expected row count."""
    meta = pq.read_metadata(pa.BufferReader(data))
    if meta.num_rows != expected_rows:
        raise ValueError(f"encoded file holds {meta.num_rows} rows, expected {expected_rows}")


def stored_positions(data: bytes) -> object:
    """The Kafka positions (per topic and partition: first and last offset) an encoded minute file's
    manifest records, or None if it has no manifest."""
    raw = (pq.read_schema(pa.BufferReader(data)).metadata or {}).get(MANIFEST_KEY)
    return json.loads(raw).get("positions") if raw else None
