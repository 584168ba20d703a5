"""Read a merged file back before it is published, independently of how it was written.

The file is read row group by row group (only the sort-key, de-dup-key and position columns), and
checked to be

- readable, with the row count its writer reported and its footer states;
- sorted by the dataset's sort key across the whole file;
- holding each de-dup key once: rows sharing a key share the entity and the event time, so in a
  sorted file they are neighbours within one (entity, time) stretch; a stretch that crosses a row
  group boundary is carried into the next check;
- holding every key whose repeats the merge removed (a removed row always has its twin kept).

Together with ``rows written + repeats removed = source rows in the period`` (counted while reading
the sources) this is the old ``row count = distinct keys of its sources`` check, without a second
global de-duplication. The same pass yields the Kafka positions the file covers, for the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from merger.dataset import Dataset


class VerificationError(RuntimeError):
    """A merged file is not what its sources and the merge say it should be."""


def _text(column: pa.Array | pa.ChunkedArray) -> pl.Series:
    """A string column (possibly dictionary-encoded) as polars text."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    series = pl.from_arrow(column)
    assert isinstance(series, pl.Series)
    return series


def _first_repeat(frame: pl.DataFrame, key: Sequence[str]) -> dict[str, object] | None:
    """A row of ``frame`` whose de-dup key another row holds too, or None."""
    if frame.height < 2:
        return None
    hashed = frame.select(pl.struct(list(key)).hash())[:, 0].to_numpy()
    ordered = np.sort(hashed)
    if not (ordered[1:] == ordered[:-1]).any():
        return None
    repeated = frame.select(key).filter(pl.struct(list(key)).is_duplicated())
    return repeated.row(0, named=True) if repeated.height else None  # else: only a hash collision


def verify_merged(
    path: Path, dataset: Dataset, expected_rows: int, removed_keys: pl.DataFrame | None = None
) -> tuple[dict[str, object], ...]:
    """Check ``path`` (see the module docstring) and return, per (topic, partition), the lowest and
    highest Kafka offset and the rows it holds. Raises VerificationError."""
    reader = pq.ParquetFile(str(path))
    if reader.metadata.num_rows != expected_rows:
        raise VerificationError(f"{path.name}: footer says {reader.metadata.num_rows} rows, {expected_rows} written")
    sort_key = list(dataset.sort_key)
    key = list(dataset.dedup_key)
    columns = list(dict.fromkeys([*sort_key, *key, "kafka_topic", "kafka_partition", "kafka_offset"]))
    names = set(reader.schema_arrow.names)
    if any(c not in names for c in columns):
        raise VerificationError(f"{path.name}: missing columns {sorted(set(columns) - names)}")
    strings = [c for c in columns if pa.types.is_string(reader.schema_arrow.field(c).type)]
    stretch = [dataset.entity_key, "timestamp"]
    rows = 0
    last: tuple[object, ...] | None = None
    carry: pl.DataFrame | None = None
    positions: list[pl.DataFrame] = []
    found = 0
    wanted = removed_keys.unique() if removed_keys is not None and removed_keys.height else None
    for batch in reader.iter_batches(batch_size=1 << 17, columns=columns):
        frame = pl.DataFrame([_text(batch.column(c)).alias(c) if c in strings else pl.from_arrow(batch.column(c))
                              for c in columns])  # fmt: skip
        if not frame.height:
            continue
        rows += frame.height
        ordered = frame.select(pl.struct(sort_key).is_sorted()).item()
        first = tuple(frame.row(0, named=True)[c] for c in sort_key)
        if not ordered or (last is not None and first < last):  # type: ignore[operator]
            raise VerificationError(f"{path.name}: not sorted by {', '.join(sort_key)} near row {rows}")
        last = tuple(frame.row(-1, named=True)[c] for c in sort_key)
        window = frame if carry is None else pl.concat([carry, frame], how="vertical")
        repeat = _first_repeat(window.select(key), key)
        if repeat is not None:
            raise VerificationError(f"{path.name}: de-dup key held twice: {repeat}")
        tail = frame.select(stretch).row(-1)
        carry = frame.filter((pl.col(stretch[0]) == tail[0]) & (pl.col(stretch[1]) == tail[1]))
        if wanted is not None:
            found += wanted.join(frame.select(key).unique(), on=key, how="semi", nulls_equal=True).height
        positions.append(
            frame.group_by("kafka_topic", "kafka_partition").agg(
                pl.col("kafka_offset").min().alias("first"), pl.col("kafka_offset").max().alias("last"),
                pl.len().alias("rows"),
            )
        )  # fmt: skip
    if rows != expected_rows:
        raise VerificationError(f"{path.name}: {rows} rows read back, {expected_rows} written")
    if wanted is not None and found != wanted.height:
        raise VerificationError(f"{path.name}: {wanted.height - found} keys whose repeats were removed are missing")
    if not positions:
        return ()
    merged = (
        pl.concat(positions)
        .group_by("kafka_topic", "kafka_partition")
        .agg(pl.col("first").min(), pl.col("last").max(), pl.col("rows").sum())
        .sort("kafka_topic", "kafka_partition")
    )
    return tuple(
        {"topic": t, "partition": int(p), "first": int(lo), "last": int(hi), "rows": int(n)}
        for t, p, lo, hi, n in merged.iter_rows()
    )
