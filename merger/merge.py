"""One merge: download sources to a scratch folder, merge them under a memory limit (de-duplicate,
sort, zstd), verify the result, then publish it and its manifest.

Sources sorted the way the collector and the merger write them go through the fast merge
(:mod:`merger.sorted_merge`: every source read once, no global sort, de-duplication only where
repeats can be) and a read-back check (:mod:`merger.verify`). Datasets it does not handle (a de-dup
key without the entity or the event time: environmental readings, QC results, DLQ rows) and sources
it cannot use (two types for one column) go through DuckDB, entity range by entity range.

The publish order is file first, manifest second: a crash in between leaves a file without a
manifest, which the next run treats as missing and merges again (same name, overwritten).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from common.layout import parse_minute_key
from merger.catalog import Manifest, manifest_key
from merger.dataset import Dataset
from merger.periods import Period, file_key
from merger.sorted_merge import MergeOutcome, NotMergeable, SourceFile, merge_sorted
from merger.verify import VerificationError
from storage.base import ObjectStore

log = logging.getLogger("merger")

ROW_GROUP_ROWS = 122_880
DUCKDB_SHARE = 0.35  # of the budget; the rest is Python, pyarrow (row-group copies) and the SDKs
CHUNK_ROWS_PER_MB = 2_500  # rows merged at once per MiB of budget: 512 MiB -> ~1.3 M rows per chunk


@dataclass(frozen=True)
class LocalMerge:
    """A merged and verified local file."""

    source_rows: int  # rows of the sources inside the period
    rows: int
    positions: tuple[dict[str, object], ...]
    method: str  # "sorted" (fast merge) or "duckdb"


@dataclass(frozen=True)
class MergeResult:
    """What one merge produced."""

    key: str
    rows: int
    source_rows: int
    bytes: int
    seconds: float
    manifest: Manifest


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _period_filter(period: Period) -> str:
    return (f""""timestamp" >= TIMESTAMPTZ '{period.start.isoformat()}'
              AND "timestamp" < TIMESTAMPTZ '{period.end.isoformat()}'""")


def _sources(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def merge_sql(dataset: Dataset, files: list[str], period: Period, where: str = "TRUE") -> str:
    """The merge query: rows of the period, once per de-dup key (first Kafka position wins), sorted."""
    keys = ", ".join(_quote(c) for c in dataset.dedup_key)
    sort = ", ".join(_quote(c) for c in dataset.sort_key)
    sources = _sources(files)[1:-1]
    return f"""
        SELECT * EXCLUDE (_fms_rank) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY {keys}
                ORDER BY kafka_topic, kafka_partition, kafka_offset, item_index
            ) AS _fms_rank
            FROM read_parquet([{sources}], union_by_name = true, hive_partitioning = false)
            WHERE {_period_filter(period)} AND ({where})
        )
        WHERE _fms_rank = 1
        ORDER BY {sort}
    """


def entity_chunks(counts: list[tuple[str, int]], max_rows: int) -> list[tuple[str, str]]:
    """Split sorted (entity, rows) pairs into inclusive entity ranges of at most ~``max_rows`` rows."""
    chunks: list[tuple[str, str]] = []
    lo: str | None = None
    hi = ""
    rows = 0
    for entity, n in counts:
        if lo is not None and rows + n > max_rows:
            chunks.append((lo, hi))
            lo, rows = None, 0
        lo = entity if lo is None else lo
        hi = entity
        rows += n
    if lo is not None:
        chunks.append((lo, hi))
    return chunks


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _merge_in_chunks(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    period: Period,
    files: list[str],
    out: Path,
    memory_limit_mb: int,
    chunk_rows: int | None = None,
) -> tuple[int, int]:
    """Merge entity range by entity range so the de-dup window and the sort fit the memory limit.

    One pass splits the period's rows into entity-range partitions on local disk; each partition
    is then merged on its own and appended, row group by row group, to one file that stays sorted
    by entity. Small periods are merged in one go.
    """
    entity = _quote(dataset.entity_key)
    keys = ", ".join(_quote(c) for c in dataset.dedup_key)
    counts = con.execute(
        f"SELECT {entity}, count(*) FROM read_parquet({_sources(files)}, union_by_name = true) "
        f"WHERE {_period_filter(period)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    source_rows = sum(n for _, n in counts)
    chunks = entity_chunks(counts, max_rows=chunk_rows or max(100_000, memory_limit_mb * CHUNK_ROWS_PER_MB))
    if len(chunks) <= 1:
        expected = con.execute(
            f"SELECT count(DISTINCT ({keys})) FROM read_parquet({_sources(files)}, union_by_name = true) "
            f"WHERE {_period_filter(period)}"
        ).fetchall()[0][0]
        con.execute(
            f"COPY ({merge_sql(dataset, files, period)}) TO '{out}' "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
        )
        return source_rows, int(expected)

    split = out.with_name("split")
    # Partitioned writes buffer rows per partition and thread: flush small pieces to stay in budget.
    con.execute("SET partitioned_write_flush_threshold = 32768")
    chunk_of = "CASE " + " ".join(f"WHEN {entity} <= {_literal(hi)} THEN {i}" for i, (_, hi) in enumerate(chunks))
    con.execute(
        f"COPY (SELECT *, {chunk_of} END AS _fms_chunk FROM read_parquet({_sources(files)}, union_by_name = true) "
        f"WHERE {_period_filter(period)}) TO '{split}' (FORMAT parquet, PARTITION_BY (_fms_chunk))"
    )
    expected = 0
    writer: pq.ParquetWriter | None = None
    for i in range(len(chunks)):
        chunk_files = sorted(str(p) for p in (split / f"_fms_chunk={i}").glob("*.parquet"))
        if not chunk_files:
            continue
        expected += con.execute(
            f"SELECT count(DISTINCT ({keys})) FROM read_parquet({_sources(chunk_files)}, hive_partitioning = false)"
        ).fetchall()[0][0]
        part = out.with_name(f"part-{i:04d}.parquet")
        con.execute(
            f"COPY ({merge_sql(dataset, chunk_files, period)}) TO '{part}' "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
        )
        reader = pq.ParquetFile(str(part))
        for group in range(reader.num_row_groups):
            table = reader.read_row_group(group)
            if writer is None:
                writer = pq.ParquetWriter(str(out), table.schema, compression="zstd")
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        part.unlink()
        for path in chunk_files:
            Path(path).unlink()
    if writer is not None:
        writer.close()
    return source_rows, int(expected)


def covered_positions(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[dict[str, object], ...]:
    """Per (topic, partition): the lowest and highest Kafka offset and the row count in a merged file."""
    rows = con.execute(
        f"SELECT kafka_topic, kafka_partition, min(kafka_offset), max(kafka_offset), count(*) "
        f"FROM read_parquet('{path}') GROUP BY ALL ORDER BY 1, 2"
    ).fetchall()
    return tuple(
        {"topic": t, "partition": int(p), "first": int(lo), "last": int(hi), "rows": int(n)} for t, p, lo, hi, n in rows
    )


def merge_duckdb(
    dataset: Dataset, period: Period, files: list[str], out: Path, folder: Path, memory_limit_mb: int,
    chunk_rows: int | None,
) -> LocalMerge:
    """The general merge: DuckDB, entity range by entity range, verified by counting distinct keys."""
    con = duckdb.connect(config={"threads": 2})
    try:
        # DuckDB gets most of the budget; the rest is Python, pyarrow and the SDK.
        con.execute(f"SET memory_limit = '{max(64, int(memory_limit_mb * DUCKDB_SHARE))}MB'")
        con.execute(f"SET temp_directory = '{folder / 'spill'}'")
        con.execute("SET preserve_insertion_order = false")
        source_rows, expected = _merge_in_chunks(con, dataset, period, files, out, memory_limit_mb, chunk_rows)
        positions = covered_positions(con, out)
    finally:
        con.close()
    written = pq.read_metadata(str(out)).num_rows  # verify: readable, and every key once
    if written != expected:
        raise RuntimeError(f"merged {period.name}: {written} rows written, {expected} expected")
    return LocalMerge(source_rows, written, positions, "duckdb")


def merge_local(
    dataset: Dataset,
    period: Period,
    files: list[SourceFile],
    out: Path,
    scratch: Path,
    memory_limit_mb: int = 512,
    chunk_rows: int | None = None,
) -> LocalMerge:
    """Merge local source files into ``out`` and verify it: the fast merge when the dataset and the
    sources allow it, else DuckDB."""
    try:
        outcome = merge_sorted(dataset, period, files, out, scratch, memory_limit_mb, max_rows=chunk_rows)
        _check_written(period, files, out, outcome)
    except (NotMergeable, VerificationError) as exc:
        # Sources the fast merge cannot use, or a result that fails its checks: the general path
        # (which de-duplicates everything) decides, and verifies its own result.
        level = logging.INFO if isinstance(exc, NotMergeable) else logging.WARNING
        log.log(level, "general merge", extra={"period": period.name, "root": dataset.root, "reason": str(exc)})
        out.unlink(missing_ok=True)
        return merge_duckdb(dataset, period, [f.path for f in files], out, scratch, memory_limit_mb, chunk_rows)
    return LocalMerge(outcome.source_rows, outcome.rows, outcome.positions, "sorted")


def _check_written(period: Period, files: list[SourceFile], out: Path, outcome: MergeOutcome) -> None:
    """Verify before publishing: the rows were checked as they were written (sorted, each key once,
    every removed repeat's twin kept); here the counts add up, the footer agrees and the file reads."""
    stored = sum(pq.read_metadata(f.path).num_rows for f in files)
    if outcome.rows + outcome.duplicates + outcome.outside != stored:
        raise VerificationError(
            f"merged {period.name}: {outcome.rows} rows written + {outcome.duplicates} repeats + {outcome.outside} "
            f"outside the period != {stored} source rows"
        )
    reader = pq.ParquetFile(str(out))
    if reader.metadata.num_rows != outcome.rows:
        footer = reader.metadata.num_rows
        raise VerificationError(f"merged {period.name}: footer says {footer} rows, {outcome.rows} written")
    if reader.metadata.num_row_groups:
        reader.read_row_group(reader.metadata.num_row_groups - 1)  # every column decodes


SCRATCH_PREFIX = "fms-merge-"  # scratch folders are named <prefix><pid>-<random>
_SCRATCH_NAME = re.compile(rf"{re.escape(SCRATCH_PREFIX)}(\d+)-.+")


def scratch_prefix() -> str:
    """Prefix of this process' scratch folders (its pid, so an abandoned one can be recognized)."""
    return f"{SCRATCH_PREFIX}{os.getpid()}-"


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this host (one we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_abandoned_scratch(root: Path | None = None) -> int:
    """Delete scratch folders under ``root`` (default: the temp dir) left by merger processes of this
    host that died without cleaning up (killed -9: spill files can take gigabytes); returns how many.

    A folder is kept while the process named in it runs (a concurrent merge on the same host).
    """
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        match = _SCRATCH_NAME.fullmatch(folder.name)
        if match is None or not folder.is_dir() or not process_gone(int(match[1])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    if removed:
        log.warning("removed scratch folders of merger processes that died", extra={"folders": removed})
    return removed


def merge_period(
    store: ObjectStore,
    dataset: Dataset,
    period: Period,
    sources: list[str],
    leaves: dict[str, int],
    memory_limit_mb: int = 512,
    scratch: Path | None = None,
    chunk_rows: int | None = None,
) -> MergeResult:
    """Merge ``sources`` into the period's file and publish it with its manifest."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=scratch) as tmp:
        folder = Path(tmp)
        local: list[SourceFile] = []
        for i, key in enumerate(sources):
            path = folder / f"src-{i:05d}.parquet"
            store.get_file(key, str(path))
            # Merged files (hour/day/week) hold each de-dup key once; minute files may repeat keys.
            local.append(SourceFile(str(path), unique=parse_minute_key(key) is None))
        out = folder / "merged.parquet"
        merged = merge_local(dataset, period, local, out, folder, memory_limit_mb, chunk_rows)
        key = file_key(dataset.root, period)
        store.put_file(key, str(out))
        manifest = Manifest(
            sources=tuple(sources),
            leaves=leaves,
            rows=merged.rows,
            created_at=datetime.now(UTC).isoformat(),
            positions=merged.positions,
        )
        store.put(manifest_key(dataset.root, period), manifest.to_json())
        size = out.stat().st_size
    result = MergeResult(key, merged.rows, merged.source_rows, size, time.monotonic() - started, manifest)
    log.info(
        "merged",
        extra={
            "key": key,
            "rows": merged.rows,
            "source_rows": merged.source_rows,
            "sources": len(sources),
            "bytes": size,
            "seconds": round(result.seconds, 2),
            "method": merged.method,
        },
    )
    return result
