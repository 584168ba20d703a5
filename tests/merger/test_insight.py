"""The operator's three questions on data written by the real collector (anomaly engine on, real broker):
what did each sensor do this hour (statistics), what was rejected and why (DLQ Parquet), and is the
hour complete (markers from the collector's own progress objects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from anomaly import upload_samples
from domains import DOMAINS
from embedded.servers import TansuBroker
from merger.complete import load_progress, marker_key
from merger.periods import Calendar, Grain, period_of
from merger.query import build_views
from merger.run import MergerConfig, run
from merger.stats import STATS_SPECS
from storage.factory import StorageConfig, open_store
from tests.support.collector_process import CollectorProcess
from tests.support.kafka import committed_offsets, end_offsets, produce_tracked, read_topic
from trafficgen import FAULT_KINDS, TrafficGenerator

pytestmark = pytest.mark.slow

GROUP = "fms-realtime-collector"


def test_statistics_dlq_parquet_and_markers_from_a_real_collector_run(kafka: TansuBroker, tmp_path: Path) -> None:
    config = StorageConfig(backend="local", local_dir=str(tmp_path / "data"), bucket="fms-data")
    store = open_store(config, create_bucket=True)
    upload_samples(store)
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    rates = {kind: 0.03 / len(FAULT_KINDS) for kind in FAULT_KINDS}
    messages = TrafficGenerator(seed=9, fault_rates=rates, start=start, step=timedelta(seconds=1)).generate(5000)
    produced = produce_tracked(kafka.bootstrap, messages)
    env = {"KAFKA_BROKERS": kafka.bootstrap, "STORAGE_BACKEND": "local", "LOCAL_STORAGE_DIR": config.local_dir,
           "ANOMALY_ENABLED": "true", "WATERMARK_INTERVAL_SECONDS": "1"}  # fmt: skip
    collector = CollectorProcess(env, tmp_path).start()
    calendar = Calendar.of("UTC")
    hours = [period_of(start, Grain.HOUR, calendar), period_of(start + timedelta(hours=1), Grain.HOUR, calendar)]
    try:
        ends = end_offsets(produced)
        collector.wait_until(lambda: committed_offsets(kafka.bootstrap, GROUP, ends) == ends, 180, "all committed")

        def every_domain_passed() -> bool:
            progress = load_progress(store, GROUP)
            return all(
                (p := progress.get(name)) is not None and (t := p.passed()) is not None and t > hours[1].end
                for name in DOMAINS
            )

        collector.wait_until(every_domain_passed, 60, "progress of every partition past the data")
        assert collector.terminate() == 0
    finally:
        collector.kill()

    report = run(store, Grain.HOUR, MergerConfig(calendar=calendar))
    assert {c.split("/")[1] for c in report.completed} == {h.name for h in hours}
    for name in DOMAINS:
        for hour in hours:
            assert store.exists(marker_key(name, hour)), (name, hour.name)

    con = duckdb.connect()
    for statement in build_views(store, calendar, lambda key: str(Path(config.local_dir) / "fms-data" / key)):
        if statement.startswith("CREATE"):
            con.execute(statement)

    # What was rejected and why: the DLQ Parquet rows are exactly the DLQ topics' records of messages.
    for name, domain in DOMAINS.items():
        records = read_topic(kafka.bootstrap, domain.dlq_topic.name, domain.dlq_topic.partitions, idle_s=2)
        on_topic = set()
        for record in records:
            headers = {k: v.decode() for k, v in record.headers() or []}
            if "dlq.source.offset" in headers:  # offline-sweep findings have no source message
                on_topic.add((headers["dlq.source.topic"], int(headers["dlq.source.partition"]),
                              int(headers["dlq.source.offset"]), headers["dlq.reason"]))  # fmt: skip
        stored = con.execute(
            f"SELECT kafka_topic, kafka_partition, kafka_offset, reason FROM {name}_dlq"
        ).fetchall()
        assert len(stored) == len(set(stored)) and set(stored) == on_topic, name
    assert sum(con.execute(f"SELECT count(*) FROM {n}_dlq").fetchall()[0][0] for n in DOMAINS) >= 50
    # Flagged by the engine (kept as facts too): stored with the decoded row.
    flagged = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE json_extract_string(decoded, '$.equipment_id') = entity_id) "
        "FROM equipment_metrics_dlq WHERE NOT rejected"
    ).fetchall()[0]
    assert flagged[0] > 0 and flagged[0] == flagged[1]

    # What each sensor did: statistics equal direct queries over the facts and DLQ rows of the hour.
    hour = hours[0]
    where = f"timestamp >= TIMESTAMPTZ '{hour.start.isoformat()}' AND timestamp < TIMESTAMPTZ '{hour.end.isoformat()}'"
    for name, spec in STATS_SPECS.items():
        measure = spec.measures[0]
        unit = spec.unit or "NULL"
        expected = con.execute(
            f"SELECT {spec.entity}::VARCHAR, {spec.kind}::VARCHAR, location, {unit}::VARCHAR, count({measure}), "
            f"min({measure})::DOUBLE, max({measure})::DOUBLE, avg({measure})::DOUBLE, "
            f"quantile_cont({measure}::DOUBLE, 0.95) FROM {name} WHERE {where} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        got = con.execute(
            f"SELECT entity_id, kind, location, unit, count, min, max, mean, p95 FROM {name}_stats_hour "
            f"WHERE period = '{hour.name}' AND section = 'measure' ORDER BY ALL"
        ).fetchall()
        assert len(got) == len(expected) > 0, name
        for g, e in zip(got, expected, strict=True):
            assert g[:5] == e[:5] and g[5:] == pytest.approx(e[5:], rel=1e-9, nan_ok=True), name
        def counted(section: str, name: str = name) -> list[tuple[object, ...]]:
            return con.execute(
                f"SELECT entity_id, name, count FROM {name}_stats_hour WHERE period = '{hour.name}' "
                f"AND section = '{section}' ORDER BY ALL"
            ).fetchall()

        anomalies = con.execute(
            f"SELECT {spec.entity}::VARCHAR, anomaly_rule, count(*) FROM {name} WHERE {where} AND anomaly "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        assert anomalies == counted("anomaly"), name
        rejected = con.execute(
            f"SELECT entity_id, reason, count(*) FROM {name}_dlq WHERE {where} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        assert rejected == counted("dlq"), name
    energy = con.execute(
        f"SELECT round(sum(usage_std), 6), round(sum(carbon_g), 6), round(sum(cost), 6) FROM energy_usage WHERE {where}"
    ).fetchall()
    assert energy == con.execute(
        f"SELECT round(sum(total), 6), round(sum(carbon_g), 6), round(sum(cost), 6) FROM energy_usage_stats_hour "
        f"WHERE period = '{hour.name}' AND section = 'energy'"
    ).fetchall()
    assert energy[0][0] is not None and energy[0][0] > 0

    # Is it complete: every row of the two hours is in the complete view.
    for name in DOMAINS:
        assert con.execute(f"SELECT count(*) FROM {name}_complete").fetchall() == con.execute(
            f"SELECT count(*) FROM {name}").fetchall(), name
