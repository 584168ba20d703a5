"""The fast merge: sources sorted by the domain's sort key are merged entity range by entity range,
reading every source once, sorting only where sources overlap in time and de-duplicating only where
repeats can be.

Why most of the work can be skipped:

- minute files (collector) and merged files (this merger) are sorted by entity, time and position;
  the first pass checks every batch (and sorts one that is not);
- every fact de-dup key holds the entity and the event time, so rows sharing a key lie in the same
  entity range and in sources whose time ranges overlap. Sources are grouped by overlapping time
  ranges; a group of one merged file (already de-duplicated) is not checked, other rows are checked
  with a 64-bit hash of the key and resolved exactly on the few rows whose hash repeats;
- groups are disjoint in time, so within an entity the output is the groups' rows one after the
  other: a range is assembled with one gather, not sorted (a group of several sources, e.g. a minute
  file and its replay, is ordered on its own first).

Memory stays bounded whatever the input size. A pre-pass counts rows per entity (entity column
only) and plans ranges of a size taken from the budget; an entity with more rows than a range holds
is split at event times. The first pass streams each source batch by batch (two sources at once)
into one LZ4 spill file per range, as fixed-width columns: strings become 32-bit codes into one
dictionary per column. The second pass reads one range at a time back. Codes go to the Parquet writer
as dictionary arrays over those dictionaries (cut to the range's values when large), so strings are
never rebuilt row by row. The writer runs in a background thread (zstd, row groups of fixed size, no
Arrow schema hint: readers see plain strings, as in the files DuckDB wrote) while the next range is
prepared. Each range handed to it is checked independently of how it was built: sorted across the
file, each de-dup key once, every removed repeat's twin kept; and the Kafka positions it covers.

Inputs the fast merge does not handle (a de-dup key without the entity or the event time, one
column with two types, a null entity) raise :class:`NotMergeable` before anything is written.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from domains.base import POSITION_KEY
from merger.dataset import Dataset
from merger.periods import Period
from merger.verify import PositionTally, VerificationError, member

ROW_GROUP_ROWS = 122_880
READ_BATCH_ROWS = 65_536
SPILL_COMPRESSION = "lz4"  # of spill files too large for the scratch disk: a fifth of the space for ~10 % more time
SPILL_DISK_SHARE = 0.25  # an uncompressed spill may take this share of the scratch disk's free space
LOCAL_DICTIONARY_BYTES = 64 * 1024  # a column dictionary larger than this is cut per range
HEAVY_TIME_BINS = 4096  # resolution of the event-time histogram that splits an entity too large for one range
SPILL_THREADS = 2  # sources read at once in the first pass (decoding and encoding release the GIL)
BASE_MB = 180  # interpreter, polars, pyarrow and DuckDB loaded, the dictionaries, what allocators keep
RANGE_BYTES_PER_ROW = 1700.0  # two ranges read back (one ahead), the order, gathered rows, the writer's copy, checks


class NotMergeable(Exception):
    """The sources break an assumption of the fast merge; use the general one."""


@dataclass(frozen=True)
class SourceFile:
    """A local Parquet file to merge; ``unique``: known to hold each de-dup key once (a merged file)."""

    path: str
    unique: bool = False


@dataclass(frozen=True)
class MergeOutcome:
    """What a fast merge read and wrote."""

    source_rows: int  # rows of the sources inside the period
    rows: int  # rows written
    duplicates: int  # rows dropped as repeats of a de-dup key
    outside: int  # rows of the sources outside the period
    ranges: int  # entity ranges merged
    sorted_pieces: int  # source batches that were not sorted and had to be (0 for sorted sources)
    positions: tuple[dict[str, object], ...] = ()  # per topic/partition: first/last offset and rows written
    seconds: dict[str, float] = field(default_factory=dict)  # time per step


class _Codes:
    """One string column's dictionary: every value seen, in order of first sight; strings in, 32-bit codes
    out. Safe to share between threads."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.values: list[str] = []
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[pa.Array, pa.Array]] = {}  # id(source dictionary) -> (it, its codes)
        self._dictionary: pa.Array | None = None

    def encode(self, column: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Codes of a string column (nulls stay null)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        source = column.dictionary
        with self._lock:
            cached = self._cache.get(id(source))
            if cached is not None and cached[0] is source:
                mapping = cached[1]  # batches of one row group share its dictionary
            else:
                codes = np.empty(len(source), dtype=np.int32)
                for i, value in enumerate(source.to_pylist()):
                    code = self.index.get(value)
                    if code is None:
                        code = self.index[value] = len(self.values)
                        self.values.append(value)
                        self._dictionary = None
                    codes[i] = code
                mapping = pa.array(codes)
                if len(self._cache) > 8:
                    self._cache.clear()
                self._cache[id(source)] = (source, mapping)
        return pc.take(mapping, column.indices)

    def text(self, codes: np.ndarray) -> list[str]:
        """Strings of a few codes."""
        return [self.values[c] for c in codes.tolist()]

    def dictionary(self) -> pa.Array:
        """All values as an Arrow array (the dictionary the writer gets)."""
        if self._dictionary is None:
            self._dictionary = pa.array(self.values, pa.string())
        return self._dictionary


@dataclass
class _Run:
    """A sorted stretch of one source: whether it is known de-duplicated and its time range."""

    unique: bool
    ts_min: int | None = None
    ts_max: int | None = None
    rows: int = 0
    last_key: tuple[object, ...] | None = None


@dataclass(frozen=True)
class _Piece:
    """A run's rows of one entity range, as one Arrow stream inside the range's spill file."""

    run: int
    offset: int
    length: int


def target_schema(paths: Sequence[str]) -> pa.Schema:
    """Union of the sources' columns by name, in order of first appearance (as DuckDB's union_by_name);
    strings and binaries in their plain Arrow types."""
    out: dict[str, pa.DataType] = {}
    for path in paths:
        for column in pq.read_schema(path):
            dtype = column.type
            if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
                dtype = pa.string()
            elif pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
                dtype = pa.binary()
            if column.name not in out:
                out[column.name] = dtype
            elif out[column.name] != dtype:
                raise NotMergeable(f"column {column.name}: {out[column.name]} and {dtype}")
    return pa.schema(list(out.items()))


def entity_counts(paths: Sequence[str], entity: str) -> dict[str, int]:
    """Rows per entity over all sources, from the entity column alone."""
    counts: dict[str, int] = {}
    for path in paths:
        reader = pq.ParquetFile(path, read_dictionary=[entity])
        for batch in reader.iter_batches(batch_size=1 << 20, columns=[entity]):
            column = batch.column(0)
            if not pa.types.is_dictionary(column.type):
                column = pc.dictionary_encode(column)
            if column.null_count:
                raise NotMergeable(f"{path}: null {entity}")
            n = np.bincount(column.indices.to_numpy(), minlength=len(column.dictionary))
            for value, rows in zip(column.dictionary.to_pylist(), n.tolist(), strict=True):
                if rows:
                    counts[value] = counts.get(value, 0) + rows
    return counts


def heavy_boundaries(
    paths: Sequence[str], entity: str, heavy: dict[str, int], period: Period, max_rows: int
) -> dict[str, list[int]]:
    """For each entity with more than ``max_rows`` rows, event times (µs) splitting its rows into parts
    of about ``max_rows``: from a histogram of its times over the period (rows sharing a de-dup key
    share the time, so no key is split)."""
    bins = HEAVY_TIME_BINS
    start = int(period.start.timestamp() * 1_000_000)
    width = max(1, -(-(int(period.end.timestamp() * 1_000_000) - start) // bins))
    histograms = {value: np.zeros(bins, dtype=np.int64) for value in heavy}
    for path in paths:
        reader = pq.ParquetFile(path, read_dictionary=[entity])
        for batch in reader.iter_batches(batch_size=1 << 20, columns=[entity, "timestamp"]):
            column = batch.column(0)
            if not pa.types.is_dictionary(column.type):
                column = pc.dictionary_encode(column)
            wanted = [(i, v) for i, v in enumerate(column.dictionary.to_pylist()) if v in histograms]
            if not wanted:
                continue
            indices = column.indices.to_numpy()
            stamps = pl.from_arrow(batch.column(1)).dt.epoch("us").fill_null(start - 1).to_numpy()  # type: ignore[union-attr]
            slots = np.clip((stamps - start) // width, 0, bins - 1)
            for i, value in wanted:
                histograms[value] += np.bincount(slots[indices == i], minlength=bins)
    out: dict[str, list[int]] = {}
    for value, histogram in histograms.items():
        parts = -(-int(histogram.sum()) // max_rows)
        cumulative = np.cumsum(histogram)
        targets = cumulative[-1] * np.arange(1, parts) / parts
        slots = np.unique(np.searchsorted(cumulative, targets, side="left"))
        out[value] = [start + (int(slot) + 1) * width for slot in slots if slot < bins - 1]
    return out


@dataclass(frozen=True)
class _Plan:
    """Entity ranges in output order: consecutive entities up to ~``max_rows`` rows each, and an entity
    with more rows alone, in parts split at event times."""

    first: np.ndarray  # per entity rank, the number of its (first) range
    splits: dict[int, np.ndarray]  # per split entity rank, the times (µs) starting its next parts
    ranges: int


def plan_ranges(counts: dict[str, int], max_rows: int, splits: dict[str, list[int]] | None = None) -> _Plan:
    """Ranges over ``counts`` (rows per entity) in text order (see _Plan); ``splits``: the times
    splitting entities with more than ``max_rows`` rows."""
    splits = splits or {}
    first = np.zeros(len(counts), dtype=np.int64)
    split_ranks: dict[int, np.ndarray] = {}
    ranges = 0
    rows = None  # rows in the open range (None: no range open)
    for rank, value in enumerate(sorted(counts)):
        n = counts[value]
        if value in splits:
            first[rank] = ranges
            split_ranks[rank] = np.array(splits[value], dtype=np.int64)
            ranges += len(splits[value]) + 1
            rows = None
            continue
        if rows is None or rows + n > max_rows:
            ranges += 1
            rows = 0
        first[rank] = ranges - 1
        rows += n
    return _Plan(first, split_ranks, ranges)


def _width(dtype: pa.DataType) -> int:
    """Bytes a value of ``dtype`` takes in the spill (an estimate for variable-width types)."""
    if pa.types.is_boolean(dtype) or not pa.types.is_primitive(dtype):
        return 1 if pa.types.is_boolean(dtype) else 16
    return int(dtype.byte_width)


class _Spill:
    """First pass: every source, batch by batch, into one spill file per entity range, as fixed-width
    columns (strings as codes)."""

    def __init__(self, dataset: Dataset, period: Period, schema: pa.Schema, folder: Path,
                 counts: dict[str, int], plan: _Plan) -> None:  # fmt: skip
        self.dataset, self.period, self.schema, self.folder = dataset, period, schema, folder
        self.strings = [f.name for f in schema if pa.types.is_string(f.type)]
        self.codes = {name: _Codes() for name in self.strings}
        self.spill_schema = pa.schema(
            [pa.field(f.name, pa.int32() if f.name in self.codes else f.type) for f in schema]
        )
        self.start_us = int(period.start.timestamp() * 1_000_000)
        self.end_us = int(period.end.timestamp() * 1_000_000)
        self.outside = 0
        self.sorted_pieces = 0
        self.order = [c for c in dataset.sort_key if c != dataset.entity_key]  # within an entity
        if dataset.entity_key not in self.codes or "timestamp" not in schema.names:
            raise NotMergeable(f"{dataset.root}: {dataset.entity_key} is not a string column, or no timestamp")
        if dataset.sort_key[0] != dataset.entity_key:
            raise NotMergeable(f"{dataset.root}: sort key does not start with {dataset.entity_key}")
        self.rank_of_text = {value: rank for rank, value in enumerate(sorted(counts))}
        self.plan = plan
        self.ranges = plan.ranges
        self.pieces: list[list[_Piece]] = [[] for _ in range(plan.ranges)]
        self.runs: list[_Run] = []
        self.rank = np.zeros(0, dtype=np.int64)  # text rank of each entity code
        self._lock = threading.Lock()  # runs, pieces, spill files, counters, ranks
        # Uncompressed while the spill (about the rows' fixed-width size) fits the disk easily.
        row_bytes = sum(4 if f.name in self.codes else _width(f.type) for f in schema)
        roomy = sum(counts.values()) * row_bytes < SPILL_DISK_SHARE * shutil.disk_usage(folder).free
        self.options = ipc.IpcWriteOptions(compression=None if roomy else SPILL_COMPRESSION)

    def path(self, number: int) -> Path:
        """Spill file of range ``number``."""
        return self.folder / f"range-{number:05d}.arrows"

    def remove(self) -> None:
        """Delete every spill file left."""
        for number in range(self.ranges):
            self.path(number).unlink(missing_ok=True)

    def add(self, source: SourceFile) -> None:
        """Spill one source: one run, or several when its batches are not in order (each sorted).
        Sources may be spilled by several threads at once."""
        present = set(pq.read_schema(source.path).names)
        reader = pq.ParquetFile(source.path, read_dictionary=[n for n in self.strings if n in present],
                                pre_buffer=False, buffer_size=1 << 20)  # fmt: skip
        run: _Run | None = None
        number = -1
        for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, use_threads=False):
            frame = self._encode(batch, present)
            if not frame.height:
                continue
            frame, ranks, lengths, first, last = self._sorted(frame)
            if run is None or run.last_key is None or first < run.last_key:
                run = _Run(source.unique)
                with self._lock:
                    number = len(self.runs)
                    self.runs.append(run)
            run.last_key = last
            stamp = frame["timestamp"].dt.epoch("us")
            lo, hi = stamp.min(), stamp.max()
            assert isinstance(lo, int) and isinstance(hi, int)
            run.ts_min = lo if run.ts_min is None else min(run.ts_min, lo)
            run.ts_max = hi if run.ts_max is None else max(run.ts_max, hi)
            run.rows += frame.height
            self._split(frame, ranks, lengths, number)

    def _split(self, frame: pl.DataFrame, ranks: np.ndarray, lengths: np.ndarray, run: int) -> None:
        """Append the batch's rows of each range to that range's spill file."""
        cuts = np.concatenate([[0], np.cumsum(lengths)])
        segments: list[tuple[int, int, int]] = []  # (range, first row, end row)
        stamps: np.ndarray | None = None
        for rank, a, b in zip(ranks.tolist(), cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            first = int(self.plan.first[rank])
            split = self.plan.splits.get(rank)
            if split is None:
                parts = [(first, a, b)]
            else:  # an entity in parts by event time (sorted within the entity)
                if stamps is None:
                    stamps = frame["timestamp"].dt.epoch("us").to_numpy()
                ends = a + np.searchsorted(stamps[a:b], split, side="left")
                edges = [a, *ends.tolist(), b]
                parts = [(first + i, edges[i], edges[i + 1]) for i in range(len(edges) - 1) if edges[i] < edges[i + 1]]
            for number, x, y in parts:
                if segments and segments[-1][0] == number:
                    segments[-1] = (number, segments[-1][1], y)
                else:
                    segments.append((number, x, y))
        table = frame.to_arrow()
        for number, x, y in segments:
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, self.spill_schema, options=self.options) as writer:
                writer.write_table(table.slice(x, y - x))
            data = sink.getvalue()
            with self._lock, open(self.path(number), "ab") as out:
                offset = out.tell()
                out.write(data)
                self.pieces[number].append(_Piece(run, offset, data.size))

    def _encode(self, batch: pa.RecordBatch, present: set[str]) -> pl.DataFrame:
        """The batch's rows inside the period, with the target columns, strings as codes."""
        arrays = []
        for f in self.schema:
            if f.name not in present:
                arrays.append(pa.nulls(batch.num_rows, pa.int32() if f.name in self.codes else f.type))
            elif f.name in self.codes:
                arrays.append(self.codes[f.name].encode(batch.column(f.name)))
            else:
                arrays.append(batch.column(f.name).cast(f.type))
        frame = pl.from_arrow(pa.RecordBatch.from_arrays(arrays, schema=self.spill_schema))
        assert isinstance(frame, pl.DataFrame)
        stamp = frame["timestamp"].dt.epoch("us")
        lo, hi = stamp.min(), stamp.max()
        if stamp.null_count() or lo is None or hi is None or lo < self.start_us or hi >= self.end_us:  # type: ignore[operator]
            inside = frame.filter((stamp >= self.start_us) & (stamp < self.end_us))
            with self._lock:
                self.outside += frame.height - inside.height
            frame = inside
        if any(frame[c].null_count() for c in self.dataset.sort_key):
            raise NotMergeable(f"{self.dataset.root}: nulls in the sort key {self.dataset.sort_key}")
        return frame

    def _ranks(self, codes: np.ndarray) -> np.ndarray:
        """Text ranks of entity codes."""
        values = self.codes[self.dataset.entity_key].values
        with self._lock:
            if len(self.rank) < len(values):
                missing = [self.rank_of_text.get(v, -1) for v in values[len(self.rank):]]
                if -1 in missing:
                    raise NotMergeable(f"{self.dataset.root}: an entity changed between passes")
                self.rank = np.concatenate([self.rank, np.array(missing, dtype=np.int64)])
            rank = self.rank
        return rank[codes]

    def _sorted(
        self, frame: pl.DataFrame
    ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray, tuple[object, ...], tuple[object, ...]]:
        """The batch sorted by the sort key (checked; sorted when it is not), the text rank and row
        count of each entity stretch, and its first and last key.

        Sorted means: each entity in one stretch, the stretches in text order, and inside each the
        rest of the sort key non-decreasing."""
        entity = self.dataset.entity_key
        runs = frame[entity].rle().struct.unnest()
        ranks = self._ranks(runs["value"].to_numpy())
        lengths = runs["len"].cast(pl.Int64).to_numpy()
        ordered = bool(np.all(np.diff(ranks) > 0))
        if ordered and self.order:
            stretch = pl.Series("_s", np.repeat(np.arange(len(ranks)), lengths))
            ordered = bool(frame.select(pl.struct(stretch, *self.order).is_sorted()).item())
        if not ordered:
            rank = pl.Series("_rank", self._ranks(frame[entity].to_numpy()))
            order = frame.select(rank, *self.order).with_row_index("_i").sort(["_rank", *self.order])["_i"]
            frame = frame[order]
            with self._lock:
                self.sorted_pieces += 1
            runs = frame[entity].rle().struct.unnest()
            ranks = self._ranks(runs["value"].to_numpy())
            lengths = runs["len"].cast(pl.Int64).to_numpy()
        first = (int(ranks[0]), *(frame[c][0] for c in self.order))
        last = (int(ranks[-1]), *(frame[c][-1] for c in self.order))
        return frame, ranks, lengths, first, last


def _time_groups(runs: Sequence[_Run]) -> list[list[int]]:
    """Run numbers grouped so that groups are disjoint in time (closed ranges), in time order."""
    groups: list[list[int]] = []
    end: int | None = None
    for number in sorted((i for i, r in enumerate(runs) if r.rows), key=lambda i: (runs[i].ts_min, runs[i].ts_max)):
        run = runs[number]
        assert run.ts_min is not None and run.ts_max is not None
        if groups and end is not None and run.ts_min <= end:
            groups[-1].append(number)
            end = max(end, run.ts_max)
        else:
            groups.append([number])
            end = run.ts_max
    return groups


def _losers(keys: pl.DataFrame, key: Sequence[str], topics: _Codes | None) -> np.ndarray:
    """Rows (``_row``) of ``keys`` that repeat a de-dup key held by a row with a lower Kafka position.

    A 64-bit hash of the key finds the candidates (sorting the hashes is cheaper than a hash table);
    only rows whose hash repeats are compared exactly, with topics as text."""
    hashed = keys.select(pl.struct(list(key)).hash())[:, 0].to_numpy()
    values = np.sort(hashed)
    repeated = values[1:][values[1:] == values[:-1]]
    if not len(repeated):
        return np.zeros(0, np.int64)
    candidates = keys.filter(pl.Series(member(hashed, np.unique(repeated))))
    if topics is not None:
        candidates = candidates.with_columns(
            pl.Series("kafka_topic", topics.text(candidates["kafka_topic"].to_numpy()), dtype=pl.String)
        )
    candidates = candidates.sort([*key, *POSITION_KEY], nulls_last=True)
    return candidates.filter(~pl.struct(list(key)).is_first_distinct())["_row"].to_numpy()


class _Checks:
    """Checks of the rows handed to the writer, on their codes: sorted by the sort key (the entity by
    text rank) across the whole file, each de-dup key once (rows sharing a key share the entity and the
    time, so the same range), every removed repeat's twin kept; and the Kafka positions covered.
    Independent of how the merge ordered and de-duplicated the rows."""

    def __init__(self, dataset: Dataset, rank: np.ndarray, topics: _Codes | None, name: str) -> None:
        self.entity, self.rank, self.topics, self.name = dataset.entity_key, rank, topics, name
        self.rest = [c for c in dataset.sort_key if c != dataset.entity_key]
        self.key = list(dataset.dedup_key)
        self.rows = 0
        self._last: tuple[object, ...] | None = None
        self._positions = PositionTally()

    def columns(self) -> list[str]:
        """The columns checked."""
        return list(dict.fromkeys([*self.rest, *self.key, self.entity, "kafka_topic", "kafka_partition",
                                   "kafka_offset"]))  # fmt: skip

    def add(self, frame: pl.DataFrame, removed: pl.DataFrame | None) -> None:
        """Check one range's rows (:meth:`columns`, strings as codes); ``removed``: the de-dup keys
        (codes) whose repeats were removed."""
        frame = frame.with_columns(pl.Series("_rank", self.rank[frame[self.entity].to_numpy()]))
        self.rows += frame.height
        first = tuple(frame.select("_rank", *self.rest).row(0))
        if (not frame.select(pl.struct("_rank", *self.rest).is_sorted()).item()
                or (self._last is not None and first < self._last)):  # type: ignore[operator]  # fmt: skip
            raise VerificationError(f"{self.name}: rows not sorted near row {self.rows}")
        self._last = tuple(frame.select("_rank", *self.rest).row(-1))
        hashed = frame.select(pl.struct(self.key).hash())[:, 0].to_numpy()
        ordered = np.sort(hashed)
        if (ordered[1:] == ordered[:-1]).any() and frame.select(pl.struct(self.key).is_duplicated().any()).item():
            raise VerificationError(f"{self.name}: a de-dup key is held twice near row {self.rows}")
        if removed is not None and removed.height:
            wanted = np.unique(removed.select(pl.struct(self.key).hash())[:, 0].to_numpy())
            hits = frame.select(self.key).filter(pl.Series(member(hashed, wanted)))
            missing = removed.height - removed.join(hits, on=self.key, how="semi", nulls_equal=True).height
            if missing:
                raise VerificationError(f"{self.name}: {missing} keys whose repeats were removed are missing")
        self._positions.add(frame)

    def finish(self, expected_rows: int) -> tuple[dict[str, object], ...]:
        """Check the row count; per (topic, partition), the lowest and highest offset and the rows."""
        if self.rows != expected_rows:
            raise VerificationError(f"{self.name}: {self.rows} rows checked, {expected_rows} written")
        topics = self.topics
        return self._positions.summary(str if topics is None else lambda code: str(topics.values[code]))


class _Writer:
    """Writes Arrow tables to one Parquet file in a background thread, in row groups of fixed size."""

    def __init__(self, path: Path, schema: pa.Schema, compression_level: int | None) -> None:
        self.path, self.schema, self.level = path, schema, compression_level
        self.rows = 0
        self._queue: queue.Queue[pa.Table | None] = queue.Queue()
        self._free = threading.Semaphore(1)  # one range in the writer while the next is prepared
        self._error: BaseException | None = None
        self._writer: pq.ParquetWriter | None = None
        self._thread = threading.Thread(target=self._loop, name="merge-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.cpu = 0.0
        started = time.thread_time()
        try:
            self._write_queued()
        finally:
            self.cpu = time.thread_time() - started

    def _write_queued(self) -> None:
        carry: pa.Table | None = None
        try:
            while (table := self._queue.get()) is not None:
                if carry is not None:
                    table = pa.concat_tables([carry, table])
                full = table.num_rows - table.num_rows % ROW_GROUP_ROWS
                if full:
                    self._write(table.slice(0, full))
                carry = table.slice(full) if full < table.num_rows else None
                del table
                self._free.release()
            if carry is not None:
                self._write(carry)
        except BaseException as exc:  # reported by put() and close()
            self._error = exc
            self._free.release()
            while self._queue.get() is not None:  # let the producer finish
                self._free.release()

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            strings = [f.name for f in self.schema if pa.types.is_string(f.type)]
            self._writer = pq.ParquetWriter(
                str(self.path), table.schema, compression="zstd", compression_level=self.level,
                use_dictionary=strings, write_statistics=True, store_schema=False,
            )  # fmt: skip
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def put(self, table: pa.Table) -> None:
        """Hand rows to the writer (waits while the previous range is still being written)."""
        self._free.acquire()
        if self._error is not None:
            raise self._error
        self._queue.put(table)

    def close(self) -> int:
        """Flush, close and return the rows written."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._writer is None:
            pq.write_table(self.schema.empty_table(), str(self.path), compression="zstd", store_schema=False)
        else:
            self._writer.close()
        return self.rows


class _Ranges:
    """Second pass: one entity range at a time, read back from its spill file and written in one gather."""

    def __init__(self, dataset: Dataset, spill: _Spill) -> None:
        self.dataset, self.spill = dataset, spill
        self.groups = _time_groups(spill.runs)
        self.group_of = {run: n for n, group in enumerate(self.groups) for run in group}
        # A group may hold repeated keys unless it is one merged file.
        self.check = [len(g) > 1 or not spill.runs[g[0]].unique for g in self.groups]
        self.duplicates = 0
        self.removed: pl.DataFrame | None = None  # the current range's keys whose repeats were removed
        self.entity = dataset.entity_key
        self.order = [c for c in dataset.sort_key if c != dataset.entity_key]
        self.key = list(dataset.dedup_key)
        self.key_columns = list(dict.fromkeys([*self.key, *POSITION_KEY]))
        self.dictionaries = {name: codes.dictionary() for name, codes in spill.codes.items()}
        self.out_schema = pa.schema(
            [pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in self.dictionaries else f
             for f in spill.schema]
        )  # fmt: skip

    def _read(self, number: int) -> tuple[pl.DataFrame, list[np.ndarray]]:
        """The range's rows as spilled (one chunk per piece), and the row numbers of each piece."""
        path = self.spill.path(number)
        with pa.OSFile(str(path)) as source:
            data = source.read_buffer()
        path.unlink()
        tables = [ipc.open_stream(data.slice(p.offset, p.length)).read_all() for p in self.spill.pieces[number]]
        frame = pl.from_arrow(pa.concat_tables(tables))
        assert isinstance(frame, pl.DataFrame)
        frame = frame.rechunk()  # one copy makes the gathers below several times faster
        ends = np.cumsum([t.num_rows for t in tables])
        return frame, [np.arange(end - t.num_rows, end) for t, end in zip(tables, ends.tolist(), strict=True)]

    def _losers(self, frame: pl.DataFrame, rows: np.ndarray | None) -> np.ndarray:
        """Rows of ``frame`` (among ``rows``, or all) that repeat a de-dup key with a lower Kafka position."""
        keys = frame.select(self.key_columns)
        if rows is not None:
            keys = keys[rows]
        found = _losers(keys.with_row_index("_row"), self.key, self.spill.codes.get("kafka_topic"))
        if len(found):
            self.removed = keys[found].select(self.key).unique()
        return found if rows is None else rows[found]

    def _index(self, number: int, frame: pl.DataFrame, pieces: list[np.ndarray]) -> np.ndarray:
        """Row numbers of ``frame`` in output order, without repeated keys: per time group its rows in
        sort order (a group of one run is in order already), then the groups' stretches of each entity
        one after the other."""
        rows_of: dict[int, list[np.ndarray]] = {}
        runs_of: dict[int, set[int]] = {}
        for piece, rows in zip(self.spill.pieces[number], pieces, strict=True):
            group = self.group_of[piece.run]
            rows_of.setdefault(group, []).append(rows)
            runs_of.setdefault(group, set()).add(piece.run)
        checked = [g for g in rows_of if self.check[g]]
        keep = np.ones(frame.height, dtype=bool)
        if checked:
            every = len(checked) == len(rows_of)
            losers = self._losers(frame, None if every else np.concatenate([r for g in checked for r in rows_of[g]]))
            keep[losers] = False
            self.duplicates += len(losers)
        rank = self.spill.rank[frame[self.entity].to_numpy()]
        blocks_rank, blocks_group, blocks_rows = [], [], []
        for group in sorted(rows_of):
            rows = np.concatenate(rows_of[group])
            if len(runs_of[group]) > 1:  # sources overlapping in time: sort their rows together
                keys = frame.select(self.order)[rows].with_columns(pl.Series("_rank", rank[rows])).with_row_index("_i")
                rows = rows[keys.sort(["_rank", *self.order])["_i"].to_numpy()]
            rows = rows[keep[rows]]
            if not len(rows):
                continue
            group_rank = rank[rows]
            cuts = np.concatenate([[0], np.flatnonzero(np.diff(group_rank)) + 1, [len(rows)]])
            blocks_rank.append(group_rank[cuts[:-1]])
            blocks_group.append(np.full(len(cuts) - 1, group))
            blocks_rows += [rows[a:b] for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True)]
        if not blocks_rows:
            return np.zeros(0, dtype=np.int64)
        sequence = np.lexsort((np.concatenate(blocks_group), np.concatenate(blocks_rank)))
        return np.concatenate([blocks_rows[i] for i in sequence.tolist()])

    def _arrow(self, frame: pl.DataFrame) -> pa.Table:
        """The rows for the writer: codes as dictionary arrays over the column dictionaries (a large
        dictionary cut to the values the range uses: the writer stores a dictionary per row group)."""
        arrays = []
        for name, column in zip(frame.columns, frame.iter_columns(), strict=True):
            array = column.to_arrow(compat_level=pl.CompatLevel.newest())
            if name in self.dictionaries:
                dictionary = self.dictionaries[name]
                if dictionary.nbytes > LOCAL_DICTIONARY_BYTES:
                    codes = column.to_numpy()
                    used = np.flatnonzero(np.bincount(codes[codes >= 0] if column.null_count() else codes,
                                                      minlength=len(dictionary)))  # fmt: skip
                    local = np.full(len(dictionary), -1, dtype=np.int32)
                    local[used] = np.arange(len(used), dtype=np.int32)
                    array = pc.take(pa.array(local), array)  # nulls stay null
                    dictionary = dictionary.take(pa.array(used))
                array = pa.DictionaryArray.from_arrays(array, dictionary)
            arrays.append(array)
        return pa.Table.from_arrays(arrays, schema=self.out_schema)

    def tables(
        self, timings: dict[str, float], checked: list[str]
    ) -> Iterator[tuple[pa.Table, pl.DataFrame, pl.DataFrame | None]]:
        """Each range's rows, de-duplicated and sorted, with their ``checked`` columns (codes) and the
        keys whose repeats were removed."""
        numbers = [n for n in range(self.spill.ranges) if self.spill.pieces[n]]
        # The next range is read (decompressed, converted) in a thread while this one is ordered.
        with ThreadPoolExecutor(1, thread_name_prefix="merge-read") as pool:
            ahead = pool.submit(self._read, numbers[0]) if numbers else None
            for i, number in enumerate(numbers):
                self.removed = None
                clock = time.perf_counter()
                assert ahead is not None
                frame, pieces = ahead.result()
                ahead = pool.submit(self._read, numbers[i + 1]) if i + 1 < len(numbers) else None
                timings["read"] += time.perf_counter() - clock
                clock = time.perf_counter()
                index = self._index(number, frame, pieces)
                timings["order"] += time.perf_counter() - clock
                clock = time.perf_counter()
                out = frame[index]
                del frame
                table = self._arrow(out) if out.height else None
                timings["gather"] += time.perf_counter() - clock
                if table is not None:
                    yield table, out.select(checked), self.removed


def check_mergeable(dataset: Dataset) -> None:
    """Raise NotMergeable when the dataset's de-dup key lacks its entity or the event time."""
    if dataset.entity_key not in dataset.dedup_key or "timestamp" not in dataset.dedup_key:
        raise NotMergeable(f"{dataset.root}: de-dup key {dataset.dedup_key} lacks {dataset.entity_key} or timestamp")


@contextlib.contextmanager
def _returning_memory() -> Iterator[None]:
    """Arrow allocations from jemalloc with freed pages returned at once (the default pools keep them
    for reuse, which shows as resident memory); the previous default pool afterwards."""
    previous = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        yield
        return
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def range_rows(memory_limit_mb: int) -> int:
    """Rows merged at once so that a range fits the budget next to the loaded libraries."""
    free = max(64, memory_limit_mb - BASE_MB) * 2**20
    return max(20_000, int(free / RANGE_BYTES_PER_ROW))


def merge_sorted(
    dataset: Dataset,
    period: Period,
    files: Sequence[SourceFile],
    out: Path,
    scratch: Path,
    memory_limit_mb: int = 512,
    max_rows: int | None = None,
    compression_level: int | None = None,
) -> MergeOutcome:
    """Merge ``files`` into ``out``: the period's rows, once per de-dup key (lowest Kafka position
    wins), sorted by the dataset's sort key; ``scratch`` holds the spill. Raises NotMergeable
    (nothing written) when an assumption does not hold."""
    started = time.perf_counter()
    timings = dict.fromkeys(("count", "spill", "read", "order", "gather", "check", "put", "close"), 0.0)
    check_mergeable(dataset)
    with contextlib.ExitStack() as cleanup:
        paths = [f.path for f in files]
        schema = target_schema(paths)
        counts = entity_counts(paths, dataset.entity_key)
        max_rows = max_rows or range_rows(memory_limit_mb)
        heavy = {value: n for value, n in counts.items() if n > max_rows}
        splits = heavy_boundaries(paths, dataset.entity_key, heavy, period, max_rows) if heavy else {}
        timings["count"] = time.perf_counter() - started
        spill = _Spill(dataset, period, schema, scratch, counts, plan_ranges(counts, max_rows, splits))
        cleanup.callback(spill.remove)
        with ThreadPoolExecutor(SPILL_THREADS, thread_name_prefix="merge-spill") as pool:
            list(pool.map(spill.add, files))
        pa.default_memory_pool().release_unused()  # decoding buffers of the first pass
        timings["spill"] = time.perf_counter() - started - timings["count"]
        ranges = _Ranges(dataset, spill)
        checker = _Checks(dataset, spill.rank, spill.codes.get("kafka_topic"), f"{dataset.root} {period.name}")
        writer = _Writer(out, schema, compression_level)
        try:
            for table, checked, removed in ranges.tables(timings, checker.columns()):
                clock = time.perf_counter()
                checker.add(checked, removed)  # the very rows handed to the writer
                timings["check"] += time.perf_counter() - clock
                clock = time.perf_counter()
                writer.put(table)
                del table, checked, removed
                timings["put"] += time.perf_counter() - clock
        finally:
            clock = time.perf_counter()
            rows = writer.close()
            timings["close"] = time.perf_counter() - clock
            timings["writer_cpu"] = writer.cpu
    positions = checker.finish(rows)
    return MergeOutcome(sum(r.rows for r in spill.runs), rows, ranges.duplicates, spill.outside, spill.ranges,
                        spill.sorted_pieces, positions, {k: round(v, 2) for k, v in timings.items()})  # fmt: skip
