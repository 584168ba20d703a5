"""How the collector takes a batch from a real broker (Tansu): at most BATCH_SIZE messages, every
message once and in partition order, and a batch takes what the client already fetched."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import TopicPartition

from collector.app import Collector
from domains import DOMAINS
from embedded.servers import TansuBroker
from settings import collector_settings
from storage.local import LocalStore
from trafficgen import TrafficGenerator, produce

QC = DOMAINS["qc_result"].topic


def test_batches_hold_at_most_batch_size_and_every_message_once(kafka: TansuBroker, tmp_path: Path) -> None:
    sent = produce((m for m in TrafficGenerator(seed=11).generate(3_000) if m.topic == QC.name), kafka.bootstrap)
    assert sent > 120
    settings = collector_settings({"KAFKA_BROKERS": kafka.bootstrap, "KAFKA_TOPIC": QC.name, "BATCH_SIZE": "50",
                                   "BATCH_WAIT_SECONDS": "0.5", "ANOMALY_ENABLED": "false", "HTTP_PORT": "0",
                                   "LOCAL_STORAGE_DIR": str(tmp_path)})  # fmt: skip
    collector = Collector(settings, LocalStore(tmp_path, "fms-data"))
    try:
        collector.consumer.assign([TopicPartition(QC.name, p, 0) for p in range(QC.partitions)])
        batches: list[list[tuple[int, int]]] = []
        deadline = time.monotonic() + 60
        while sum(map(len, batches)) < sent and time.monotonic() < deadline:
            batch = collector.consume_batch()
            assert all(m.error() is None for m in batch)
            if batch:
                batches.append([(m.partition(), m.offset()) for m in batch])  # type: ignore[misc]
    finally:
        collector.consumer.close()
        collector.dlq.close(5)
        if collector.workers is not None:
            collector.workers.shutdown()
    positions = [p for batch in batches for p in batch]
    assert len(positions) == sent == len(set(positions))
    assert max(map(len, batches)) == 50  # a backlog fills batches up to BATCH_SIZE, not beyond
    for partition in range(QC.partitions):
        offsets = [o for p, o in positions if p == partition]
        assert offsets == list(range(len(offsets)))  # in partition order, none skipped
