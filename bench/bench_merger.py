"""Merge benchmark: the merger (DuckDB, de-duplicate + sort, memory-limited) next to a naive
``pyarrow.concat_tables`` + sort + ``write_table`` baseline, on the same files, in one run.

Cases: an hour of equipment_metrics from 60 minute files (``--rows``, default 18 M, about an hour
at 5,000 msg/s) and a day made of 24 hour files (``--day-rows``, default 2 × rows). Each merge runs
in a child process so its peak RSS (VmHWM) is its own.

Run: ``python -m bench.bench_merger [--rows 18000000] [--day-rows 36000000]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from domains import DOMAINS
from domains.base import UTC_MICROS

DOMAIN = DOMAINS["equipment_metrics"]
HOUR = datetime(2025, 6, 12, 0, 0, tzinfo=UTC)


def synthetic_rows(n: int, start: datetime, span: timedelta, seed: int) -> pl.DataFrame:
    """Equipment rows with unique de-dup keys spread over ``[start, start + span)``."""
    rng = np.random.default_rng(seed)
    micros = np.sort(rng.integers(0, int(span.total_seconds() * 1e6), n))
    base = int(start.timestamp() * 1e6)
    equipment = np.array([f"LINE_{c}_PRESS_{i:03d}" for c in "ABCDEF" for i in range(1, 84)])
    sensors = np.array(["temperature", "vibration", "pressure", "current"])
    frame = pl.DataFrame({
        "timestamp": pl.Series(base + micros).cast(UTC_MICROS),
        "equipment_id": equipment[rng.integers(0, len(equipment), n)],
        "sensor_type": sensors[rng.integers(0, len(sensors), n)],
        "value": rng.normal(60, 10, n),
        "kafka_offset": pl.int_range(0, n, eager=True) + seed * 10_000_000_000,
    })
    fixed = {"equipment_type", "unit", "quality", "sensor_id", "kafka_topic"}
    defaults = {
        c: pl.lit("x") for c, t in DOMAIN.flat_schema.items()
        if t == pl.String() and c not in frame.columns and c not in fixed
    }
    return frame.with_columns(
        **defaults,
        equipment_type=pl.lit("hydraulic_press"), unit=pl.lit("celsius"), quality=pl.lit("good"),
        sensor_id=pl.col("equipment_id") + "_" + pl.col("sensor_type"),
        status_changed_at=pl.col("timestamp"), ingestion_timestamp=pl.col("timestamp"),
        item_index=pl.lit(0, pl.Int32), kafka_topic=pl.lit(DOMAIN.topic.name),
        kafka_partition=pl.lit(0, pl.Int32), kafka_timestamp=pl.col("timestamp"),
        collected_at=pl.col("timestamp"),
    ).select([pl.col(c).cast(t) for c, t in DOMAIN.flat_schema.items()])


def write_sources(folder: Path, rows: int, pieces: int, span: timedelta) -> list[Path]:
    """``pieces`` Parquet files of consecutive sub-periods, about 1 % of rows repeated (replays)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    step = span / pieces
    for i in range(pieces):
        part = synthetic_rows(rows // pieces, HOUR + i * step, step, seed=i)
        part = pl.concat([part, part.head(max(1, part.height // 100))])
        path = folder / f"src-{i:05d}.parquet"
        part.write_parquet(path, compression="zstd")
        paths.append(path)
    return paths


def child(mode: str, sources: list[str], out: str) -> None:
    """Run one merge in this process and print its figures as JSON."""
    started = time.perf_counter()
    if mode == "merger":
        import duckdb

        from merger.dataset import Dataset
        from merger.merge import DUCKDB_SHARE, _merge_in_chunks
        from merger.periods import Calendar, Grain, period_of

        budget_mb = 512
        period = period_of(HOUR, Grain.WEEK, Calendar())
        con = duckdb.connect(config={"threads": 2})
        con.execute(f"SET memory_limit = '{int(budget_mb * DUCKDB_SHARE)}MB'")  # as merger.merge.merge_period
        con.execute(f"SET temp_directory = '{out}.spill'")
        con.execute("SET preserve_insertion_order = false")
        _merge_in_chunks(con, Dataset.facts(DOMAIN), period, sources, Path(out), budget_mb)
    else:
        import pyarrow as pa

        table = pa.concat_tables([pq.read_table(s) for s in sources])
        table = table.sort_by([(c, "ascending") for c in DOMAIN.sort_key])
        pq.write_table(table, out, compression="zstd")
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    print(json.dumps({"seconds": seconds, "peak": peak, "rows": pq.read_metadata(out).num_rows}))


def measure(mode: str, sources: list[Path], out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_merger", "--child", mode, "--out", str(out), *map(str, sources)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": " | ".join(lines[-12:]) if lines else f"exit {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=18_000_000)
    parser.add_argument("--day-rows", type=int, default=0)
    parser.add_argument("--child", choices=("merger", "naive"))
    parser.add_argument("--out")
    parser.add_argument("sources", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sources, args.out)
        return
    day_rows = args.day_rows or 2 * args.rows
    work = Path(tempfile.mkdtemp(prefix="bench-merger-"))
    try:
        cases = [
            ("hour from 60 minute files", write_sources(work / "hour", args.rows, 60, timedelta(hours=1))),
            ("day from 24 hour files", write_sources(work / "day", day_rows, 24, timedelta(days=1))),
        ]
        print("merge benchmark (equipment_metrics, ~1 % replayed rows, 2 cores)")
        print(f"{'case':<28}{'path':<10}{'input rows':>12}{'rows/s':>12}{'peak RSS':>10}{'out rows':>12}")
        for name, sources in cases:
            rows_in = sum(pq.read_metadata(s).num_rows for s in sources)
            for mode in ("merger", "naive"):
                figures = measure(mode, sources, work / f"{mode}.parquet")
                if "error" in figures:
                    print(f"{name:<28}{mode:<10}{rows_in:>12,}  failed: {figures['error']}")
                    continue
                print(f"{name:<28}{mode:<10}{rows_in:>12,}{rows_in / figures['seconds']:>12,.0f}"
                      f"{figures['peak'] / 2**20:>8.0f}MiB{int(figures['rows']):>12,}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
