"""Duplicate-detection state: the previous release's Python dict against the compact tables, side by side.

Synthetic equipment_metrics traffic (``--rate`` messages/s × ``--rows`` metric rows each, over
``--partitions`` partitions, ``--equipment`` machines, µs timestamps, ``--late`` of the messages up to
10 min late, ``--dups`` re-sent at a new offset) is fed in batches of ``--batch`` rows until the
state holds a full ``--window`` (minutes) of keys, then ``--measure`` more batches are timed. Each
approach runs in its own process, so its memory is the growth of that process's RSS:

- ``dict``: the previous release (``PartitionState.seen`` key string → [offset, item_index, event_us]
  with its arrival-order deque, checked row by row; snapshot version 1 = canonical JSON);
- ``table``: :meth:`anomaly.AnomalyEngine.duplicates` over :class:`anomaly.dedup.SeenKeys`
  (snapshot version 2).

Both see the same batches and flag the same rows, except rows the dict matched against keys already
below the watermark (its expiry stops at the first key in arrival order that is still live; counted
and shown). Defaults are production scale: 18 M keys, about 6.5 GB of RSS for the dict (and as much
again while its JSON snapshot is parsed); ``--window 3`` shows the per-key numbers at a fifth of that.

Run: ``python -m bench.bench_dedup_state [--window 15] [--rate 5000] [--rows 4] [--batch 20000]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from anomaly import AnomalyEngine, Dimensions, EngineConfig, EngineState
from domains import DOMAINS
from domains.base import POSITION_KEY, UTC_MICROS

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = DOMAINS["equipment_metrics"]
SENSORS = ("temperature", "vibration", "pressure", "current", "humidity", "speed", "torque", "flow")
T0_US = 1_748_091_600_000_000  # 2025-05-24T13:00:00Z


# -- synthetic traffic ------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Batches of decoded-looking equipment rows (only the columns de-duplication reads)."""

    rate: int
    rows: int
    partitions: int
    equipment: int
    batch: int
    late: float
    dups: float
    seed: int = 7
    sent: int = 0  # messages so far
    offsets: list[int] = field(default_factory=list)  # next offset per partition
    recent: deque[tuple[int, int, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.offsets = [0] * self.partitions
        self.recent = deque(maxlen=max(100, self.rate * 60 // 97))  # every 97th message of the last minute
        self.names = np.array([f"LINE_{chr(65 + i // 100 % 26)}_PRESS_{i:03d}" for i in range(self.equipment)])

    def batches(self) -> Iterator[pl.DataFrame]:
        """Consecutive batches, forever (``batch`` rows each; the event clock runs at ``rate``)."""
        per_batch = self.batch // self.rows
        while True:
            yield self._batch(per_batch)

    def _batch(self, n: int) -> pl.DataFrame:
        rng = self.rng
        seq = np.arange(self.sent, self.sent + n)
        self.sent += n
        machine = rng.integers(0, self.equipment, n)
        ts = T0_US + seq * 1_000_000 // self.rate + rng.integers(0, 1000, n)
        late = rng.random(n) < self.late
        ts[late] -= rng.integers(0, 600_000_000, int(late.sum()))
        # Re-sent messages: an earlier message's machine and time again, at a new offset.
        resend = np.flatnonzero(rng.random(n) < self.dups)
        for i in resend:
            if self.recent:
                machine[i], ts[i] = self.recent[int(rng.integers(0, len(self.recent)))][:2]
        partition = machine % self.partitions
        offset = np.empty(n, dtype=np.int64)
        for p in range(self.partitions):
            mask = partition == p
            count = int(mask.sum())
            offset[mask] = np.arange(self.offsets[p], self.offsets[p] + count)
            self.offsets[p] = self.offsets[p] + count
        for k in range(0, n, 97):
            self.recent.append((int(machine[k]), int(ts[k]), int(offset[k])))
        sensors = np.array(SENSORS[: self.rows])
        return pl.DataFrame({
            "timestamp": pl.Series(np.repeat(ts, self.rows)).cast(pl.Int64).cast(UTC_MICROS),
            "equipment_id": np.repeat(self.names[machine], self.rows),
            "sensor_type": np.tile(sensors, n),
            "item_index": pl.Series(np.tile(np.arange(self.rows), n), dtype=pl.Int32),
            "kafka_topic": DOMAIN.topic.name,
            "kafka_partition": pl.Series(np.repeat(partition, self.rows), dtype=pl.Int32),
            "kafka_offset": pl.Series(np.repeat(offset, self.rows), dtype=pl.Int64),
        }).sort(list(POSITION_KEY))  # fmt: skip


# -- the previous release's approach (anomaly/state.py and engine.py before snapshot version 2) ---------------


@dataclass
class DictState:
    """``PartitionState.seen`` as it was: key string → [offset, item_index, event_us] and its deque."""

    max_event_us: int = 0
    seen: dict[str, list[int]] = field(default_factory=dict)
    order: deque[tuple[int, str]] | None = None

    def remember(self, key: str, position: list[int]) -> None:
        self.seen[key] = position
        if self.order is None:
            self.order = deque(sorted((v[2], k) for k, v in self.seen.items()))
        else:
            self.order.append((position[2], key))

    def expire(self, window: timedelta) -> None:
        limit = self.max_event_us - window // timedelta(microseconds=1)
        if self.order is None:
            self.order = deque(sorted((v[2], k) for k, v in self.seen.items()))
        order, seen = self.order, self.seen
        while order and order[0][0] < limit:
            _, key = order.popleft()
            entry = seen.get(key)
            if entry is not None and entry[2] < limit:
                del seen[key]


class DictDedup:
    """The previous ``AnomalyEngine._duplicates`` over :class:`DictState` per partition."""

    def __init__(self, window: timedelta) -> None:
        self.window = window
        self.partitions: dict[tuple[str, int], DictState] = {}
        self.stale = 0  # rows flagged against a key already below the watermark (kept by the arrival-order expiry)

    def duplicates(self, rows: pl.DataFrame) -> list[bool]:
        parts = [pl.col(c).dt.epoch("us").cast(pl.String) if rows.schema[c] == UTC_MICROS else pl.col(c).cast(pl.String)
                 for c in DOMAIN.dedup_key]  # fmt: skip
        frame = rows.select(
            pl.concat_str(parts, separator="|", ignore_nulls=True).alias("k"),
            pl.col("timestamp").dt.epoch("us").alias("ts"),
            *POSITION_KEY,
        )
        out = [False] * rows.height
        frame = frame.with_row_index("_i")
        for (topic, partition), part in frame.partition_by("kafka_topic", "kafka_partition", as_dict=True).items():
            state = self.partitions.setdefault((str(topic), int(partition)), DictState())  # type: ignore[call-overload]
            keys = part["k"].to_list()
            stamps = part["ts"].to_list()
            limit = state.max_event_us - self.window // timedelta(microseconds=1)
            if not (state.seen.keys() & set(keys)) and len(set(keys)) == len(keys):
                positions = zip(part["kafka_offset"].to_list(), part["item_index"].to_list(), stamps, strict=True)
                for key, position in zip(keys, positions, strict=True):
                    state.remember(key, list(position))
            else:
                columns = zip(part["_i"].to_list(), keys, part["kafka_offset"].to_list(),
                              part["item_index"].to_list(), stamps, strict=True)  # fmt: skip
                for i, key, offset, item, ts in columns:
                    seen = state.seen.get(key)
                    if seen is None:
                        state.remember(key, [offset, item, ts])
                    else:
                        out[i] = (seen[0], seen[1]) != (offset, item)
                        self.stale += out[i] and seen[2] < limit
            newest = max((t for t in stamps if t is not None), default=None)
            if newest is not None and newest > state.max_event_us:
                state.max_event_us = newest
            state.expire(self.window)
        return out

    def keys(self) -> int:
        return sum(len(s.seen) for s in self.partitions.values())

    def data_bytes(self) -> int | None:
        return None

    def snapshot(self) -> bytes:
        """Version 1: canonical JSON (the other per-partition parts empty, as here)."""
        body = {
            f"{topic}|{partition}": {"max_event_us": s.max_event_us, "seen": s.seen, "runs": {}, "last_seen": {},
                                     "status": {}, "battery": {}, "transitions": 0, "drain_pct": 0.0,
                                     "drain_hours": 0.0}
            for (topic, partition), s in sorted(self.partitions.items())
        }  # fmt: skip
        return json.dumps({"version": 1, "partitions": body}, sort_keys=True, separators=(",", ":")).encode()


class TableDedup:
    """The engine's de-duplication with its compact state."""

    def __init__(self, window: timedelta) -> None:
        self.engine = AnomalyEngine(Dimensions({}), EngineState(), EngineConfig(dedup_windows={DOMAIN.name: window}))
        self.stale = 0

    def duplicates(self, rows: pl.DataFrame) -> list[bool]:
        return self.engine.duplicates(DOMAIN, rows).to_list()

    def keys(self) -> int:
        return sum(p.seen.frame().height for p in self.engine.state.partitions.values())

    def data_bytes(self) -> int | None:
        """The tables' own size (polars' estimate), expired rows not dropped yet included."""
        return sum(p.seen.estimated_size() for p in self.engine.state.partitions.values())

    def snapshot(self) -> bytes:
        return self.engine.state.snapshot()


# -- one approach in this process -----------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(approach: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill a window of state, time ``measure`` batches, snapshot; the numbers as a dict."""
    window = timedelta(minutes=args.window)
    traffic = Traffic(args.rate, args.rows, args.partitions, args.equipment, args.batch, args.late, args.dups)
    dedup: DictDedup | TableDedup = DictDedup(window) if approach == "dict" else TableDedup(window)
    batches = traffic.batches()
    dedup.duplicates(next(batches))  # imports, caches and the first allocations before the baseline
    gc.collect()
    base = rss_bytes()
    seconds_per_batch = args.batch / args.rows / args.rate
    fill = int(window.total_seconds() / seconds_per_batch)
    flags = 0
    for _ in range(fill):
        flags += sum(dedup.duplicates(next(batches)))
    times = []
    for _ in range(args.measure):
        batch = next(batches)
        start = time.perf_counter()
        flags += sum(dedup.duplicates(batch))
        times.append(time.perf_counter() - start)
    gc.collect()
    grown = rss_bytes() - base
    start = time.perf_counter()
    snapshot = dedup.snapshot()
    snapshot_s = time.perf_counter() - start
    summary = {"keys": dedup.keys(), "duplicates": flags, "stale": dedup.stale, "data_bytes": dedup.data_bytes()}
    del dedup  # the restore builds the state anew
    gc.collect()
    start = time.perf_counter()
    if approach == "table":
        EngineState.restore(snapshot)
    else:  # as the previous release: parse, then the first expiry sorts the keys into the deque
        for body in json.loads(snapshot)["partitions"].values():
            DictState(body["max_event_us"], body["seen"]).expire(window)
    restore_s = time.perf_counter() - start
    times.sort()
    return summary | {
        "approach": approach, "rss_bytes": grown, "batch_ms_median": times[len(times) // 2] * 1e3,
        "batch_ms_p95": times[int(len(times) * 0.95)] * 1e3, "snapshot_bytes": len(snapshot),
        "snapshot_s": snapshot_s, "restore_s": restore_s,
    }  # fmt: skip


def main() -> None:
    """Run both approaches in child processes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=15.0, help="watermark, minutes (15 for equipment_metrics)")
    parser.add_argument("--rate", type=int, default=5_000, help="messages per second")
    parser.add_argument("--rows", type=int, default=4, help="metric rows per message")
    parser.add_argument("--batch", type=int, default=20_000, help="rows per batch")
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--equipment", type=int, default=2_000)
    parser.add_argument("--late", type=float, default=0.01, help="share of messages up to 10 min late")
    parser.add_argument("--dups", type=float, default=0.001, help="share of messages re-sent at a new offset")
    parser.add_argument("--measure", type=int, default=40, help="batches timed once the window is full")
    parser.add_argument("--approach", choices=["dict", "table"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.approach:
        print(json.dumps(run_one(args.approach, args)))
        return
    results = {}
    for approach in ("dict", "table"):
        child = [sys.executable, "-m", "bench.bench_dedup_state", *sys.argv[1:], "--approach", approach]
        out = subprocess.run(child, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        results[approach] = json.loads(out.strip().splitlines()[-1])
    old, new = results["dict"], results["table"]
    if not old["duplicates"] - old["stale"] <= new["duplicates"] <= old["duplicates"]:
        print(f"WARNING: the approaches disagree beyond the expiry difference: {old} {new}")
    print(f"equipment_metrics, {args.rate:,} msg/s × {args.rows} rows, {args.window:g} min window, "
          f"{args.partitions} partitions, batches of {args.batch:,} rows; {new['keys']:,} keys held")  # fmt: skip
    rows = [
        ("memory (RSS growth)", f"{old['rss_bytes'] / 2**20:,.0f} MiB", f"{new['rss_bytes'] / 2**20:,.0f} MiB"),
        ("memory per key", f"{old['rss_bytes'] / old['keys']:,.0f} B", f"{new['rss_bytes'] / new['keys']:,.0f} B"),
        ("  of which the tables' data", "", f"{new['data_bytes'] / new['keys']:,.0f} B"),
        ("batch time, median", f"{old['batch_ms_median']:.1f} ms", f"{new['batch_ms_median']:.1f} ms"),
        ("batch time, p95", f"{old['batch_ms_p95']:.1f} ms", f"{new['batch_ms_p95']:.1f} ms"),
        ("snapshot size", f"{old['snapshot_bytes'] / 2**20:,.1f} MiB", f"{new['snapshot_bytes'] / 2**20:,.1f} MiB"),
        ("snapshot bytes per key", f"{old['snapshot_bytes'] / old['keys']:.1f}",
         f"{new['snapshot_bytes'] / new['keys']:.1f}"),
        ("snapshot / restore time", f"{old['snapshot_s']:.2f} s / {old['restore_s']:.2f} s",
         f"{new['snapshot_s']:.2f} s / {new['restore_s']:.2f} s"),
        ("duplicates flagged", f"{old['duplicates']:,}", f"{new['duplicates']:,}"),
        ("  against keys below the watermark", f"{old['stale']:,}", "0"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"| {'':{width}} | dict (v1) | table (v2) |")
    print(f"|{'-' * (width + 2)}|---:|---:|")
    for name, a, b in rows:
        print(f"| {name:{width}} | {a} | {b} |")


if __name__ == "__main__":
    main()
