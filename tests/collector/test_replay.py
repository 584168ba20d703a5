"""``python -m collector replay``: chosen DLQ records go back to their source topic, once."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from domains import DOMAINS
from embedded.servers import TansuBroker
from storage.factory import StorageConfig, open_store
from tests.support.collector_process import ROOT, CollectorProcess
from tests.support.kafka import committed_offsets, end_offsets, produce_tracked, read_topic
from tests.support.stored import read_dlq_minutes
from trafficgen import FAULT_KINDS, TrafficGenerator

pytestmark = pytest.mark.slow

GROUP = "fms-realtime-collector"
DOMAIN = DOMAINS["qc_result"]


def replay(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "replay", "--domain", DOMAIN.name, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_replay_sends_chosen_rejected_records_back_once(kafka: TansuBroker, tmp_path: Path) -> None:
    config = StorageConfig(backend="local", local_dir=str(tmp_path / "data"), bucket="fms-data")
    store = open_store(config, create_bucket=True)
    rates = {kind: 0.1 / len(FAULT_KINDS) for kind in FAULT_KINDS}
    start = datetime.now(UTC) - timedelta(hours=1)
    messages = TrafficGenerator(seed=4, domains=[DOMAIN.name], fault_rates=rates, start=start).generate(1500)
    produced = produce_tracked(kafka.bootstrap, messages)
    env = {"KAFKA_BROKERS": kafka.bootstrap, "STORAGE_BACKEND": "local", "LOCAL_STORAGE_DIR": config.local_dir}
    collector = CollectorProcess({**env, "KAFKA_TOPIC": DOMAIN.topic.name}, tmp_path).start()
    try:
        ends = end_offsets(produced)
        collector.wait_until(lambda: committed_offsets(kafka.bootstrap, GROUP, ends) == ends, 120, "all committed")
        assert collector.terminate() == 0
    finally:
        collector.kill()
    dlq = read_dlq_minutes(store, DOMAIN.name)
    reasons = dlq["reason"].value_counts().sort("count", descending=True)
    reason = str(reasons["reason"][0])
    chosen = {(r["kafka_partition"], r["kafka_offset"]): (r["kafka_key"], r["raw"])
              for r in dlq.filter(dlq["reason"] == reason).iter_rows(named=True)}  # fmt: skip
    assert len(chosen) >= 5 and dlq.height > len(chosen)  # another reason exists and is left alone

    assert f"{len(chosen)} records would be sent" in replay(env, "--reason", reason, "--dry-run")
    assert f"{len(chosen)} records sent" in replay(env, "--reason", reason)
    assert "0 records sent" in replay(env, "--reason", reason)  # the ledger remembers them

    total = len(produced) + len(chosen)
    records = read_topic(kafka.bootstrap, DOMAIN.topic.name, DOMAIN.topic.partitions, expect=total)
    replayed = [r for r in records if any(k == "fms.replay.of" for k, _ in r.headers() or [])]
    assert len(records) == total and len(replayed) == len(chosen)
    for record in replayed:
        headers = {k: v.decode() for k, v in record.headers() or []}
        _, partition, offset = headers["fms.replay.of"].rsplit(":", 2)
        assert chosen[(int(partition), int(offset))] == (record.key(), record.value())
        assert headers["fms.replay.reason"] == reason
