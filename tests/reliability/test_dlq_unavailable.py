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
        robot_topic = DOMAINS["robot_status"].topic.name
        for p in scenario.produced:
            tp = (p.message.topic, p.partition)
            if p.message.expected_reason and p.message.topic == robot_topic:  # other DLQ topics take records
                first_reject[tp] = min(first_reject.get(tp, p.offset), p.offset)
        assert first_reject, "no rejected robot_status message"
        ends = scenario.ends()
        flowing = {tp: end for tp, end in ends.items() if tp not in first_reject}

        def others_done() -> bool:
            committed = scenario.committed()
            return all(committed.get(tp, -1) >= end for tp, end in flowing.items())

        wait_for(others_done, 90, "partitions without a rejected robot_status message to be committed (the other "
                 "domains' DLQ records too: a producer fenced by the refusal is replaced)")
        time.sleep(3)
        committed = scenario.committed()
        held = {tp: (committed.get(tp), offset) for tp, offset in first_reject.items()}
        assert all((c if c is not None and c >= 0 else 0) <= offset for c, offset in held.values()), (
            f"a partition was committed past a message whose DLQ record was refused: {held}"
        )
        log_path = supervisor.current.log_path
        refused_while_down = log_path.read_text(errors="replace").count("DLQ delivery failed")
        # Tansu keeps a removed schema cached in its registry, so the broker restarts (S3 storage: nothing
        # is lost) without it; the collector keeps running through the restart. After refusing a record
        # Tansu fences the idempotent DLQ producer (librdkafka bumps the epoch; Tansu answers
        # PRODUCER_FENCED to every later record): the collector must replace its producer by itself.
        checking_broker.stop()
        checking_broker.accept_records(dlq_topic)
        checking_broker.start()
        collector = supervisor.current
        scenario.wait_caught_up(collector, timeout=150)
        log = log_path.read_text(errors="replace")
        collector = supervisor.stop()
        collector.terminate(timeout=90)
        report = scenario.finish()
    finally:
        supervisor.stop()
        scenario.close()
    failures_logged = log.count("delivery failed, will retry")
    print(f"DLQ unavailable: {len(first_reject)} partitions held at their first rejected offset, "
          f"{refused_while_down} refused deliveries logged while refused, {failures_logged} delivery-failure lines "
          f"in all, DLQ producers replaced {log.count('DLQ producer replaced')}, collector exits "
          f"{supervisor.exits}; {report.summary()}")
    assert supervisor.exits == [], f"the collector exited: {supervisor.exits}"
    # Retries back off and their log lines are throttled (once every 30 s per topic and error): the
    # suite once counted 3,685 lines in 90 s.
    assert 1 <= failures_logged <= 40, f"{failures_logged} delivery-failure lines"
