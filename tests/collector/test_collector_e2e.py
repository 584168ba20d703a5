"""The collector as a subprocess against a real broker (Tansu) and real storage servers.

Every test ends by reading back what was stored (Parquet via DuckDB/pyarrow) and what reached the
DLQ topics, and comparing with what was produced.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from domains import DOMAINS
from embedded.servers import MotoS3Server, TansuBroker, TcpProxy
from storage.base import ObjectStore
from tests.support.collector_process import CollectorProcess
from tests.support.kafka import Produced, committed_offsets, end_offsets, produce_tracked, read_topic
from tests.support.storage import make_store
from tests.support.stored import MINUTE_KEY, minute_keys, read_dlq_minutes, read_minutes
from trafficgen import FAULT_KINDS, TrafficGenerator

pytestmark = pytest.mark.slow

GROUP = "fms-realtime-collector"


@dataclass
class Storage:
    env: dict[str, str]
    store: ObjectStore


def storage_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest, endpoint: str | None = None) -> Storage:
    store, env = make_store(backend, tmp_path, request, endpoint)
    return Storage(env=env, store=store)


def traffic(n: int, seed: int, fault_rate: float = 0.01, start: datetime | None = None):  # noqa: ANN201
    rates = {kind: fault_rate / len(FAULT_KINDS) for kind in FAULT_KINDS} if fault_rate else {}
    start = start or datetime.now(UTC) - timedelta(hours=2)
    return TrafficGenerator(seed=seed, formats=("avro", "json", "avro-confluent"), fault_rates=rates, start=start)


def wait_committed(
    kafka: TansuBroker, produced: list[Produced], collector: CollectorProcess, timeout: float = 120
) -> None:
    ends = end_offsets(produced)
    collector.wait_until(
        lambda: committed_offsets(kafka.bootstrap, GROUP, ends) == ends, timeout, "offsets committed to the end"
    )


def assert_stored_exactly_once(store: ObjectStore, produced: list[Produced]) -> None:
    """Every accepted message's rows are stored once; no rejected message has rows."""
    for name in DOMAINS:
        mine = [p for p in produced if p.message.domain == name]
        expected_rows = sum(p.message.expected_rows for p in mine)
        rows = read_minutes(store, name)
        stored = duckdb.sql("select count(*) from rows").fetchall()[0][0] if rows.height else 0
        assert stored == expected_rows, f"{name}: {stored} rows stored, {expected_rows} expected"
        if not rows.height:
            continue
        unique = rows.select(pl.struct("kafka_partition", "kafka_offset", "item_index").n_unique()).item()
        assert unique == rows.height, f"{name}: duplicate positions"
        good = {(p.partition, p.offset) for p in mine if p.message.expected_reason is None}
        assert set(rows.select("kafka_partition", "kafka_offset").unique().iter_rows()) == good


def assert_files_at_spec_paths(store: ObjectStore) -> None:
    for key in minute_keys(store):
        match = MINUTE_KEY.match(key)
        assert match, key
        rows = read_minutes(store, match["domain"]).filter(pl.col("_key") == key)
        stamps = set(rows["timestamp"].dt.strftime("%Y%m%d_%H%M").to_list())
        assert stamps == {match["stamp"]}, f"{key} holds rows of {stamps}"


