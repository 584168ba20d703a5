"""Merge benchmark: the merger (de-duplicate + sort, memory-limited) next to a naive
``pyarrow.concat_tables`` + sort + ``write_table`` baseline, on the same files, in one run.

Cases (equipment_metrics, messages of four readings, 20 partitions keyed by equipment):

- an hour from 60 minute files (``--rows``, default 18 M, about an hour at 5,000 msg/s), written
  with the collector's own encoder (sorted, row groups of 128 Ki rows); every tenth minute also has
  a replay file holding a tenth of its messages again at the same Kafka positions (~1 % of rows, as
  after a crash), and 1 in 10,000 messages is sent twice at a later offset (same de-dup key);
- a day made of 24 hour files (``--day-rows``), written as the merger writes them (sorted,
  de-duplicated, zstd, row groups of 122,880 rows).

Each merge runs in a child process so its peak RSS (VmHWM) is its own; the merger gets what
``merge_period`` gives it (local files, which of them are merged files, the 512 MiB budget) and does
everything but the download and upload: the merge, its checks and the covered positions.
``--sizes`` also runs the hour merge alone at other sizes, to show that its peak RSS does not grow
with the input.

Run: ``python -m bench.bench_merger [--rows 18000000] [--day-rows 18000000] [--sizes 4500000,9000000]``.
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

from collector.parquet import encode_rows
from domains import DOMAINS
from domains.base import UTC_MICROS

DOMAIN = DOMAINS["equipment_metrics"]
HOUR = datetime(2025, 6, 12, 0, 0, tzinfo=UTC)
EQUIPMENT = np.array([f"LINE_{c}_PRESS_{i:03d}" for c in "ABCDEF" for i in range(1, 84)])
SENSORS = np.array(["temperature", "vibration", "pressure", "current"])
PARTITIONS = 20
BUDGET_MB = 512


def messages(n: int, start: datetime, span: timedelta, seed: int, offsets: np.ndarray) -> pl.DataFrame:
    """Rows of ``n`` // 4 messages of four readings spread over ``[start, start + span)``; ``offsets``
    (per partition, the next offset) is advanced."""
    rng = np.random.default_rng(seed)
    count = max(1, n // len(SENSORS))
    micros = int(start.timestamp() * 1e6) + np.sort(rng.integers(0, int(span.total_seconds() * 1e6), count))
    equipment = rng.integers(0, len(EQUIPMENT), count)
    partition = (equipment * 7919) % PARTITIONS
    offset = np.empty(count, dtype=np.int64)
    for p in range(PARTITIONS):
        mine = np.flatnonzero(partition == p)
        offset[mine] = offsets[p] + np.arange(len(mine))
        offsets[p] += len(mine)
    per = len(SENSORS)
    frame = pl.DataFrame({
        "timestamp": pl.Series(np.repeat(micros, per)).cast(UTC_MICROS),
        "equipment_id": np.repeat(EQUIPMENT[equipment], per),
        "sensor_type": np.tile(SENSORS, count),
        "value": rng.normal(60, 10, count * per),
        "item_index": pl.Series(np.tile(np.arange(per), count)).cast(pl.Int32),
        "kafka_partition": pl.Series(np.repeat(partition, per)).cast(pl.Int32),
        "kafka_offset": np.repeat(offset, per),
    })
    fixed = {"equipment_type", "unit", "quality", "sensor_id", "kafka_topic", "location"}
    defaults = {
        c: pl.lit("x") for c, t in DOMAIN.flat_schema.items()
        if t == pl.String() and c not in frame.columns and c not in fixed
    }
    return frame.with_columns(
        **defaults,
        equipment_type=pl.lit("hydraulic_press"), unit=pl.lit("celsius"), quality=pl.lit("good"),
        location=pl.col("equipment_id").str.slice(0, 6),
        sensor_id=pl.col("equipment_id") + "_" + pl.col("sensor_type"),
        status_changed_at=pl.col("timestamp"), ingestion_timestamp=pl.col("timestamp"),
        kafka_topic=pl.lit(DOMAIN.topic.name), kafka_timestamp=pl.col("timestamp"), collected_at=pl.col("timestamp"),
    ).select([pl.col(c).cast(t) for c, t in DOMAIN.flat_schema.items()])


def resent(frame: pl.DataFrame, offsets: np.ndarray, every: int = 10_000) -> pl.DataFrame:
    """One message in ``every`` sent again later (same content and key, next offset of its partition)."""
    first = frame.filter((pl.col("kafka_offset") % every == 0) & (pl.col("item_index") == 0))
    again = frame.join(first.select("kafka_partition", "kafka_offset"), on=["kafka_partition", "kafka_offset"])
    if again.is_empty():
        return again
    moved = []
    for (p,), part in again.partition_by("kafka_partition", as_dict=True).items():
        ids = part["kafka_offset"].unique(maintain_order=True)
        new = pl.Series(offsets[p] + np.arange(len(ids)))
        offsets[p] += len(ids)
        moved.append(part.with_columns(pl.col("kafka_offset").replace_strict(ids, new)))
    return pl.concat(moved)


def write_minutes(folder: Path, rows: int) -> list[tuple[Path, bool]]:
    """An hour of minute files as the collector writes them, with replays and re-sent messages."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(PARTITIONS, dtype=np.int64)
    paths = []
    for minute in range(60):
        start = HOUR + timedelta(minutes=minute)
        part = messages(rows // 60, start, timedelta(minutes=1), seed=minute, offsets=offsets)
        part = pl.concat([part, resent(part, offsets)])
        path = folder / f"{start:%Y%m%d_%H%M}_p0o{minute}.parquet"
        path.write_bytes(encode_rows(part, DOMAIN.sort_key, DOMAIN.flat_schema, {"domain": DOMAIN.name}))
        paths.append((path, False))
        if minute % 10 == 0:  # a crash: messages consumed after the last commit are written again
            replay = part.sort("kafka_partition", "kafka_offset").slice(part.height // 3, part.height // 10)
            path = folder / f"{start:%Y%m%d_%H%M}_p0o{minute}-replay.parquet"
            path.write_bytes(encode_rows(replay, DOMAIN.sort_key, DOMAIN.flat_schema, {"domain": DOMAIN.name}))
            paths.append((path, False))
    return paths


def write_hours(folder: Path, rows: int) -> list[tuple[Path, bool]]:
    """A day of hour files as the merger writes them (sorted, each key once)."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(PARTITIONS, dtype=np.int64)
    paths = []
    for hour in range(24):
        start = HOUR + timedelta(hours=hour)
        part = messages(rows // 24, start, timedelta(hours=1), seed=100 + hour, offsets=offsets)
        part = part.sort(list(DOMAIN.sort_key)).unique(list(DOMAIN.dedup_key), keep="first", maintain_order=True)
        path = folder / f"{start:%Y%m%d_%H}_{start.hour + 1:02d}.parquet"
        pq.write_table(part.to_arrow(), path, compression="zstd", row_group_size=122_880, store_schema=False)
        paths.append((path, True))
    return paths


def child(mode: str, sources: list[str], unique: list[bool], out: str) -> None:
    """Run one merge in this process and print its figures as JSON."""
    started = time.perf_counter()
    extra: dict[str, object] = {}
    if mode == "merger":
        from merger.dataset import Dataset
        from merger.merge import merge_local
        from merger.periods import Calendar, Grain, period_of
        from merger.sorted_merge import SourceFile

        period = period_of(HOUR, Grain.WEEK, Calendar())
        files = [SourceFile(s, u) for s, u in zip(sources, unique, strict=True)]
        scratch = Path(out).with_suffix(".scratch")
        scratch.mkdir(exist_ok=True)
        merged = merge_local(Dataset.facts(DOMAIN), period, files, Path(out), scratch, BUDGET_MB)
        extra = {"method": merged.method}
    else:
        import pyarrow as pa

        table = pa.concat_tables([pq.read_table(s) for s in sources])
        table = table.sort_by([(c, "ascending") for c in DOMAIN.sort_key])
        pq.write_table(table, out, compression="zstd")
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    print(json.dumps({"seconds": seconds, "peak": peak, "rows": pq.read_metadata(out).num_rows, **extra}))


def measure(mode: str, sources: list[tuple[Path, bool]], out: Path) -> dict[str, object]:
    """One merge in a child process."""
    unique = ",".join("1" if u else "0" for _, u in sources)
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_merger", "--child", mode, "--out", str(out), "--unique", unique,
         *(str(p) for p, _ in sources)],
        capture_output=True, text=True,
    )  # fmt: skip
    out.unlink(missing_ok=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": " | ".join(lines[-12:]) if lines else f"exit {result.returncode}"}
    figures: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def report(name: str, mode: str, rows_in: int, figures: dict[str, object]) -> None:
    """One line of the table."""
    if "error" in figures:
        print(f"| {name} | {mode} | {rows_in:,} | failed: {figures['error']} | | |")
        return
    label = f"merger ({figures.get('method')})" if mode == "merger" else "naive `concat_tables` + sort"
    rate = rows_in / float(figures["seconds"])  # type: ignore[arg-type]
    peak = float(figures["peak"]) / 2**20  # type: ignore[arg-type]
    print(f"| {name} | {label} | {rows_in:,} | {rate:,.0f} | {peak:,.0f} MiB | {int(figures['rows']):,} |")  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=18_000_000)
    parser.add_argument("--day-rows", type=int, default=0, help="default: --rows")
    parser.add_argument("--sizes", default="", help="hour merges alone at these row counts (comma-separated)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--child", choices=("merger", "naive"))
    parser.add_argument("--out")
    parser.add_argument("--unique", default="")
    parser.add_argument("sources", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sources, [u == "1" for u in args.unique.split(",")], args.out)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-merger-"))
    try:
        cases = [
            ("hour from 60 minute files", write_minutes(work / "hour", args.rows)),
            ("day from 24 hour files", write_hours(work / "day", args.day_rows or args.rows)),
        ]
        print(f"merge benchmark (equipment_metrics, 2 cores, budget {BUDGET_MB} MiB)")
        print("| case | path | input rows | rows/s | peak RSS | output rows |")
        print("|---|---|---:|---:|---:|---:|")
        for name, sources in cases:
            rows_in = sum(pq.read_metadata(p).num_rows for p, _ in sources)
            for mode in ("merger",) if args.no_naive else ("merger", "naive"):
                report(name, mode, rows_in, measure(mode, sources, work / f"{mode}.parquet"))
        shutil.rmtree(work / "hour", ignore_errors=True)
        for size in [int(s) for s in args.sizes.split(",") if s]:
            sources = write_minutes(work / f"hour-{size}", size)
            rows_in = sum(pq.read_metadata(p).num_rows for p, _ in sources)
            report(f"hour from 60 minute files, {size:,} rows", "merger", rows_in,
                   measure("merger", sources, work / "merger.parquet"))  # fmt: skip
            shutil.rmtree(work / f"hour-{size}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
