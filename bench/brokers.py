"""The Kafka-protocol brokers a benchmark can run on, behind one context manager.

- ``tansu``: a Tansu broker process (``embedded.servers.TansuBroker``), topics created as production
  creates them (SPEC's partition counts). Its consumers get slower as a topic's log grows: a bare
  consumer's record age climbs from ~0.05 s to several seconds within a minute of live traffic at
  3,000 msg/s, whatever the fetch settings.
- ``mock``: librdkafka's in-process mock cluster (kept alive by a client of the benchmark process;
  other processes connect to its address). No CreateTopics: every topic is auto-created by a
  metadata request, with the mock's default of 4 partitions. Steady delivery latency (~0.06 s p50).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import Producer

from collector.topics import all_topics, create_topics
from embedded.servers import TansuBroker

BROKERS = ("tansu", "mock")


@contextmanager
def bench_broker(kind: str) -> Iterator[str]:
    """Start a broker of ``kind`` (one of :data:`BROKERS`) with every topic of the product; yield its
    bootstrap address; stop it on exit."""
    if kind == "tansu":
        with TansuBroker() as broker:
            create_topics(broker.bootstrap)
            yield broker.bootstrap
        return
    if kind != "mock":
        raise ValueError(f"unknown broker {kind!r}: expected one of {BROKERS}")
    owner = Producer({"test.mock.num.brokers": 1, "log_level": 4})  # the cluster lives as long as this client
    for spec in all_topics():
        owner.list_topics(topic=spec.name, timeout=10)  # a metadata request auto-creates the topic
    broker = next(iter(owner.list_topics(timeout=10).brokers.values()))
    try:
        yield f"{broker.host}:{broker.port}"
    finally:
        owner.flush(1)


def partition_count(bootstrap: str, topic: str) -> int:
    """Partitions of ``topic`` as the broker reports them (the mock does not use SPEC's counts)."""
    probe = Producer({"bootstrap.servers": bootstrap})
    return len(probe.list_topics(topic=topic, timeout=10).topics[topic].partitions)