def assert_dlq_matches(kafka: TansuBroker, produced: list[Produced], store: ObjectStore) -> None:
    """Every rejected message is on its DLQ with the right reason, original key and bytes, and the
    domain's DLQ Parquet rows are exactly the DLQ topic's records."""
    by_position = {(p.message.topic, p.partition, p.offset): p for p in produced}
    for name, domain in DOMAINS.items():
        expected = Counter(
            p.message.expected_reason for p in produced if p.message.domain == name and p.message.expected_reason
        )
        records = read_topic(
            kafka.bootstrap, domain.dlq_topic.name, domain.dlq_topic.partitions, expect=sum(expected.values()), idle_s=2
        )
        reasons: Counter[str] = Counter()
        on_topic: set[tuple[str, int, int, str, bytes]] = set()
        for record in records:
            headers = {k: v.decode() for k, v in record.headers() or []}
            source = by_position[
                (headers["dlq.source.topic"], int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"]))
            ]
            assert headers["dlq.reason"] == source.message.expected_reason, headers
            assert headers["dlq.domain"] == name and headers["dlq.detail"]
            assert record.value() == source.message.value and record.key() == source.message.key
            reasons[headers["dlq.reason"]] += 1
            on_topic.add((headers["dlq.source.topic"], int(headers["dlq.source.partition"]),
                          int(headers["dlq.source.offset"]), headers["dlq.reason"], record.value()))  # fmt: skip
        assert reasons == expected, f"{name}: DLQ {dict(reasons)} != expected {dict(expected)}"
        stored = read_dlq_minutes(store, name)
        in_parquet = [
            (r["kafka_topic"], r["kafka_partition"], r["kafka_offset"], r["reason"], r["raw"])
            for r in stored.iter_rows(named=True)
        ]
        assert len(in_parquet) == len(set(in_parquet)) and set(in_parquet) == on_topic, name


@pytest.mark.parametrize("backend", ["local", "minio", "gcs"])
def test_every_good_row_stored_once_and_every_bad_message_on_its_dlq(
    kafka: TansuBroker, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = storage_for(backend, tmp_path, request)
    messages = traffic(10_000, seed=11).generate(10_000)
    assert sum(1 for m in messages if m.expected_reason) >= 40  # ~1 % faults of every kind
    produced = produce_tracked(kafka.bootstrap, messages)
    collector = CollectorProcess({"KAFKA_BROKERS": kafka.bootstrap, **storage.env}, tmp_path).start()
    try:
        collector.wait_until(lambda: collector.total("fms_messages_consumed_total") >= len(messages), 120, "consume")
        wait_committed(kafka, produced, collector)
        assert collector.probe("/readyz") == 200 and collector.probe("/healthz") == 200
        assert collector.terminate() == 0
    finally:
        collector.kill()
    assert_stored_exactly_once(storage.store, produced)
    assert_files_at_spec_paths(storage.store)
    assert_dlq_matches(kafka, produced, storage.store)


def test_sigterm_stores_and_commits_everything_and_restart_rereads_nothing(
    kafka: TansuBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = storage_for("local", tmp_path, request)
    # Event times in the current minute: nothing is due, so only the shutdown flush stores them.
    messages = traffic(3000, seed=5, start=datetime.now(UTC), fault_rate=0.01).generate(3000)
    produced = produce_tracked(kafka.bootstrap, messages)
    env = {"KAFKA_BROKERS": kafka.bootstrap, "FLUSH_GRACE_SECONDS": "300", **storage.env}
    collector = CollectorProcess(env, tmp_path).start()
    try:
        collector.wait_until(lambda: collector.total("fms_messages_consumed_total") >= len(messages), 120, "consume")
        assert collector.total("fms_buffered_rows") > 0, "rows should still be buffered before SIGTERM"
        assert collector.terminate() == 0
    finally:
        collector.kill()
    ends = end_offsets(produced)
    assert committed_offsets(kafka.bootstrap, GROUP, ends) == ends
    assert_stored_exactly_once(storage.store, produced)
    keys_before = minute_keys(storage.store)

    again = CollectorProcess(env, tmp_path, name="restart").start()
    try:
        again.wait_until(lambda: again.probe("/readyz") == 200, 60, "assignment after restart")
        time.sleep(3)
        assert again.total("fms_messages_consumed_total") == 0
        assert again.terminate() == 0
    finally:
        again.kill()
    assert minute_keys(storage.store) == keys_before


def test_kill_9_then_restart_loses_no_row_and_duplicates_stay_in_minute_files(
    kafka: TansuBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = storage_for("local", tmp_path, request)
    rng = random.Random(2026)
    generator = traffic(0, seed=21)
    first = produce_tracked(kafka.bootstrap, generator.generate(6000))
    env = {"KAFKA_BROKERS": kafka.bootstrap, "MAX_BUFFER_BYTES": str(2 * 1024 * 1024), **storage.env}
    collector = CollectorProcess(env, tmp_path).start()
    produced = list(first)
    try:
        collector.wait_until(lambda: collector.total("fms_messages_consumed_total") > 0, 60, "first batch")
        more = threading.Thread(
            target=lambda: produced.extend(produce_tracked(kafka.bootstrap, generator.generate(6000)))
        )
        more.start()
        time.sleep(rng.uniform(0.2, 2.0))
        collector.kill()
        more.join()
    finally:
        collector.kill()

    restarted = CollectorProcess(env, tmp_path, name="restart").start()
    try:
        wait_committed(kafka, produced, restarted)
        assert restarted.terminate() == 0
    finally:
        restarted.kill()

    duplicates = 0
    for name in DOMAINS:
        rows = read_minutes(storage.store, name)
        good = {
            (p.partition, p.offset) for p in produced if p.message.domain == name and p.message.expected_reason is None
        }
        assert set(rows.select("kafka_partition", "kafka_offset").unique().iter_rows()) == good, f"{name}: rows lost"
        position = ["kafka_partition", "kafka_offset", "item_index"]
        repeated = rows.filter(pl.struct(position).is_duplicated())
        duplicates += repeated.height
        # A duplicate is a re-written copy of the same message: identical apart from collected_at.
        same = repeated.drop("collected_at", "_key").unique()
        assert same.height == repeated.select(position).unique().height
        assert all("/minute/" in k for k in repeated["_key"].to_list())
    print(f"kill -9 trial: {len(produced)} messages, {duplicates} duplicate rows confined to minute files")


def test_storage_outage_pauses_consumption_and_loses_nothing(
    kafka: TansuBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    moto: MotoS3Server = request.getfixturevalue("moto_server")
    host, _, port = moto.endpoint.rpartition(":")
    proxy = TcpProxy(host, int(port))
    proxy.start()
    limit = 4 * 1024 * 1024
    try:
        storage = storage_for("minio", tmp_path, request, endpoint=proxy.address)
        generator = traffic(0, seed=31)
        produced = produce_tracked(kafka.bootstrap, generator.generate(3000))
        env = {"KAFKA_BROKERS": kafka.bootstrap, "MAX_BUFFER_BYTES": str(limit), **storage.env}
        collector = CollectorProcess(env, tmp_path).start()
        try:
            collector.wait_until(lambda: collector.total("fms_files_written_total") > 0, 90, "first files")
            proxy.pause()
            produced += produce_tracked(kafka.bootstrap, generator.generate(20_000))
            peak_buffer, peak_rss = 0.0, 0
            outage_end = time.monotonic() + 30
            while time.monotonic() < outage_end:
                peak_buffer = max(peak_buffer, collector.total("fms_buffered_bytes"))
                peak_rss = max(peak_rss, _rss_bytes(collector.proc.pid))  # type: ignore[union-attr]
                time.sleep(0.5)
            assert collector.total("fms_storage_up") == 0
            assert collector.total("fms_storage_failures_total") > 0
            assert collector.probe("/readyz") == 503 and collector.probe("/healthz") == 200
            consumed_during_outage = collector.total("fms_messages_consumed_total")
            assert consumed_during_outage < len(produced), "consumption should pause while storage is down"
            proxy.resume()
            wait_committed(kafka, produced, collector, timeout=180)
            assert collector.terminate() == 0
        finally:
            collector.kill()
        assert peak_buffer <= limit * 1.5, f"buffer grew to {peak_buffer} bytes with limit {limit}"
        print(
            f"outage: peak buffer {peak_buffer / 2**20:.1f} MiB (limit {limit / 2**20:.0f}), "
            f"peak RSS {peak_rss / 2**20:.0f} MiB"
        )
        assert_stored_exactly_once(storage.store, produced)
    finally:
        proxy.stop()


def _rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match[1]) * 1024 if match else 0
