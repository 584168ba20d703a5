"""The fast merge (merger.sorted_merge) against the general DuckDB merge on the same files: same rows,
same order, same positions; replays, re-sent keys, unsorted and partial sources, many ranges; and the
checks that stand between a merge and its publication."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector.parquet import encode_rows
from domains import DOMAINS
from domains.base import Domain
from domains.decode import BatchDecoder, MessageBatch
from merger.dataset import Dataset
from merger.merge import merge_duckdb, merge_local
from merger.periods import Calendar, Grain, Period, period_of
from merger.sorted_merge import NotMergeable, SourceFile, merge_sorted, range_rows
from merger.verify import Checker, VerificationError, verify_merged
from trafficgen import TrafficGenerator

START = datetime(2025, 6, 7, 9, 0, tzinfo=UTC)
HOUR = period_of(START, Grain.HOUR, Calendar())


def decoded(domain: Domain, start: datetime, n: int, step: timedelta, first_offset: int, seed: int) -> pl.DataFrame:
    """Rows of ``n`` generated messages, decoded by the collector's decoder, over three partitions."""
    messages = TrafficGenerator(seed=seed, domains=[domain.name], formats=["avro"], start=start, step=step).generate(n)
    offsets = list(range(first_offset, first_offset + n))
    batch = MessageBatch(domain.topic.name, [m.value for m in messages], [o % 3 for o in offsets], offsets, [0] * n)
    result = BatchDecoder(domain).decode(batch, datetime.now(UTC))
    assert not result.rejected
    return result.rows


