"""Kafka helpers for tests: produce with known positions, read a topic back, read committed offsets."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from trafficgen import GeneratedMessage


@dataclass(frozen=True)
class Produced:
    """A generated message and where the broker put it."""

    message: GeneratedMessage
    partition: int
    offset: int


def produce_tracked(bootstrap: str, messages: Sequence[GeneratedMessage], timeout: float = 60.0) -> list[Produced]:
    """Produce messages keyed by entity and return their (partition, offset), in input order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    placed: list[Produced | None] = [None] * len(messages)
    errors: list[str] = []

    def on_delivery(index: int):  # noqa: ANN202
        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                placed[index] = Produced(messages[index], msg.partition(), msg.offset())  # type: ignore[arg-type]

        return callback

    for i, m in enumerate(messages):
        while True:
            try:
                producer.produce(m.topic, key=m.key, value=m.value, on_delivery=on_delivery(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0 and not errors, f"produce failed: {remaining} undelivered, errors {errors[:3]}"
    return [p for p in placed if p is not None]


def read_topic(
    bootstrap: str, topic: str, partitions: int, expect: int | None = None, idle_s: float = 3.0, timeout_s: float = 60.0
) -> list[Message]:
    """Every record of ``topic`` (explicit assignment, no group), stopping when idle or ``expect`` reached."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Message] = []
    started = last = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            if expect is not None and len(out) >= expect and time.monotonic() - last > 0.5:
                break
            batch = consumer.consume(1000, 0.5)
            good = [m for m in batch if m.error() is None]
            if good:
                out.extend(good)
                last = time.monotonic()
            elif time.monotonic() - last > idle_s and (expect is None or len(out) >= expect):
                break
    finally:
        consumer.close()
    return out


def committed_offsets(
    bootstrap: str, group: str, topic_partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The group's committed offset per partition (-1001 when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        result = consumer.committed([TopicPartition(t, p) for t, p in topic_partitions], timeout=10)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset for tp in result}


def end_offsets(produced: Iterable[Produced]) -> dict[tuple[str, int], int]:
    """Offset after the last produced record, per partition."""
    ends: dict[tuple[str, int], int] = {}
    for p in produced:
        key = (p.message.topic, p.partition)
        ends[key] = max(ends.get(key, 0), p.offset + 1)
    return ends
