"""Completeness markers and statistics on every backend, with the progress objects set by hand.

(tests/merger/test_insight.py shows the same with the real collector writing the progress.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common.progress import PartitionProgress, progress_key
from merger.complete import marker_key, status
from merger.metrics import status_registry
from merger.periods import Calendar, Grain, period_of
from merger.query import build_views
from merger.run import MergerConfig, run
from merger.stats import stats_key
from storage.base import ObjectNotFound, ObjectStore
from tests.merger.test_merger import DOMAIN, MinuteWriter
from tests.support.storage import make_store

GROUP = "fms-realtime-collector"
HOUR_START = datetime(2025, 6, 7, 9, 0, tzinfo=UTC)
CONFIG = MergerConfig(calendar=Calendar.of("UTC"), grace=timedelta(minutes=5))
LATER = datetime(2025, 6, 20, tzinfo=UTC)


def report_progress(store: ObjectStore, partition: int, passed: datetime, partitions: int = 2) -> None:
    """Progress as the collector writes it: data of ``partition`` durable up to event time ``passed``."""
    progress = PartitionProgress(
        domain=DOMAIN.name, topic=DOMAIN.topic.name, partition=partition, partitions=partitions, committed=1,
        event_time=passed, caught_up=False, checked_at=passed + timedelta(seconds=30),
    )  # fmt: skip
    store.put(progress_key(GROUP, DOMAIN.topic.name, partition), progress.to_json())


def marker(store: ObjectStore, grain: Grain, at: datetime) -> dict[str, object] | None:
    try:
        return json.loads(store.get(marker_key(DOMAIN.name, period_of(at, grain, CONFIG.calendar))))
    except ObjectNotFound:
        return None


def read(store: ObjectStore, key: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(store.get(key)))


@pytest.mark.parametrize("backend", ["local", "minio", "gcs"])
def test_marker_only_after_every_partition_passed_and_redone_after_late_data(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, _ = make_store(backend, tmp_path, request)
    writer = MinuteWriter(store)
    rows = writer.rows(HOUR_START, 600, timedelta(seconds=5))  # 09:00-09:50
    writer.write(rows)
    hour = period_of(HOUR_START, Grain.HOUR, CONFIG.calendar)
    day_start = HOUR_START.replace(hour=0)

    # Merged (the clock is past the hour), but partition 0 is only at 09:50 and partition 1 unknown.
    report_progress(store, 0, HOUR_START + timedelta(minutes=50))
    run(store, Grain.HOUR, CONFIG, now=LATER)
    assert store.exists(f"{DOMAIN.name}/hour/{hour.name}.parquet")
    assert marker(store, Grain.HOUR, HOUR_START) is None
    # Partition 0 past the end plus grace; partition 1 has not reported at all: still incomplete.
    report_progress(store, 0, hour.end + timedelta(minutes=6))
    run(store, Grain.HOUR, CONFIG, now=LATER)
    assert marker(store, Grain.HOUR, HOUR_START) is None
    # Partition 1 past the end but not the grace.
    report_progress(store, 1, hour.end + timedelta(minutes=4))
    run(store, Grain.HOUR, CONFIG, now=LATER)
    assert marker(store, Grain.HOUR, HOUR_START) is None
    # Every partition past end + grace: the marker appears, with the rows and offsets covered.
    report_progress(store, 1, day_start + timedelta(days=1, minutes=6))
    report_progress(store, 0, day_start + timedelta(days=1, minutes=6))
    run(store, Grain.HOUR, CONFIG, now=LATER)
    first = marker(store, Grain.HOUR, HOUR_START)
    assert first is not None and first["marker"] == "_COMPLETE" and first["rows"] == rows.height
    assert first["positions"] == [{"topic": DOMAIN.topic.name, "partition": 0, "first": 0, "last": 599, "rows": 600}]
    run(store, Grain.DAY, CONFIG, now=LATER)
    assert marker(store, Grain.DAY, HOUR_START) is not None

    # Late data for 09:55: the hour is re-merged; its marker and the day's are withdrawn at once,
    # the hour's is written again with the new count, the day's when the day is merged again.
    late = writer.rows(HOUR_START + timedelta(minutes=55), 30, timedelta(seconds=5))
    writer.write(late)
    run(store, Grain.HOUR, CONFIG, now=LATER)
    again = marker(store, Grain.HOUR, HOUR_START)
    assert again is not None and again["rows"] == rows.height + late.height
    assert marker(store, Grain.DAY, HOUR_START) is None
    run(store, Grain.DAY, CONFIG, now=LATER)
    day_marker = marker(store, Grain.DAY, HOUR_START)
    assert day_marker is not None and day_marker["rows"] == rows.height + late.height

    # The views: fms_complete lists both, <domain>_complete holds exactly the complete rows.
    con = duckdb.connect()
    cache = tmp_path / "cache"
    from merger.query import mirror

    for statement in build_views(store, CONFIG.calendar, mirror(store, cache)):
        if statement.startswith("CREATE"):
            con.execute(statement)
    listed = con.execute("SELECT grain, period FROM fms_complete ORDER BY grain").fetchall()
    assert listed == [("day", "20250607"), ("hour", hour.name)]
    assert con.execute(f"SELECT count(*) FROM {DOMAIN.name}_complete").fetchall()[0][0] == rows.height + late.height

    # Metrics: the newest complete hour and day, and the freshness of the durable data.
    text = generate_latest(status_registry(status(store, GROUP, CONFIG.calendar), LATER)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
    day = period_of(HOUR_START, Grain.DAY, CONFIG.calendar)
    gauge = "fms_newest_complete_period_end_timestamp_seconds"
    assert samples[(gauge, (("domain", DOMAIN.name), ("grain", "hour")))] == hour.end.timestamp()
    assert samples[(gauge, (("domain", DOMAIN.name), ("grain", "day")))] == day.end.timestamp()
    newest = day.end + timedelta(minutes=6)
    assert samples[("fms_freshness_seconds", (("domain", DOMAIN.name),))] == (LATER - newest).total_seconds()


@pytest.mark.parametrize("backend", ["local", "minio"])
def test_statistics_equal_a_direct_query_over_the_facts(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, _ = make_store(backend, tmp_path, request)
    writer = MinuteWriter(store)
    rows = writer.rows(HOUR_START, 900, timedelta(seconds=8))  # 09:00 - 11:00, two hours
    writer.write(rows)
    run(store, Grain.HOUR, CONFIG, now=LATER)
    run(store, Grain.DAY, CONFIG, now=LATER)
    facts = rows.to_arrow()  # noqa: F841 - read by DuckDB below
    query = """
        SELECT robot_id, model, location, count(battery_level), min(battery_level), max(battery_level),
               avg(battery_level), quantile_cont(battery_level, 0.95), sum(battery_level)
        FROM facts WHERE timestamp >= $1 AND timestamp < $2 GROUP BY ALL ORDER BY ALL
    """
    periods = [
        period_of(HOUR_START, Grain.HOUR, CONFIG.calendar),
        period_of(HOUR_START + timedelta(hours=1), Grain.HOUR, CONFIG.calendar),
        period_of(HOUR_START, Grain.DAY, CONFIG.calendar),
    ]
    for period in periods:
        expected = duckdb.execute(query, [period.start, period.end]).fetchall()
        stats = read(store, stats_key(DOMAIN.name, period))  # noqa: F841
        got = duckdb.execute(
            "SELECT entity_id, kind, location, count, min, max, mean, p95, total FROM stats "
            "WHERE section = 'measure' AND name = 'battery_level' ORDER BY ALL"
        ).fetchall()
        assert len(got) == len(expected) > 0
        for g, e in zip(got, expected, strict=True):
            assert g[:4] == e[:4] and g[4:] == pytest.approx(e[4:], rel=1e-9)


def test_no_marker_while_a_backfill_is_loading_history(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store, _ = make_store("local", tmp_path, request)
    MinuteWriter(store).write(MinuteWriter(store).rows(HOUR_START, 100, timedelta(seconds=5)))
    for partition in (0, 1):
        report_progress(store, partition, HOUR_START + timedelta(days=2))
    store.put("_backfill/fms-backfill/plan.json", b"{}")  # a backfill started and has not finished
    run(store, Grain.HOUR, CONFIG, now=LATER)
    assert store.exists(f"{DOMAIN.name}/hour/{period_of(HOUR_START, Grain.HOUR, CONFIG.calendar).name}.parquet")
    assert marker(store, Grain.HOUR, HOUR_START) is None
    store.put("_backfill/fms-backfill/done.json", b"{}")
    run(store, Grain.HOUR, CONFIG, now=LATER)
    assert marker(store, Grain.HOUR, HOUR_START) is not None


def test_a_lease_whose_holder_died_on_this_host_is_taken_over_at_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    from merger.run import Lease

    store, _ = make_store("local", tmp_path, request)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid, host, free in ((int(dead.stdout), socket.gethostname(), True), (os.getppid(), socket.gethostname(), False),
                            (int(dead.stdout), "another-host", False)):  # fmt: skip
        body = {"owner": f"{host}-{pid}-x", "host": host, "pid": pid, "expires": time.time() + 600}
        store.put("_locks/merger-hour.json", json.dumps(body).encode())
        assert Lease(store, "merger-hour", 60).acquire() is free, (pid, host)
