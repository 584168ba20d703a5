"""Duplicate-detection state of one source partition: de-dup keys seen within the watermark.

A :class:`SeenKeys` holds, for each de-dup key seen, the position that first carried it (offset,
item_index) and its event time, as polars columns in native types: string key columns Categorical
(4 bytes a row), time key columns Int64 epoch microseconds; 28 bytes a key for equipment_metrics.
Rows are grouped by event time in buckets of :data:`BUCKET_US` (a segment is one bucket, or a run
of sparse ones merged), so that

- a batch is checked with one join (:func:`lookup`, all partitions at once) against only the
  segments its rows' event times fall in: a de-dup key holds the event time, so it can only match an
  entry of its own bucket. The cost follows the batch, not the size of the state;
- expiry drops whole segments below the watermark, oldest first (no copy). Until its segment goes,
  an entry below the watermark is still stored but no longer matches (``limit``);
- new rows are appended as chunks (:func:`store`); a segment is rechunked once it is no longer one
  of the two newest buckets (or at :data:`MAX_CHUNKS` chunks), and merged with the one before it
  while both hold at most :data:`TARGET_ROWS`, so each row is copied about once and a sparse
  partition keeps a few frames, not one per second.

A key whose event time is not one of its columns (no domain has one today) is looked up in every
segment. :meth:`SeenKeys.frame` is the canonical table of the live entries (strings as String,
ordered by position); :meth:`SeenKeys.to_parquet` writes it deterministically for snapshots and
:meth:`SeenKeys.from_parquet` reads it back.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

OFFSET, ITEM = "kafka_offset", "item_index"
EVENT = "_event_us"  # event time (epoch µs) of a row; stored only when no key column holds it
SEEN_OFFSET, SEEN_ITEM = "_seen_offset", "_seen_item"  # added by lookup: the live entry's position
BUCKET_US = 1_000_000  # 1 s of event time per bucket
MAX_CHUNKS = 16
TARGET_ROWS = 1024  # settled segments smaller than this are merged with their neighbour
_BUCKET = "_bucket"


def normalize_keys(rows: pl.DataFrame, keys: Sequence[str]) -> list[pl.Expr]:
    """Expressions giving ``keys`` of ``rows`` in the stored types (Categorical, epoch µs)."""
    out = []
    for name in keys:
        dtype = rows.schema[name]
        if isinstance(dtype, pl.Datetime):
            out.append(pl.col(name).dt.epoch("us"))
        elif dtype == pl.String:
            out.append(pl.col(name).cast(pl.Categorical))
        else:
            out.append(pl.col(name))
    return out


class SeenKeys:
    """De-dup keys of one partition with their first position and event time; see the module docstring."""

    def __init__(self, keys: Sequence[str] = (), event: str = EVENT) -> None:
        self.keys: tuple[str, ...] = tuple(keys)
        self.event = event  # the column holding the event time: a key column or EVENT
        self.limit: int | None = None  # entries with an older event time are expired (last expire())
        self._clear()

    def _clear(self) -> None:
        # Segments: disjoint bucket ranges [start, end], sorted; one frame each.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._frames: list[pl.DataFrame] = []
        self._dirty: set[int] = set()  # buckets appended to since the last expire()

    def __len__(self) -> int:
        """Stored rows (expired ones whose segment is not dropped yet included)."""
        return sum(f.height for f in self._frames)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeenKeys):
            return NotImplemented
        return (self.keys, self.event) == (other.keys, other.event) and self.frame().equals(other.frame())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SeenKeys(keys={self.keys!r}, rows={len(self)}, segments={len(self._frames)})"

    @property
    def columns(self) -> list[str]:
        """Stored columns, in order."""
        return [*self.keys, OFFSET, ITEM, *([EVENT] if self.event == EVENT else [])]

    @property
    def segments(self) -> int:
        """Number of stored frames."""
        return len(self._frames)

    def estimated_size(self) -> int:
        """Bytes held by the stored frames (polars' estimate)."""
        return sum(int(f.estimated_size()) for f in self._frames)

    def configure(self, keys: Sequence[str], event: str) -> None:
        """Use these key columns (forgetting the entries if the key changed, e.g. an older state)."""
        if (tuple(keys), event) != (self.keys, self.event):
            self.keys, self.event, self.limit = tuple(keys), event, None
            self._clear()

    # -- per batch ------------------------------------------------------------------------------

    def candidates(self, buckets: Iterable[int], limit: int) -> list[pl.DataFrame]:
        """Stored rows that a batch row in one of ``buckets`` can match, live ones only (event time >= ``limit``)."""
        found: Iterable[int]
        if self.event == EVENT:  # the key does not hold the event time: a key can be in any bucket
            found = range(len(self._frames))
        else:
            found = sorted({i for i in map(self._find, buckets) if i is not None})
        frames = [(self._frames[i], self._starts[i] * BUCKET_US < limit) for i in found]
        return [frame.filter(pl.col(self.event) >= limit) if old else frame for frame, old in frames]

    def add(self, entries: pl.DataFrame) -> None:
        """Store new entries (normalized key columns, kafka_offset, item_index, EVENT; keys not stored yet)."""
        store(entries.with_columns(pl.lit(0, pl.Int32).alias("kafka_partition")), {0: self})

    def append(self, bucket: int, part: pl.DataFrame) -> None:
        """Add rows (:attr:`columns`) whose event times fall in ``bucket``."""
        i = self._find(bucket)
        if i is None:
            i = bisect.bisect(self._starts, bucket)
            self._starts.insert(i, bucket)
            self._ends.insert(i, bucket)
            self._frames.insert(i, part)
        else:
            frame = self._frames[i].vstack(part, in_place=True)
            if frame.n_chunks() > MAX_CHUNKS:
                self._frames[i] = frame.rechunk()
        self._dirty.add(bucket)

    def expire(self, limit: int) -> None:
        """After a batch: forget entries older than ``limit``; compact the segments that settled.

        Whole segments whose last bucket is below ``limit`` are dropped. A segment appended to that is
        no longer one of the two newest buckets is rechunked, and merged into the one before it when
        both hold at most :data:`TARGET_ROWS` together (so sparse partitions keep few frames).
        """
        self.limit = limit
        expired = bisect.bisect_right(self._ends, limit // BUCKET_US - 1)  # (end + 1) × BUCKET_US <= limit
        if expired:
            del self._starts[:expired], self._ends[:expired], self._frames[:expired]
        self._compact()

    def _compact(self) -> None:
        if not self._dirty or not self._frames:
            self._dirty.clear()
            return
        recent = self._ends[-1] - 1
        settled = {i for i in map(self._find, self._dirty) if i is not None and self._ends[i] < recent}
        self._dirty = {b for b in self._dirty if b >= recent}
        # From the newest settled segment down, each merges into the one before it while both fit in
        # TARGET_ROWS; a chain of merges is planned on heights first and then made with one concat.
        members: dict[int, list[int]] = {}  # segment -> the segments it ends up holding, in order
        heights = {i: self._frames[i].height for i in settled}
        for i in sorted(settled, reverse=True):
            held = members.pop(i, [i])
            together = heights.get(i - 1, self._frames[i - 1].height) + heights[i] if i > 0 else TARGET_ROWS + 1
            if together <= TARGET_ROWS:
                members[i - 1] = [*members.get(i - 1, [i - 1]), *held]
                heights[i - 1] = together
            else:
                members[i] = held
        for i in sorted(members, reverse=True):  # changing i leaves the lower indexes as they are
            held = members[i]
            if len(held) > 1:
                self._frames[i] = pl.concat([self._frames[j] for j in held], rechunk=True)
                self._ends[i] = self._ends[held[-1]]
                del self._starts[i + 1 : held[-1] + 1], self._ends[i + 1 : held[-1] + 1]
                del self._frames[i + 1 : held[-1] + 1]
            elif i in settled and self._frames[i].n_chunks() > 1:
                self._frames[i] = self._frames[i].rechunk()

    def _find(self, bucket: int) -> int | None:
        """Index of the segment holding ``bucket``, if any."""
        i = bisect.bisect(self._starts, bucket) - 1
        return i if i >= 0 and self._ends[i] >= bucket else None

    # -- snapshot form --------------------------------------------------------------------------

    def frame(self) -> pl.DataFrame:
        """The live entries: key columns (strings as String), offset, item_index (and EVENT), by position."""
        live = self._live()
        if live is None:
            return pl.DataFrame(schema=dict.fromkeys(self.columns, pl.Null()))
        return live.with_columns(pl.col(pl.Categorical).cast(pl.String))

    def to_parquet(self) -> tuple[int, bytes]:
        """:meth:`frame` as deterministic Parquet (see :func:`parquet_bytes`): (rows, bytes); (0, b"") if none.

        String columns are written as dictionaries sorted by value, straight from the Categorical codes.
        """
        live = self._live()
        if live is None:
            return 0, b""
        table = pa.table({c: _sorted_dictionary(live[c]) if live.schema[c] == pl.Categorical else live[c].to_arrow()
                          for c in live.columns})  # fmt: skip
        return live.height, parquet_bytes(table)

    def _live(self) -> pl.DataFrame | None:
        """The live entries in stored types, ordered by position (the canonical order); None if none."""
        if not self._frames:
            return None
        frame = pl.concat(self._frames, rechunk=False)
        if self.limit is not None:
            frame = frame.filter(pl.col(self.event) >= self.limit)
        if frame.height == 0:
            return None
        low, high = frame.select(
            pl.min_horizontal(pl.col(OFFSET).min(), pl.col(ITEM).min()).alias("low"),
            pl.max_horizontal(pl.col(OFFSET).max() // 2**31, pl.col(ITEM).max()).alias("high"),
        ).row(0)
        if low >= 0 and high < 2**16:  # offsets below 2**47 and items below 2**16: one integer sort key, faster
            return frame.sort(pl.col(OFFSET) * 2**16 + pl.col(ITEM))
        return frame.sort(OFFSET, ITEM)

    @classmethod
    def from_parquet(cls, data: bytes, keys: Sequence[str], event: str) -> SeenKeys:
        """Inverse of :meth:`to_parquet`."""
        return cls.from_frame(pl.from_arrow(pq.read_table(io.BytesIO(data))), keys, event)  # type: ignore[arg-type]

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, keys: Sequence[str], event: str) -> SeenKeys:
        """Entries from a :meth:`frame`-shaped table."""
        seen = cls(keys, event)
        if frame.height:
            frame = frame.with_columns(pl.col(pl.String).cast(pl.Categorical))
            if event != EVENT:
                frame = frame.with_columns(pl.col(event).alias(EVENT))
            seen.add(frame)
            seen._compact()
        return seen

    @classmethod
    def from_v1(cls, seen: dict[str, list[int]], key_schema: dict[str, pl.DataType], event: str) -> SeenKeys:
        """Entries of a version-1 snapshot: key string (parts joined by "|") → [offset, item_index, event_us].

        A part that holds "|" itself makes the split ambiguous (the decoder guarantees non-null key
        parts): the surplus goes to the first string column.
        """
        keys = list(key_schema)
        split = [_split_v1(key, len(keys)) for key in seen]
        columns: dict[str, Any] = {k: [parts[i] for parts in split] for i, k in enumerate(keys)}
        offsets, items, events = zip(*seen.values(), strict=True) if seen else ((), (), ())
        columns |= {OFFSET: list(offsets), ITEM: list(items), EVENT: list(events)}
        frame = pl.DataFrame(columns, schema={**dict.fromkeys(keys, pl.String()), OFFSET: pl.Int64(), ITEM: pl.Int32(),
                                              EVENT: pl.Int64()})  # fmt: skip
        frame = frame.with_columns(
            pl.col(k).cast(pl.Int64 if isinstance(t, pl.Datetime) else t, strict=False) for k, t in key_schema.items()
        )
        return cls.from_frame(frame.drop(EVENT) if event != EVENT else frame, keys, event)

def lookup(batch: pl.DataFrame, tables: Mapping[int, tuple[SeenKeys, int]]) -> pl.DataFrame:
    """Rows of one topic with the position of their key's live entry in their partition's table.

    ``batch``: kafka_partition, the normalized key columns, EVENT (and anything else);
    ``tables``: partition → (its table, the watermark below which entries are expired). Adds
    SEEN_OFFSET and SEEN_ITEM (null when the key has no live entry); row order is kept. One join for
    all partitions, against only the buckets the rows' event times fall in.
    """
    keys = next(iter(tables.values()))[0].keys
    wanted = batch.group_by("kafka_partition").agg((pl.col(EVENT) // BUCKET_US).unique().drop_nulls())
    frames: list[pl.DataFrame] = []
    partitions: list[int] = []
    for partition, buckets in wanted.iter_rows():
        found = [f for f in tables[partition][0].candidates(buckets, tables[partition][1]) if f.height]
        frames += found
        partitions += [partition] * len(found)
    if not frames:
        return batch.with_columns(pl.lit(None, pl.Int64).alias(SEEN_OFFSET), pl.lit(None, pl.Int32).alias(SEEN_ITEM))
    owner = pl.select(pl.Series("kafka_partition", partitions, dtype=pl.Int32)
                      .repeat_by(pl.Series([f.height for f in frames])).explode()).to_series()  # fmt: skip
    live = pl.concat(frames, rechunk=False).select(
        owner, *keys, pl.col(OFFSET).alias(SEEN_OFFSET), pl.col(ITEM).alias(SEEN_ITEM)
    )
    return batch.join(live, on=["kafka_partition", *keys], how="left", nulls_equal=True, maintain_order="left")


def store(entries: pl.DataFrame, tables: Mapping[int, SeenKeys]) -> None:
    """Add new entries (kafka_partition, normalized key columns, kafka_offset, item_index, EVENT; keys
    not stored yet, one row each) to their partitions' tables (all of the same key columns)."""
    entries = entries.filter(pl.col(EVENT).is_not_null())
    if entries.height == 0:
        return
    columns = next(iter(tables.values())).columns
    entries = entries.select("kafka_partition", (pl.col(EVENT) // BUCKET_US).alias(_BUCKET), *columns)
    for (partition, bucket), part in entries.partition_by("kafka_partition", _BUCKET, include_key=False,
                                                          as_dict=True).items():  # fmt: skip
        tables[partition].append(bucket, part)  # type: ignore[index]


def _split_v1(key: str, n: int) -> list[str | None]:
    parts: list[str | None] = list(key.split("|"))
    if len(parts) > n:
        surplus = len(parts) - n
        parts = ["|".join(p for p in parts[: surplus + 1] if p is not None), *parts[surplus + 1 :]]
    return parts + [None] * (n - len(parts))


def _sorted_dictionary(column: pl.Series) -> pa.DictionaryArray:
    """A Categorical column as an Arrow dictionary array whose dictionary is its values, sorted."""
    values = column.unique().drop_nulls()
    names = values.cast(pl.String)
    order = names.arg_sort()
    ranks = pl.int_range(len(order), dtype=pl.UInt32, eager=True)
    codes = column.to_physical().replace_strict(values.to_physical().gather(order), ranks, return_dtype=pl.UInt32)
    return pa.DictionaryArray.from_arrays(codes.to_arrow(), names.gather(order).to_arrow())


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet of a table: zstd, delta-encoded integers, dictionary-encoded strings."""
    strings = [f.name for f in table.schema if not pa.types.is_integer(f.type)]
    ints = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd", use_dictionary=strings, write_statistics=False,
                   column_encoding=dict.fromkeys(ints, "DELTA_BINARY_PACKED"), store_schema=True)  # fmt: skip
    return out.getvalue()
