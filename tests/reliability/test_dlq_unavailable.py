"""The DLQ topic refuses records for a while: the partitions with rejected messages stop advancing,
nothing is dropped, everything else flows; once the DLQ takes records again, all is accounted for."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from domains import DOMAINS
from embedded.servers import MotoS3Server
from tests.reliability.brokers import PersistentTansu
from tests.reliability.harness import Scenario, Supervisor, traffic, wait_for

pytestmark = pytest.mark.slow


def test_dlq_topic_unavailable_holds_its_partitions_and_drops_nothing(
    checking_broker: PersistentTansu, moto_server: MotoS3Server, tmp_path: Path
) -> None:
    scenario = Scenario(checking_broker.bootstrap, moto_server, tmp_path)
    supervisor = Supervisor(scenario)
    try:
        dlq_topic = DOMAINS["robot_status"].dlq_topic.name
        checking_broker.refuse_records(dlq_topic)  # Tansu answers INVALID_RECORD to every produce
        time.sleep(1.5)
        scenario.produce(traffic(seed=71, fault_rate=0.05).generate(1500))
        first_reject: dict[tuple[str, int], int] = {}
        for p in scenario.produced:
            tp = (p.message.topic, p.partition)
            if p.message.expected_reason:
                first_reject[tp] = min(first_reject.get(tp, p.offset), p.offset)
        assert any(t == DOMAINS["robot_status"].topic.name for t, _ in first_reject), "no rejected robot message"
        ends = scenario.ends()
        flowing = {tp: end for tp, end in ends.items() if tp not in first_reject}

        def others_done() -> bool:
            committed = scenario.committed()
            return all(committed.get(tp, -1) >= end for tp, end in flowing.items())

        wait_for(others_done, 90, "partitions without a rejected robot_status message to be committed")
        time.sleep(3)
        committed = scenario.committed()
        held = {tp: (committed.get(tp), offset) for tp, offset in first_reject.items()}
        assert all((c if c is not None and c >= 0 else 0) <= offset for c, offset in held.values()), (
            f"a partition was committed past a message whose DLQ record was refused: {held}"
        )
        refused_while_down = supervisor.current.log_path.read_text(errors="replace").count("DLQ delivery failed")
        # Two Tansu gaps shape the way back: its schema registry keeps a removed schema cached, and after
        # refusing a record it fences the idempotent DLQ producer (librdkafka bumps the epoch, Tansu then
        # answers PRODUCER_FENCED to every later record of every DLQ topic; on Kafka the bumped epoch
        # carries on). So the collector is stopped gracefully, the broker (S3 storage: nothing is lost)
        # restarts without the schema, and a new collector with a new producer delivers what was held.
        collector = supervisor.stop()
        collector.terminate(timeout=90)
        checking_broker.stop()
        checking_broker.accept_records(dlq_topic)
        checking_broker.start()
        collector = scenario.collector("after")
        scenario.wait_caught_up(collector, timeout=120)
        report = scenario.finish()
    finally:
        supervisor.stop()
        scenario.close()
    print(f"DLQ unavailable: {len(first_reject)} partitions held at their first rejected offset, "
          f"{refused_while_down} refused deliveries logged, collector exits {supervisor.exits}; {report.summary()}")
