"""The broker goes away and comes back; a topic gains partitions (Tansu on S3 storage, which persists)."""

from __future__ import annotations

import time

import pytest

from domains import DOMAINS
from tests.reliability.brokers import PersistentTansu
from tests.reliability.harness import BackgroundTraffic, Scenario, traffic, wait_for

pytestmark = pytest.mark.slow


def _stored(scenario: Scenario) -> int:
    return sum(p.log_path.read_text(errors="replace").count(" stored key=") for p in scenario.processes
               if p.log_path.exists())  # fmt: skip


def test_broker_stopped_and_restarted_mid_run(persistent_broker: PersistentTansu, persistent_scenario: Scenario
                                              ) -> None:  # fmt: skip
    scenario = persistent_scenario
    background = BackgroundTraffic(scenario.producer, traffic(seed=41), rate=120).start()
    collector = scenario.collector()
    wait_for(lambda: _stored(scenario) > 0, 90, "the first files")
    # The test's own producer is quiet across the restart: Tansu 0.6 (S3 engine) restarted in the middle
    # of a produce once acknowledged a retried batch as a duplicate without having stored it -- a broker
    # loss the oracle would blame on the collector. The collector stays connected throughout.
    background.pause()
    time.sleep(1)
    persistent_broker.stop()  # SIGTERM: the broker is gone; the collector's consumer and producer retry
    time.sleep(6)
    persistent_broker.start()
    background.resume()
    time.sleep(3)
    sent = background.stop()
    scenario.wait_caught_up(collector, timeout=180)
    assert collector.proc is not None and collector.proc.poll() is None, "the collector must survive the outage"
    report = scenario.finish()
    print(f"broker restart: {sent} messages sent around a 6 s broker outage; {report.summary()}")


def add_partitions_and_wait(broker: PersistentTansu, scenario: Scenario, timeout: float) -> None:
    """Two partitions join robot_status while a collector runs; messages land in them before it knows.
    They must be read from offset 0 within ``timeout`` seconds, and the oracle must pass."""
    generator = traffic(seed=43, domains=["robot_status"])
    scenario.produce(generator.generate(120))
    collector = scenario.collector(WATERMARK_INTERVAL_SECONDS="2")
    scenario.wait_caught_up(collector)
    topic = DOMAINS["robot_status"].topic
    broker.set_partitions(topic.name, topic.partitions + 2)
    wait_for(lambda: len(scenario.producer.producer.list_topics(topic.name, timeout=5).topics[topic.name].partitions)
             == topic.partitions + 2, 30, "the producer to see the new partitions")  # fmt: skip
    for partition in (topic.partitions, topic.partitions + 1):
        scenario.produce(generator.generate(40), partition=partition)
    scenario.produce(generator.generate(100))
    new = {(topic.name, topic.partitions), (topic.name, topic.partitions + 1)}
    assert new <= scenario.ends().keys()
    started = time.monotonic()
    scenario.wait_caught_up(collector, timeout=timeout)
    waited = time.monotonic() - started
    assert {p.offset for p in scenario.produced if (p.message.topic, p.partition) in new} >= set(range(40))
    report = scenario.finish()  # every offset of the new partitions, from 0, is stored or in the DLQ
    print(f"new partitions read from offset 0 after {waited:.0f} s; {report.summary()}")


def test_partitions_added_to_a_topic_are_read_within_a_minute(
    persistent_broker: PersistentTansu, persistent_scenario: Scenario
) -> None:
    add_partitions_and_wait(persistent_broker, persistent_scenario, timeout=60)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_partitions_added_to_a_topic_are_read_from_their_earliest_offset(
    persistent_broker: PersistentTansu, persistent_scenario: Scenario
) -> None:
    """The long version: waits out librdkafka's default 5-minute metadata refresh."""
    add_partitions_and_wait(persistent_broker, persistent_scenario, timeout=420)
