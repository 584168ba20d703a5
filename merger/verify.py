"""An independent check of a merged file, read back: :func:`verify_merged` (tests and tools; the merge
itself checks its rows as they are written, in ``merger.sorted_merge``).

:class:`Checker` takes the rows in file order, a row group at a time, and checks that they are

- sorted by the dataset's sort key across the whole file;
- holding each de-dup key once: rows sharing a key share the entity and the event time, so in
  sorted rows they lie within one (entity, time) stretch; the stretch at the end of each part is
  carried into the next check;
- holding every key whose repeats were removed (a removed row always has its twin kept);

and counts the rows and the Kafka positions they cover (as in the manifest). Together with ``rows
written + repeats removed + rows outside the period = rows stored in the sources`` this is the old
``row count = distinct keys of its sources`` check, without a second global de-duplication.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from merger.dataset import Dataset


class VerificationError(RuntimeError):
    """Merged rows are not what their sources and the merge say they should be."""


def member(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``wanted`` (a hash-set lookup per value)."""
    return pl.Series(values).is_in(pl.Series(wanted).implode()).to_numpy()


def _entity_stretches(column: pa.Array) -> tuple[list[str], np.ndarray]:
    """The values of a string column in order of their stretches, and each stretch's row count."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    runs = pl.Series(column.indices).rle().struct.unnest()
    values = column.dictionary.take(pa.array(runs["value"].to_numpy())).to_pylist()
    return values, runs["len"].to_numpy()


class PositionTally:
    """Per (topic, partition) of the frames added: the lowest and highest Kafka offset and the rows."""

    def __init__(self) -> None:
        self._parts: list[pl.DataFrame] = []

    def add(self, frame: pl.DataFrame) -> None:
        """Count ``frame``'s rows (columns kafka_topic, kafka_partition, kafka_offset)."""
        self._parts.append(
            frame.group_by("kafka_topic", "kafka_partition").agg(
                pl.col("kafka_offset").min().alias("first"), pl.col("kafka_offset").max().alias("last"),
                pl.len().alias("rows"),
            )
        )  # fmt: skip

    def summary(self, topic_name: Callable[[Any], str] = str) -> tuple[dict[str, object], ...]:
        """One entry per (topic, partition), sorted; ``topic_name`` turns a topic value (e.g. a code)
        into its name."""
        if not self._parts:
            return ()
        merged = (
            pl.concat(self._parts)
            .group_by("kafka_topic", "kafka_partition")
            .agg(pl.col("first").min(), pl.col("last").max(), pl.col("rows").sum())
        )
        return tuple(sorted(
            ({"topic": topic_name(t), "partition": int(p), "first": int(lo), "last": int(hi), "rows": int(n)}
             for t, p, lo, hi, n in merged.iter_rows()),
            key=lambda r: (r["topic"], r["partition"]),
        ))  # fmt: skip


