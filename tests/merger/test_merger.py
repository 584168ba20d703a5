"""Merger tests on every storage backend: exact rows, names, late data, concurrency, crashes, DST."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector.parquet import encode_rows
from common.layout import minute_key, position_suffix
from domains import DOMAINS
from domains.decode import BatchDecoder, MessageBatch
from merger.catalog import Manifest, manifest_key
from merger.periods import Calendar, Grain, children, parse_name, period_of
from merger.run import MergerConfig, run
from storage.base import ObjectStore
from tests.support.storage import make_store
from trafficgen import TrafficGenerator

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = DOMAINS["robot_status"]
LATER = datetime(2025, 6, 20, tzinfo=UTC)  # every test period is complete, none past retention


class MinuteWriter:
    """Writes minute files the way the collector does, from generated traffic."""

    def __init__(self, store: ObjectStore, seed: int = 1) -> None:
        self.store = store
        self.offset = 0
        self.seed = seed

    def rows(self, start: datetime, n: int, step: timedelta) -> pl.DataFrame:
        messages = TrafficGenerator(
            seed=self.seed, domains=[DOMAIN.name], formats=["avro"], start=start, step=step
        ).generate(n)
        self.seed += 1
        values = [m.value for m in messages]
        batch = MessageBatch(DOMAIN.topic.name, values, [0] * n, list(range(self.offset, self.offset + n)), [0] * n)
        self.offset += n
        decoded = BatchDecoder(DOMAIN).decode(batch, datetime.now(UTC))
        assert not decoded.rejected
        return decoded.rows

    def write(self, rows: pl.DataFrame, tag: str = "") -> list[str]:
        keys = []
        minutes = rows.with_columns(pl.col("timestamp").dt.truncate("1m").alias("_m"))
        for (minute,), part in minutes.partition_by("_m", as_dict=True).items():
            part = part.drop("_m")
            first = {(DOMAIN.topic.name, 0): int(part["kafka_offset"].min())}  # type: ignore[arg-type]
            key = minute_key(DOMAIN.name, minute, position_suffix(first) + tag)
            self.store.put(key, encode_rows(part, DOMAIN.sort_key, DOMAIN.flat_schema, {"domain": DOMAIN.name}))
            keys.append(key)
        return keys


def stored(store: ObjectStore, grain: str) -> pl.DataFrame:
    frames = []
    for info in store.list(f"{DOMAIN.name}/{grain}/"):
        table = pq.read_table(pa.BufferReader(store.get(info.key)))
        frames.append(pl.from_arrow(table).with_columns(pl.lit(info.key).alias("_key")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def expected_unique(rows: pl.DataFrame) -> int:
    return rows.select(DOMAIN.dedup_key).unique().height


def names(store: ObjectStore, grain: str) -> list[str]:
    return [o.key.rsplit("/", 1)[1] for o in store.list(f"{DOMAIN.name}/{grain}/")]


# -- periods -----------------------------------------------------------------------------------


def test_period_names_cover_the_last_hour_and_week_boundaries() -> None:
    utc = Calendar.of("UTC", "sunday")
    assert period_of(datetime(2025, 6, 12, 23, 59, tzinfo=UTC), Grain.HOUR, utc).name == "20250612_23_24"
    assert period_of(datetime(2025, 6, 12, 0, 0, tzinfo=UTC), Grain.HOUR, utc).name == "20250612_00_01"
    assert period_of(datetime(2025, 6, 3, tzinfo=UTC), Grain.WEEK, utc).name == "20250601_20250607"
    assert period_of(datetime(2025, 7, 1, tzinfo=UTC), Grain.WEEK, utc).name == "20250629_20250705"
    assert period_of(datetime(2025, 12, 31, tzinfo=UTC), Grain.WEEK, utc).name == "20251228_20260103"
    monday = Calendar.of("UTC", "monday")
    assert period_of(datetime(2026, 1, 1, tzinfo=UTC), Grain.WEEK, monday).name == "20251229_20260104"
    assert parse_name("20250612_23_24", Grain.HOUR, utc) == period_of(
        datetime(2025, 6, 12, 23, tzinfo=UTC), Grain.HOUR, utc
    )
    assert parse_name("20250612_23_25", Grain.HOUR, utc) is None


def test_local_days_follow_dst_and_half_hour_zones() -> None:
    berlin = Calendar.of("Europe/Berlin")
    spring = period_of(datetime(2025, 3, 30, 12, tzinfo=UTC), Grain.DAY, berlin)
    autumn = period_of(datetime(2025, 10, 26, 12, tzinfo=UTC), Grain.DAY, berlin)
    assert (spring.end - spring.start, len(children(spring, berlin))) == (timedelta(hours=23), 23)
    assert (autumn.end - autumn.start, len(children(autumn, berlin))) == (timedelta(hours=25), 25)
    assert spring.start == datetime(2025, 3, 29, 23, tzinfo=UTC)
    kolkata = Calendar.of("Asia/Kolkata")
    day = period_of(datetime(2025, 3, 30, 12, tzinfo=UTC), Grain.DAY, kolkata)
    assert day.start == datetime(2025, 3, 29, 18, 30, tzinfo=UTC) and len(children(day, kolkata)) == 23


# -- merges on every backend -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "minio", "gcs"])
def test_hour_day_week_hold_every_row_once_and_late_data_is_remerged(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, _ = make_store(backend, tmp_path, request)
    writer = MinuteWriter(store)
    config = MergerConfig(calendar=Calendar.of("UTC"))
    # Two hours straddling midnight (23→24 and the next day's 00→01), with a replayed minute.
    rows = writer.rows(datetime(2025, 6, 7, 23, 0, tzinfo=UTC), 1200, timedelta(seconds=6))
    writer.write(rows)
    replay = rows.filter(pl.col("timestamp").dt.minute() == 7)
    writer.write(replay, tag="r")  # same positions again under another name, as after a crash
    all_rows = rows

    report = run(store, Grain.HOUR, config, now=LATER)
    assert names(store, "hour") == ["20250607_23_24.parquet", "20250608_00_01.parquet"]
    hours = stored(store, "hour")
    assert hours.height == expected_unique(all_rows) == rows.height
    assert hours.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == hours.height
    assert len(report.merged) == 2
    for key in hours["_key"].unique().to_list():
        part = hours.filter(pl.col("_key") == key)
        assert part.equals(part.sort(list(DOMAIN.sort_key)))
    run(store, Grain.DAY, config, now=LATER)
    run(store, Grain.WEEK, config, now=LATER)
    assert names(store, "day") == ["20250607.parquet", "20250608.parquet"]
    assert names(store, "week") == ["20250601_20250607.parquet", "20250608_20250614.parquet"]
    assert stored(store, "day").height == stored(store, "week").height == rows.height
    assert run(store, Grain.HOUR, config, now=LATER).merged == []  # nothing changed: nothing to do

    # A late minute file for an already merged hour: hour, day and week are redone, rows once.
    late = writer.rows(datetime(2025, 6, 7, 23, 30, 1, tzinfo=UTC), 20, timedelta(milliseconds=50))
    writer.write(late)
    writer.write(late, tag="r")
    all_rows = pl.concat([all_rows, late])
    assert [r.key for r in run(store, Grain.HOUR, config, now=LATER).merged] == [
        f"{DOMAIN.name}/hour/20250607_23_24.parquet"
    ]
    assert [r.key for r in run(store, Grain.DAY, config, now=LATER).merged] == [f"{DOMAIN.name}/day/20250607.parquet"]
    assert [r.key for r in run(store, Grain.WEEK, config, now=LATER).merged] == [
        f"{DOMAIN.name}/week/20250601_20250607.parquet"
    ]
    for grain in ("hour", "day", "week"):
        merged = stored(store, grain)
        assert merged.height == expected_unique(all_rows), grain
        assert duckdb.sql("select count(*) from merged").fetchall()[0][0] == all_rows.height
    manifest = Manifest.from_json(
        store.get(
            manifest_key(DOMAIN.name, period_of(datetime(2025, 6, 7, 23, tzinfo=UTC), Grain.HOUR, config.calendar))
        )
    )
    assert manifest.rows == all_rows.filter(pl.col("timestamp").dt.hour() == 23).height


def test_day_in_a_dst_zone_holds_exactly_its_local_day(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store, _ = make_store("local", tmp_path, request)
    writer = MinuteWriter(store)
    berlin = Calendar.of("Europe/Berlin")
    rows = writer.rows(datetime(2025, 3, 29, 22, 0, tzinfo=UTC), 1500, timedelta(minutes=1))  # 25 h of data
    writer.write(rows)
    config = MergerConfig(calendar=berlin)
    run(store, Grain.HOUR, config, now=LATER)
    run(store, Grain.DAY, config, now=LATER)
    day = stored(store, "day").filter(pl.col("_key").str.ends_with("20250330.parquet"))
    start, end = datetime(2025, 3, 29, 23, tzinfo=UTC), datetime(2025, 3, 30, 22, tzinfo=UTC)
    expected = rows.filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end))
    assert day.height == expected.height == 23 * 60


def test_two_mergers_at_once_give_the_same_result_as_one(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store, _ = make_store("local", tmp_path, request)
    writer = MinuteWriter(store)
    rows = writer.rows(datetime(2025, 6, 7, 20, 0, tzinfo=UTC), 2000, timedelta(seconds=5))
    writer.write(rows)
    config = MergerConfig(calendar=Calendar.of("UTC"))
    threads = [threading.Thread(target=run, args=(store, Grain.HOUR, config), kwargs={"now": LATER}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run(store, Grain.HOUR, config, now=LATER)  # whatever a skipped run left is caught up here
    hours = stored(store, "hour")
    assert hours.height == rows.height
    assert names(store, "hour") == [f"20250607_{h}_{h + 1}.parquet" for h in range(20, 23)]
    assert not [o.key for o in store.list("_locks/")]


def test_killed_merger_rerun_leaves_no_missing_duplicated_or_unreadable_file(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, env = make_store("local", tmp_path, request)
    writer = MinuteWriter(store)
    rows = writer.rows(datetime(2025, 6, 7, 12, 0, tzinfo=UTC), 6000, timedelta(seconds=3))
    minute_keys = set(writer.write(rows))
    rng = random.Random(7)
    command = [sys.executable, "-m", "merger", "hour", "--now", LATER.isoformat()]
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text", "MINUTE_KEEP_HOURS": "0"}
    trials = 3
    for _ in range(trials):
        proc = subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store.delete("_locks/merger-hour.json")  # a killed run cannot release its lease; it would expire
        # Sources are deleted only when the stored hour file's manifest holds them.
        remaining = {o.key for o in store.list(f"{DOMAIN.name}/minute/")}
        for key in minute_keys - remaining:
            hour = period_of(
                datetime.strptime(key.split("/")[-1][:13], "%Y%m%d_%H%M").replace(tzinfo=UTC), Grain.HOUR, Calendar()
            )
            manifest = Manifest.from_json(store.get(manifest_key(DOMAIN.name, hour)))
            assert key in manifest.leaves
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    hours = stored(store, "hour")
    assert hours.height == rows.height
    assert hours.select(pl.struct("kafka_partition", "kafka_offset").n_unique()).item() == rows.height
    assert names(store, "hour") == [f"20250607_{h}_{h + 1}.parquet" for h in range(12, 17)]
    assert not [o.key for o in store.list(f"{DOMAIN.name}/minute/")]  # keep period 0: all sources deleted
    print(f"merger kill -9 trials: {trials}")


def test_minute_files_are_kept_until_their_hour_is_verified_and_the_keep_period_passed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store, _ = make_store("local", tmp_path, request)
    writer = MinuteWriter(store)
    rows = writer.rows(datetime(2025, 6, 7, 10, 0, tzinfo=UTC), 600, timedelta(seconds=6))
    keys = writer.write(rows)
    config = MergerConfig(calendar=Calendar.of("UTC"), minute_keep=timedelta(hours=48))
    run(store, Grain.HOUR, config, now=datetime(2025, 6, 7, 12, 0, tzinfo=UTC))
    assert len(store.list(f"{DOMAIN.name}/minute/")) == len(keys)  # merged, but within the keep period
    run(store, Grain.HOUR, config, now=datetime(2025, 6, 9, 12, 0, tzinfo=UTC))
    assert store.list(f"{DOMAIN.name}/minute/") == []
    assert stored(store, "hour").height == rows.height
    # Past the domain's retention, merged files go too.
    run(store, Grain.HOUR, config, now=datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    assert store.list(f"{DOMAIN.name}/hour/") == []


@pytest.mark.parametrize("backend", ["local", "minio", "gcs"])
def test_query_views_count_every_row_once_while_minute_and_merged_files_coexist(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from merger.query import build_views, mirror

    store, _ = make_store(backend, tmp_path, request)
    writer = MinuteWriter(store)
    config = MergerConfig(calendar=Calendar.of("UTC"))
    rows = writer.rows(datetime(2025, 6, 7, 10, 0, tzinfo=UTC), 1200, timedelta(seconds=6))  # 10:00-12:00
    writer.write(rows)
    writer.write(rows.filter(pl.col("timestamp").dt.minute() == 3), tag="r")  # replayed minutes
    run(store, Grain.HOUR, config, now=LATER, period_name="20250607_10_11")  # 11:00 stays as minute files
    run(store, Grain.DAY, config, now=LATER)  # the day is built from the hour file plus minute files
    late = writer.rows(datetime(2025, 6, 7, 10, 30, 1, tzinfo=UTC), 10, timedelta(milliseconds=10))
    writer.write(late)  # arrives after the day was merged: the day is outdated until re-merged
    con = duckdb.connect()
    for statement in build_views(store, config.calendar, mirror(store, tmp_path / "cache")):
        if statement.startswith("CREATE"):
            con.execute(statement)
    total = con.execute("SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM robot_status")
    assert total.fetchall()[0] == (rows.height + late.height,) * 2


def test_merging_in_entity_chunks_gives_the_same_sorted_file(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from merger.dataset import Dataset
    from merger.merge import merge_period

    store, _ = make_store("local", tmp_path, request)
    writer = MinuteWriter(store)
    rows = writer.rows(datetime(2025, 6, 7, 9, 0, tzinfo=UTC), 3000, timedelta(seconds=1))
    keys = writer.write(rows)
    writer.write(rows.head(200), tag="r")
    period = period_of(datetime(2025, 6, 7, 9, tzinfo=UTC), Grain.HOUR, Calendar())
    leaves = {k: 1 for k in keys}
    every_file = [o.key for o in store.list(f"{DOMAIN.name}/minute/")]  # with the replayed minute
    whole = merge_period(store, Dataset.facts(DOMAIN), period, every_file, leaves)
    single = stored(store, "hour").drop("_key")
    chunked = merge_period(store, Dataset.facts(DOMAIN), period, every_file, leaves, chunk_rows=400)
    split = stored(store, "hour").drop("_key")
    assert whole.rows == chunked.rows == rows.height == split.height
    assert split.equals(split.sort(list(DOMAIN.sort_key)))
    assert split.sort(list(DOMAIN.sort_key)).equals(single.sort(list(DOMAIN.sort_key)))
