"""Backfill against a real broker: history before the collector started plus live traffic after;
the backfill (killed with -9 mid-way and re-run, then run twice at once) plus the merges leave every
message's rows exactly once in the hour and day files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from domains import DOMAINS
from embedded.servers import TansuBroker
from tests.support.collector_process import ROOT, CollectorProcess
from tests.support.kafka import Produced, committed_offsets, end_offsets, produce_tracked
from tests.support.storage import make_store
from tests.support.stored import minute_keys
from trafficgen import TrafficGenerator

pytestmark = pytest.mark.slow


def merged_rows(store, grain: str, domain: str) -> pl.DataFrame:  # noqa: ANN001
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = [pl.from_arrow(pq.read_table(pa.BufferReader(store.get(o.key)))) for o in store.list(f"{domain}/{grain}/")]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def backfill(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "backfill", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_history_and_live_rows_end_up_once_after_kill_rerun_and_parallel_backfills(
    kafka: TansuBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, storage_env = make_store("local", tmp_path, request)
    now = datetime.now(UTC)
    history = produce_tracked(
        kafka.bootstrap,
        TrafficGenerator(
            seed=41, formats=("avro", "json"), start=now - timedelta(days=3), step=timedelta(seconds=2)
        ).generate(4000),
    )
    env = {"KAFKA_BROKERS": kafka.bootstrap, **storage_env, "ANOMALY_ENABLED": "false"}
    collector = CollectorProcess({**env, "KAFKA_AUTO_OFFSET_RESET": "latest"}, tmp_path).start()
    live: list[Produced] = []
    try:
        collector.wait_until(lambda: collector.probe("/readyz") == 200, 60, "collector assigned")
        live = produce_tracked(
            kafka.bootstrap,
            TrafficGenerator(
                seed=42, formats=("avro", "json"), start=now - timedelta(days=2), step=timedelta(seconds=2)
            ).generate(2000),
        )
        collector.wait_until(
            lambda: (
                committed_offsets(kafka.bootstrap, "fms-realtime-collector", end_offsets(live)) == end_offsets(live)
            ),
            120,
            "live traffic committed",
        )
        # The collector starts where the topics ended when it joined, recorded as the backfill's end,
        # and reads from there, never from the earliest offset. (Tansu's high watermark can lag behind
        # what was acknowledged, so the boundary may lie inside the history; the backfill then stops
        # before it: the boundary is the same number for both.)
        boundaries = [o.key for o in store.list("_backfill/boundary/fms-realtime-collector/")]
        assert len(boundaries) == sum(d.topic.partitions for d in DOMAINS.values())
        starts = {(key.split("/")[-2], int(key.split("/")[-1])): int(store.get(key)) for key in boundaries}
        ends = {**end_offsets(history), **end_offsets(live)}
        read_by_collector = sum(ends.get(tp, start) - start for tp, start in starts.items())
        assert collector.total("fms_messages_consumed_total") == read_by_collector
        assert read_by_collector < len(history) + len(live) and sum(starts.values()) > 0  # history left to load

        job_env = {
            **os.environ,
            **env,
            "PYTHONPATH": str(ROOT),
            "LOG_FORMAT": "text",
            "BACKFILL_LEASE_SECONDS": "3",
            "MAX_BUFFER_BYTES": str(1024 * 1024),
        }
        # Throttled to ~8 s of work, whatever the boundary left to load, so the kill lands mid-way.
        rate = max(10, sum(starts.values()) // 8)
        killed = backfill(job_env, "--rate", str(rate), "--no-merge")
        time.sleep(random.Random(3).uniform(2.5, 4.0))
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        partial = killed.stdout.read().decode() if killed.stdout else ""
        assert "backfill summary" not in partial, "the first run should be killed before it finishes"
        assert not store.exists("_backfill/fms-backfill/done.json")  # history still arriving: no markers
        time.sleep(3.5)  # the killed job's lease expires
        rerun = backfill(job_env)
        output = rerun.communicate(timeout=300)[0].decode()
        assert rerun.returncode == 0, output
        assert "backfill summary" in output and "merged" in output
        assert store.exists("_backfill/fms-backfill/done.json")
    finally:
        assert collector.terminate() == 0
        collector.kill()

    produced = history + live
    for grain in ("hour", "day"):
        for name in DOMAINS:
            rows = merged_rows(store, grain, name)
            good = {(p.partition, p.offset) for p in produced if p.message.domain == name}
            expected = sum(p.message.expected_rows for p in produced if p.message.domain == name)
            assert rows.height == expected, f"{grain} {name}: {rows.height} rows, {expected} expected"
            assert set(rows.select("kafka_partition", "kafka_offset").unique().iter_rows()) == good

    # Run again, twice at once: the plan is done and the lease lets one through; nothing is added.
    before = minute_keys(store)
    twins = [backfill(job_env, "--no-merge") for _ in range(2)]
    outputs = [t.communicate(timeout=120)[0].decode() for t in twins]
    assert [t.returncode for t in twins] == [0, 0], outputs
    assert minute_keys(store) == before
