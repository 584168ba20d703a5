"""One merge: download sources to a scratch folder, merge them with DuckDB under a memory limit
(de-duplicate, sort, zstd), verify the result, then publish it and its manifest.

The publish order is file first, manifest second: a crash in between leaves a file without a
manifest, which the next run treats as missing and merges again (same name, overwritten).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from domains.base import Domain
from merger.catalog import Manifest, manifest_key
from merger.periods import Period, file_key
from storage.base import ObjectStore

log = logging.getLogger("merger")

ROW_GROUP_ROWS = 122_880


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


def merge_sql(domain: Domain, files: list[str], period: Period) -> str:
    """The merge query: rows of the period, once per de-dup key (first Kafka position wins), sorted."""
    keys = ", ".join(_quote(c) for c in domain.dedup_key)
    sort = ", ".join(_quote(c) for c in domain.sort_key)
    sources = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"""
        SELECT * EXCLUDE (_fms_rank) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY {keys}
                ORDER BY kafka_topic, kafka_partition, kafka_offset, item_index
            ) AS _fms_rank
            FROM read_parquet([{sources}], union_by_name = true)
            WHERE "timestamp" >= TIMESTAMPTZ '{period.start.isoformat()}'
              AND "timestamp" < TIMESTAMPTZ '{period.end.isoformat()}'
        )
        WHERE _fms_rank = 1
        ORDER BY {sort}
    """


def merge_period(
    store: ObjectStore,
    domain: Domain,
    period: Period,
    sources: list[str],
    leaves: dict[str, int],
    memory_limit_mb: int = 512,
    scratch: Path | None = None,
) -> MergeResult:
    """Merge ``sources`` into the period's file and publish it with its manifest."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fms-merge-", dir=scratch) as tmp:
        folder = Path(tmp)
        local: list[str] = []
        for i, key in enumerate(sources):
            path = folder / f"src-{i:05d}.parquet"
            store.get_file(key, str(path))
            local.append(str(path))
        out = folder / "merged.parquet"
        con = duckdb.connect(config={"threads": 2})
        try:
            # DuckDB gets most of the budget; the rest is Python, pyarrow and the SDK.
            con.execute(f"SET memory_limit = '{max(64, int(memory_limit_mb * 0.6))}MB'")
            con.execute(f"SET temp_directory = '{folder / 'spill'}'")
            con.execute("SET preserve_insertion_order = false")
            keys = ", ".join(_quote(c) for c in domain.dedup_key)
            files = ", ".join("'" + f + "'" for f in local)
            source_rows, expected = con.execute(
                f"""SELECT count(*), count(DISTINCT ({keys})) FROM read_parquet([{files}], union_by_name = true)
                    WHERE "timestamp" >= TIMESTAMPTZ '{period.start.isoformat()}'
                      AND "timestamp" < TIMESTAMPTZ '{period.end.isoformat()}'"""
            ).fetchall()[0]
            con.execute(
                f"COPY ({merge_sql(domain, local, period)}) TO '{out}' "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
            )
        finally:
            con.close()
        written = pq.read_metadata(str(out)).num_rows  # verify: readable, and every key once
        if written != expected:
            raise RuntimeError(f"merged {period.name}: {written} rows written, {expected} expected")
        key = file_key(domain.name, period)
        store.put_file(key, str(out))
        manifest = Manifest(
            sources=tuple(sources), leaves=leaves, rows=written, created_at=datetime.now(UTC).isoformat()
        )
        store.put(manifest_key(domain.name, period), manifest.to_json())
        size = out.stat().st_size
    result = MergeResult(key, written, int(source_rows), size, time.monotonic() - started, manifest)
    log.info(
        "merged",
        extra={
            "key": key,
            "rows": written,
            "source_rows": int(source_rows),
            "sources": len(sources),
            "bytes": size,
            "seconds": round(result.seconds, 2),
        },
    )
    return result