class Checker:
    """Checks rows fed in file order (see the module docstring)."""

    def __init__(self, dataset: Dataset, name: str = "merged file") -> None:
        self.name = name
        self.entity = dataset.entity_key
        self.rest = [c for c in dataset.sort_key if c != self.entity]
        self.key = list(dataset.dedup_key)
        self.columns = list(dict.fromkeys([*dataset.sort_key, *self.key, "kafka_topic", "kafka_partition",
                                           "kafka_offset"]))  # fmt: skip
        self.rows = 0
        self._last: tuple[object, ...] | None = None
        self._carry: pl.DataFrame | None = None
        self._positions = PositionTally()

    def add(self, table: pa.Table | pa.RecordBatch, removed: pl.DataFrame | None = None) -> None:
        """Check the next rows; ``removed``: de-dup keys (text) whose repeats were removed from them."""
        if not table.num_rows:
            return
        if any(c not in table.schema.names for c in self.columns):
            missing = sorted(set(self.columns) - set(table.schema.names))
            raise VerificationError(f"{self.name}: missing columns {missing}")
        if isinstance(table, pa.Table):
            table = table.select(self.columns).combine_chunks().to_batches()[0]
        else:
            table = table.select(self.columns)
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        self.rows += frame.height
        values, lengths = _entity_stretches(table.column(self.entity))
        stretch = pl.Series("_s", np.repeat(np.arange(len(values)), lengths))
        first = (values[0], *(frame[c][0] for c in self.rest))
        if (any(a >= b for a, b in zip(values, values[1:], strict=False))
                or not frame.select(pl.struct(stretch, *self.rest).is_sorted()).item()
                or (self._last is not None and first < self._last)):  # type: ignore[operator]  # fmt: skip
            order = ", ".join([self.entity, *self.rest])
            raise VerificationError(f"{self.name}: not sorted by {order} near row {self.rows}")
        self._last = (values[-1], *(frame[c][-1] for c in self.rest))
        keys = frame.select(self.key)
        window = keys if self._carry is None else pl.concat([self._carry, keys], how="vertical")
        hashed = window.select(pl.struct(self.key).hash())[:, 0].to_numpy()
        ordered = np.sort(hashed)
        if (ordered[1:] == ordered[:-1]).any() and window.select(pl.struct(self.key).is_duplicated().any()).item():
            raise VerificationError(f"{self.name}: a de-dup key is held twice near row {self.rows}")
        tail = frame.select(self.entity, "timestamp").row(-1)
        self._carry = keys.filter((pl.col(self.entity) == tail[0]) & (pl.col("timestamp") == tail[1]))
        if removed is not None and removed.height:
            self._twins(keys, hashed[len(window) - len(keys):], removed)
        self._positions.add(frame)

    def _twins(self, keys: pl.DataFrame, hashed: np.ndarray, removed: pl.DataFrame) -> None:
        """Every removed key is among ``keys`` (hashes first, then exactly)."""
        removed = removed.unique().with_columns(
            [pl.col(c).cast(keys.schema[c]) for c in self.key if keys.schema[c] != removed.schema[c]]
        )
        wanted = np.unique(removed.select(pl.struct(self.key).hash())[:, 0].to_numpy())
        hits = keys.filter(pl.Series(member(hashed, wanted)))
        found = removed.join(hits, on=self.key, how="semi", nulls_equal=True).height
        if found != removed.height:
            missing = removed.height - found
            raise VerificationError(f"{self.name}: {missing} keys whose repeats were removed are missing")

    def finish(self, expected_rows: int) -> tuple[dict[str, object], ...]:
        """Check the row count and return, per (topic, partition), the lowest and highest Kafka offset
        and the rows held."""
        if self.rows != expected_rows:
            raise VerificationError(f"{self.name}: {self.rows} rows checked, {expected_rows} expected")
        return self._positions.summary()


def verify_merged(
    path: Path, dataset: Dataset, expected_rows: int, removed_keys: pl.DataFrame | None = None
) -> tuple[dict[str, object], ...]:
    """Read ``path`` back (only the checked columns, strings as dictionaries) and check it; with
    ``removed_keys``, also that each is in the file. Returns the positions it covers."""
    reader = pq.ParquetFile(str(path))
    if reader.metadata.num_rows != expected_rows:
        raise VerificationError(f"{path.name}: footer says {reader.metadata.num_rows} rows, {expected_rows} expected")
    checker = Checker(dataset, path.name)
    strings = [f.name for f in reader.schema_arrow if pa.types.is_string(f.type) and f.name in checker.columns]
    reader = pq.ParquetFile(str(path), read_dictionary=strings)
    found: list[pl.DataFrame] = []
    for batch in reader.iter_batches(batch_size=1 << 19, columns=checker.columns):
        checker.add(batch)
        if removed_keys is not None and removed_keys.height:
            frame = pl.from_arrow(batch.select(checker.key))
            assert isinstance(frame, pl.DataFrame)
            frame = frame.with_columns([pl.col(c).cast(pl.String) for c in checker.key if frame.schema[c] != pl.String])
            found.append(removed_keys.join(frame, on=checker.key, how="semi", nulls_equal=True))
    if removed_keys is not None and removed_keys.height:
        present = pl.concat(found).unique().height if found else 0
        if present != removed_keys.unique().height:
            raise VerificationError(f"{path.name}: keys whose repeats were removed are missing")
    return checker.finish(expected_rows)
