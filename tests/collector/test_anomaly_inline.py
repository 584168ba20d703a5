"""The anomaly engine inside the running collector: alarms on iot.alarm_log, flags in the files,
state across restarts, replays without new alarm ids, and the offline sweep (real broker)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import pytest

from anomaly import upload_samples
from domains import ALARM_TOPIC, DOMAINS
from embedded.servers import TansuBroker
from storage.base import ObjectStore
from storage.factory import StorageConfig, open_store
from tests.support.collector_process import CollectorProcess
from tests.support.kafka import committed_offsets, end_offsets, read_topic
from tests.support.stored import read_minutes
from trafficgen import GeneratedMessage

pytestmark = pytest.mark.slow

GROUP = "fms-realtime-collector"


def local_store(tmp_path: Path) -> tuple[ObjectStore, dict[str, str]]:
    config = StorageConfig(backend="local", local_dir=str(tmp_path / "data"), bucket="fms-data")
    store = open_store(config, create_bucket=True)
    upload_samples(store)
    return store, {"STORAGE_BACKEND": "local", "LOCAL_STORAGE_DIR": config.local_dir, "ANOMALY_ENABLED": "true"}


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def message(domain: str, record: dict[str, object]) -> GeneratedMessage:
    spec = DOMAINS[domain]
    return GeneratedMessage(
        domain=domain, topic=spec.topic.name, key=str(record[spec.entity_key]).encode(),
        value=orjson.dumps(record), fmt="json", fault=None, expected_reason=None, expected_flag=None,
        expected_rows=1, event_time=datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")),
        msg_id=f"{domain}-{record['timestamp']}",
    )


def energy(at: datetime, usage: float) -> GeneratedMessage:
    return message("energy_usage", {
        "timestamp": iso(at), "equipment_id": "LINE_A_PRESS_001", "energy_type": "electricity", "usage": usage,
        "unit": "kWh", "location": "line_a", "batch_id": "BATCH_20251121_001", "schema_version": "v1.1",
        "ingestion_timestamp": iso(at + timedelta(seconds=2)),
    })


def robot(at: datetime, robot_id: str, state: str = "moving", error_code: str | None = None) -> GeneratedMessage:
    return message("robot_status", {
        "timestamp": iso(at), "robot_id": robot_id, "model": "agv_type_a",
        "status": {"current": state, "previous": "moving", "changed_at": iso(at - timedelta(seconds=20))},
        "location": "zone_1", "battery_level": 80.0, "error_code": error_code, "task_id": None,
        "schema_version": "v2.0", "ingestion_timestamp": iso(at + timedelta(seconds=1)),
    })


def device(at: datetime, device_id: str = "SENSOR_ENV_001") -> GeneratedMessage:
    return message("device_status", {
        "timestamp": iso(at), "device_id": device_id, "device_type": "env_sensor", "location": "zone_7",
        "ip_address_hash": "0x7e239a00c0ffee11",
        "status": {"ping_success": True, "latency_ms": 40, "last_success_at": iso(at - timedelta(seconds=1))},
        "error_code": None, "schema_version": "v2.0", "ingestion_timestamp": iso(at + timedelta(seconds=1)),
    })


def alarms(kafka: TansuBroker, expect: int | None = None) -> list[dict[str, object]]:
    records = read_topic(kafka.bootstrap, ALARM_TOPIC.name, ALARM_TOPIC.partitions, expect=expect, idle_s=2)
    return [json.loads(r.value()) for r in records]


def off_peak(days_ago: int = 1) -> datetime:
    """03:00 UTC some days ago: outside the sample peak hours, in a minute that is long over."""
    return (datetime.now(UTC) - timedelta(days=days_ago)).replace(hour=3, minute=0, second=0, microsecond=0)


def test_alarm_after_three_exceedances_across_a_restart_and_no_new_id_on_replay(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    from tests.support.kafka import produce_tracked

    store, env = local_store(tmp_path)
    env = {"KAFKA_BROKERS": kafka.bootstrap, **env}
    start = off_peak()
    first = produce_tracked(kafka.bootstrap, [energy(start, 25.0), energy(start + timedelta(minutes=1), 26.0)])
    run1 = CollectorProcess(env, tmp_path, name="run1").start()
    try:
        run1.wait_until(lambda: committed_offsets(kafka.bootstrap, GROUP, end_offsets(first))
                        == end_offsets(first), 90, "first two exceedances committed")
        assert run1.terminate() == 0
    finally:
        run1.kill()
    assert [a for a in alarms(kafka) if a["domain"] == "energy_usage"] == []  # two in a row: still quiet

    later = produce_tracked(kafka.bootstrap, [
        energy(start + timedelta(minutes=2), 27.0), robot(start + timedelta(minutes=2), "ROBOT_005", "error", "E405"),
    ])
    # Run 2 publishes the alarms, then dies before committing: run 3 replays the same messages.
    run2 = CollectorProcess({**env, "COMMIT_INTERVAL_SECONDS": "120"}, tmp_path, name="run2").start()
    try:
        run2.wait_until(lambda: run2.total("fms_alarms_total") >= 2, 90, "alarms published")
        run2.kill()
    finally:
        run2.kill()
    run3 = CollectorProcess(env, tmp_path, name="run3").start()
    produced = first + later
    try:
        run3.wait_until(lambda: committed_offsets(kafka.bootstrap, GROUP, end_offsets(produced))
                        == end_offsets(produced), 90, "replay committed")
        assert run3.terminate() == 0
    finally:
        run3.kill()

    published = alarms(kafka, expect=4)
    energy_alarms = [a for a in published if a["domain"] == "energy_usage"]
    robot_alarms = [a for a in published if a["domain"] == "robot_status"]
    assert len({a["alarm_id"] for a in energy_alarms}) == 1, energy_alarms
    assert len(energy_alarms) == 2  # published by run 2 and again, with the same id, by the replay
    assert energy_alarms[0]["rule"] == "consecutive_exceedance"
    assert energy_alarms[0]["entity_id"] == "LINE_A_PRESS_001" and energy_alarms[0]["value"] == 27.0
    assert len({a["alarm_id"] for a in robot_alarms}) == 1 and robot_alarms[0]["entity_id"] == "ROBOT_005"

    rows = read_minutes(store, "energy_usage").unique(["kafka_partition", "kafka_offset"])
    assert rows.height == 3
    assert rows["anomaly"].to_list() == [True] * 3
    assert rows.sort("timestamp")["usage_std"].to_list() == [25.0, 26.0, 27.0]
    assert set(rows["threshold_max"].to_list()) == {21.0}
    assert rows.select((pl.col("carbon_g") - pl.col("usage_std") * 424.0).abs().max()).item() < 1e-6


def test_offline_sweep_raises_one_alarm_per_silence(kafka: TansuBroker, tmp_path: Path) -> None:
    from tests.support.kafka import produce_tracked

    _, env = local_store(tmp_path)
    env = {"KAFKA_BROKERS": kafka.bootstrap, "SWEEP_INTERVAL_SECONDS": "1", **env}
    now = datetime.now(UTC)
    # ROBOT_007: 30 s heartbeat x 20 = 10 min; SENSOR_ENV_001: 60 s x 2.5 = 150 s.
    produce_tracked(kafka.bootstrap, [robot(now - timedelta(minutes=15), "ROBOT_007"),
                                      device(now - timedelta(minutes=4))])
    collector = CollectorProcess(env, tmp_path).start()
    try:
        def offline() -> list[tuple[str, str]]:
            return sorted((str(a["domain"]), str(a["entity_id"])) for a in alarms(kafka)
                          if a["rule"] == "offline_timeout")

        collector.wait_until(lambda: len(offline()) >= 2, 60, "offline alarms")
        time.sleep(4)  # several more sweeps
        assert offline() == [("device_status", "SENSOR_ENV_001"), ("robot_status", "ROBOT_007")]
        produce_tracked(kafka.bootstrap, [robot(datetime.now(UTC), "ROBOT_007"), device(datetime.now(UTC))])
        time.sleep(5)
        assert len(offline()) == 2  # back online: no new alarm until they fall silent again
        assert collector.terminate() == 0
    finally:
        collector.kill()


def test_standalone_anomaly_worker_publishes_alarms_and_writes_no_files(kafka: TansuBroker, tmp_path: Path) -> None:
    from tests.support.kafka import produce_tracked

    store, env = local_store(tmp_path)
    produced = produce_tracked(kafka.bootstrap, [robot(off_peak(), "ROBOT_003", "error", "E102")])
    worker = CollectorProcess({"KAFKA_BROKERS": kafka.bootstrap, **env}, tmp_path, module="anomaly").start()
    try:
        worker.wait_until(lambda: committed_offsets(kafka.bootstrap, "fms-anomaly-engine", end_offsets(produced))
                          == end_offsets(produced), 90, "worker committed")
        assert worker.terminate() == 0
    finally:
        worker.kill()
    published = alarms(kafka, expect=1)
    assert [(a["entity_id"], a["domain"]) for a in published] == [("ROBOT_003", "robot_status")]
    assert [o.key for o in store.list("robot_status/")] == []
