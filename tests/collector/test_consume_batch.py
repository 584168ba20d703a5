"""How the collector takes a batch: from a real broker (Tansu), at most BATCH_SIZE messages, every
message once and in partition order; and a message taken before a rebalance that moved its partition
away is left to the new owner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from collector.app import Collector
from domains import DOMAINS
from embedded.servers import TansuBroker
from settings import collector_settings
from storage.local import LocalStore
from trafficgen import TrafficGenerator, produce

QC = DOMAINS["qc_result"].topic


def _collector(bootstrap: str, tmp_path: Path, batch_size: int) -> Collector:
    settings = collector_settings({"KAFKA_BROKERS": bootstrap, "KAFKA_TOPIC": QC.name, "BATCH_SIZE": str(batch_size),
                                   "BATCH_WAIT_SECONDS": "0.5", "ANOMALY_ENABLED": "false", "HTTP_PORT": "0",
                                   "LOCAL_STORAGE_DIR": str(tmp_path)})  # fmt: skip
    return Collector(settings, LocalStore(tmp_path, "fms-data"))


def _close(collector: Collector, consumer: Consumer) -> None:
    consumer.close()
    collector.dlq.close(5)
    if collector.workers is not None:
        collector.workers.shutdown()


def test_batches_hold_at_most_batch_size_and_every_message_once(kafka: TansuBroker, tmp_path: Path) -> None:
    sent = produce((m for m in TrafficGenerator(seed=11).generate(3_000) if m.topic == QC.name), kafka.bootstrap)
    assert sent > 120
    collector = _collector(kafka.bootstrap, tmp_path, 50)
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
        _close(collector, collector.consumer)
    positions = [p for batch in batches for p in batch]
    assert len(positions) == sent == len(set(positions))
    assert max(map(len, batches)) == 50  # a backlog fills batches up to BATCH_SIZE, not beyond
    for partition in range(QC.partitions):
        offsets = [o for p, o in positions if p == partition]
        assert offsets == list(range(len(offsets)))  # in partition order, none skipped


class _RebalancingConsumer:
    """The real consumer, except that a cooperative rebalance taking ``revoked`` away is served while
    the batch's second call runs (as librdkafka serves callbacks inside consume())."""

    def __init__(self, real: Consumer, collector: Collector, revoked: TopicPartition) -> None:
        self.real, self.collector, self.revoked = real, collector, revoked

    def poll(self, timeout: float) -> Message | None:
        return self.real.poll(timeout)

    def consume(self, n: int, timeout: float) -> list[Message]:
        self.collector._on_revoke(self.real, [self.revoked])
        self.real.incremental_unassign([self.revoked])
        return self.real.consume(n, timeout)


def test_a_message_whose_partition_is_revoked_while_its_batch_is_taken_is_left_to_the_new_owner(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    # Messages on partition 0 only; partition 1 stays empty.
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for m in TrafficGenerator(seed=11).generate(600):
        if m.topic == QC.name:
            producer.produce(QC.name, key=m.key, value=m.value, partition=0)
    assert producer.flush(30) == 0
    for revoked, first_kept in ((0, False), (1, True)):
        collector = _collector(kafka.bootstrap, tmp_path, 1_000)
        real = collector.consumer
        try:
            real.incremental_assign([TopicPartition(QC.name, 0, 0), TopicPartition(QC.name, 1, 0)])
            collector.consumer = cast(Consumer, _RebalancingConsumer(real, collector, TopicPartition(QC.name, revoked)))
            batch = collector.consume_batch()
        finally:
            _close(collector, real)
        offsets = [m.offset() for m in batch]
        assert all(m.partition() == 0 for m in batch)
        if first_kept:  # another partition moved: the batch is partition 0's messages from offset 0 on
            assert offsets == list(range(len(offsets))) and offsets
        else:  # the first message's own partition moved: nothing of it is processed here
            assert offsets == []