def write_minutes(folder: Path, domain: Domain, rows: pl.DataFrame, tag: str = "") -> list[Path]:
    """Minute files as the collector writes them (one per event-time minute, sorted)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    minutes = rows.with_columns(pl.col("timestamp").dt.truncate("1m").alias("_m"))
    for (minute,), part in sorted(minutes.partition_by("_m", as_dict=True).items()):
        path = folder / f"{minute:%Y%m%d_%H%M}{tag}.parquet"
        path.write_bytes(encode_rows(part.drop("_m"), domain.sort_key, domain.flat_schema, {"domain": domain.name}))
        paths.append(path)
    return paths


def both(tmp_path: Path, dataset: Dataset, period: Period, files: list[SourceFile], chunk_rows: int | None = None
         ) -> tuple[pl.DataFrame, pl.DataFrame]:  # fmt: skip
    """The fast merge's and DuckDB's outputs of the same files (after checking both agree on counts)."""
    fast = merge_local(dataset, period, files, tmp_path / "fast.parquet", tmp_path, chunk_rows=chunk_rows)
    assert fast.method == "sorted"
    slow = merge_duckdb(dataset, period, [f.path for f in files], tmp_path / "duck.parquet", tmp_path, 512, chunk_rows)
    assert (fast.rows, fast.source_rows, fast.positions) == (slow.rows, slow.source_rows, slow.positions)
    return pl.read_parquet(tmp_path / "fast.parquet"), pl.read_parquet(tmp_path / "duck.parquet")


def arrow_types(path: Path) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in pq.read_schema(path)]


@pytest.mark.parametrize("domain_name", ["robot_status", "equipment_metrics"])
@pytest.mark.parametrize("chunk_rows", [None, 300, 40])  # 40: every entity split by time
def test_fast_merge_equals_duckdb_with_replays_and_resent_keys(
    tmp_path: Path, domain_name: str, chunk_rows: int | None
) -> None:
    domain = DOMAINS[domain_name]
    rows = decoded(domain, START, 1500, timedelta(seconds=2), 0, seed=3)  # 09:00-09:50
    paths = write_minutes(tmp_path / "src", domain, rows)
    # A replay after a crash: some minutes' messages again at the same positions, in other files.
    replay = rows.filter(pl.col("timestamp").dt.minute().is_in([3, 17, 44]))
    paths += write_minutes(tmp_path / "src", domain, replay, tag="-replay")
    # Re-sent messages: the same de-dup keys at later offsets (the earlier position wins) ...
    later = rows.filter(pl.col("kafka_offset") % 97 == 0).with_columns(pl.col("kafka_offset") + 100_000)
    # ... and at an earlier offset than the stored row, in a file of its own (it must win).
    earlier = rows.filter(pl.col("kafka_offset") % 89 == 5).with_columns(pl.col("kafka_offset") - 1_000_000)
    paths += write_minutes(tmp_path / "src", domain, pl.concat([later, earlier]), tag="-resent")
    files = [SourceFile(str(p)) for p in paths]
    fast, duck = both(tmp_path, Dataset.facts(domain), HOUR, files, chunk_rows)
    assert fast.equals(duck)  # same rows in the same order
    assert fast.height == rows.select(domain.dedup_key).unique().height
    assert fast.filter(pl.col("kafka_offset") < 0).height == earlier.height
    assert fast.filter(pl.col("kafka_offset") >= 100_000).is_empty()
    assert fast.equals(fast.sort(list(domain.sort_key)))
    assert arrow_types(tmp_path / "fast.parquet") == arrow_types(tmp_path / "duck.parquet")


def test_day_from_hour_files_is_assembled_without_checking_merged_files(tmp_path: Path) -> None:
    domain = DOMAINS["robot_status"]
    dataset = Dataset.facts(domain)
    rows = decoded(domain, datetime(2025, 6, 7, tzinfo=UTC), 2400, timedelta(seconds=36), 0, seed=5)  # a day
    day = period_of(datetime(2025, 6, 7, tzinfo=UTC), Grain.DAY, Calendar())
    hours = []
    for hour in range(24):
        part = rows.filter(pl.col("timestamp").dt.hour() == hour).sort(list(domain.sort_key))
        path = tmp_path / f"h{hour:02d}.parquet"
        pq.write_table(part.to_arrow(), path, row_group_size=30)
        hours.append(SourceFile(str(path), unique=True))
    outcome = merge_sorted(dataset, day, hours, tmp_path / "day.parquet", tmp_path, max_rows=500)
    assert (outcome.rows, outcome.duplicates, outcome.sorted_pieces) == (rows.height, 0, 0)
    assert outcome.ranges > 3
    merged = pl.read_parquet(tmp_path / "day.parquet")
    assert merged.equals(rows.sort(list(domain.sort_key)))
    verify_merged(tmp_path / "day.parquet", dataset, rows.height)


def test_unsorted_sources_rows_outside_the_period_and_missing_columns(tmp_path: Path) -> None:
    domain = DOMAINS["robot_status"]
    rows = decoded(domain, START - timedelta(minutes=5), 900, timedelta(seconds=5), 0, seed=7)  # 08:55-10:10
    shuffled = rows.sample(fraction=1.0, shuffle=True, seed=1)
    first, second = shuffled.head(500), shuffled.tail(400)
    pq.write_table(first.to_arrow(), tmp_path / "a.parquet", row_group_size=64)  # unsorted, several batches
    # A source written before an optional column existed: the merge fills it with nulls.
    pq.write_table(second.drop("error_code").to_arrow(), tmp_path / "b.parquet", row_group_size=64)
    files = [SourceFile(str(tmp_path / "a.parquet")), SourceFile(str(tmp_path / "b.parquet"))]
    fast, duck = both(tmp_path, Dataset.facts(domain), HOUR, files, chunk_rows=200)
    assert fast.equals(duck)
    inside = rows.filter((pl.col("timestamp") >= HOUR.start) & (pl.col("timestamp") < HOUR.end))
    assert fast.height == inside.height < rows.height
    assert fast.filter(pl.col("kafka_offset").is_in(second["kafka_offset"].to_list()))["error_code"].null_count() > 0
    outcome = merge_sorted(Dataset.facts(domain), HOUR, files, tmp_path / "again.parquet", tmp_path, max_rows=200)
    assert outcome.sorted_pieces > 0 and outcome.outside == rows.height - inside.height


def test_datasets_without_entity_in_the_key_use_duckdb(tmp_path: Path) -> None:
    domain = DOMAINS["environmental_readings"]
    rows = decoded(domain, START, 300, timedelta(seconds=6), 0, seed=9)
    files = [SourceFile(str(p)) for p in write_minutes(tmp_path / "src", domain, rows)]
    with pytest.raises(NotMergeable):
        merge_sorted(Dataset.facts(domain), HOUR, files, tmp_path / "x.parquet", tmp_path)
    merged = merge_local(Dataset.facts(domain), HOUR, files, tmp_path / "out.parquet", tmp_path)
    assert merged.method == "duckdb" and merged.rows == rows.select(domain.dedup_key).unique().height
    assert not (tmp_path / "x.parquet").exists()


def test_checks_refuse_unsorted_rows_repeated_keys_and_lost_twins(tmp_path: Path) -> None:
    domain = DOMAINS["robot_status"]
    dataset = Dataset.facts(domain)
    rows = decoded(domain, START, 200, timedelta(seconds=3), 0, seed=11).sort(list(domain.sort_key))
    good = rows.to_arrow()
    checker = Checker(dataset)
    checker.add(good)
    assert sum(int(p["rows"]) for p in checker.finish(rows.height)) == rows.height  # type: ignore[call-overload]
    with pytest.raises(VerificationError, match="not sorted"):
        Checker(dataset).add(rows.reverse().to_arrow())
    with pytest.raises(VerificationError, match="held twice"):
        twice = pl.concat([rows, rows.head(1).with_columns(pl.col("kafka_offset") + 10_000)])
        Checker(dataset).add(twice.sort(list(domain.sort_key)).to_arrow())
    with pytest.raises(VerificationError, match="missing"):
        Checker(dataset).add(good.slice(1), removed=rows.head(1).select(domain.dedup_key))
    with pytest.raises(VerificationError, match="rows checked"):
        Checker(dataset).finish(1)
    # Read back from a file: a row written twice is caught before publication.
    pq.write_table(pl.concat([rows, rows.tail(1)]).to_arrow(), tmp_path / "bad.parquet")
    with pytest.raises(VerificationError):
        verify_merged(tmp_path / "bad.parquet", dataset, rows.height + 1)


def test_range_size_follows_the_memory_budget() -> None:
    assert range_rows(256) < range_rows(512) < range_rows(2048)
    assert range_rows(64) >= 20_000  # a floor: never rows one by one
    assert 100_000 < range_rows(512) < 1_000_000


def test_many_sources_and_many_ranges_keep_every_row_once(tmp_path: Path) -> None:
    domain = DOMAINS["equipment_metrics"]
    rng = random.Random(3)
    parts = []
    for i in range(12):  # twelve writers' files of the same minutes, disjoint positions
        start = START + timedelta(seconds=rng.randint(0, 120))
        parts.append(decoded(domain, start, 60, timedelta(seconds=1), i * 1_000, seed=20 + i))
    paths = []
    for i, part in enumerate(parts):
        paths += write_minutes(tmp_path / "src", domain, part, tag=f"-w{i}")
    files = [SourceFile(str(p)) for p in paths]
    fast, duck = both(tmp_path, Dataset.facts(domain), HOUR, files, chunk_rows=150)
    assert fast.equals(duck)
    assert fast.height == pl.concat(parts).select(domain.dedup_key).unique().height


def test_large_dictionaries_are_cut_per_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import merger.sorted_merge as sorted_merge

    monkeypatch.setattr(sorted_merge, "LOCAL_DICTIONARY_BYTES", 0)  # every dictionary counts as large
    domain = DOMAINS["equipment_metrics"]
    rows = decoded(domain, START, 400, timedelta(seconds=5), 0, seed=31)
    files = [SourceFile(str(p)) for p in write_minutes(tmp_path / "src", domain, rows)]
    fast, duck = both(tmp_path, Dataset.facts(domain), HOUR, files, chunk_rows=200)
    assert fast.equals(duck)
    meta = pq.read_metadata(tmp_path / "fast.parquet")
    column = meta.schema.to_arrow_schema().get_field_index(domain.entity_key)
    stats = meta.row_group(0).column(column).statistics  # over the rows, not the dictionary's values
    head = fast.head(meta.row_group(0).num_rows)[domain.entity_key]
    assert (stats.min, stats.max) == (head.min(), head.max())


def test_a_result_failing_its_checks_is_merged_again_by_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import merger.sorted_merge as sorted_merge

    def broken(self: object, frame: pl.DataFrame, removed: pl.DataFrame | None) -> None:
        raise VerificationError("simulated: a de-dup key is held twice")

    monkeypatch.setattr(sorted_merge._Checks, "add", broken)
    domain = DOMAINS["robot_status"]
    rows = decoded(domain, START, 300, timedelta(seconds=6), 0, seed=33)
    files = [SourceFile(str(p)) for p in write_minutes(tmp_path / "src", domain, rows)]
    merged = merge_local(Dataset.facts(domain), HOUR, files, tmp_path / "out.parquet", tmp_path)
    assert merged.method == "duckdb" and merged.rows == rows.height
    assert pl.read_parquet(tmp_path / "out.parquet").equals(rows.sort(list(domain.sort_key)))


def test_a_spill_too_large_for_the_scratch_disk_is_compressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import merger.sorted_merge as sorted_merge

    monkeypatch.setattr(sorted_merge, "SPILL_DISK_SHARE", 0.0)  # no room: LZ4 spill files
    domain = DOMAINS["robot_status"]
    rows = decoded(domain, START, 600, timedelta(seconds=5), 0, seed=35)
    files = [SourceFile(str(p)) for p in write_minutes(tmp_path / "src", domain, rows)]
    fast, duck = both(tmp_path, Dataset.facts(domain), HOUR, files, chunk_rows=100)
    assert fast.equals(duck) and fast.height == rows.height


def test_scratch_of_a_merger_that_died_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from merger.merge import SCRATCH_PREFIX, remove_abandoned_scratch, scratch_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)  # fmt: skip
    abandoned = tmp_path / f"{SCRATCH_PREFIX}{int(dead.stdout)}-x1"
    (abandoned / "spill").mkdir(parents=True)
    (abandoned / "spill" / "part-0.arrow").write_bytes(b"\0" * 1024)
    mine = tmp_path / f"{scratch_prefix()}x2"
    other_running = tmp_path / f"{SCRATCH_PREFIX}{os.getppid()}-x3"
    unrelated = tmp_path / "fms-merge-notes"
    for folder in (mine, other_running, unrelated):
        folder.mkdir()
    assert remove_abandoned_scratch(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, other_running, unrelated))
