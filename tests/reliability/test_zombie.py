"""Two members and ownership: scaling 1 -> 2 -> 1, and a zombie collector frozen in the middle of an upload."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from embedded.servers import MotoS3Server
from tests.reliability.faults import HttpFaultProxy
from tests.reliability.harness import BackgroundTraffic, Scenario, Supervisor, traffic, wait_for
from tests.support.collector_process import CollectorProcess

pytestmark = pytest.mark.slow

ALL_PARTITIONS = 32  # equipment_metrics 20 + robot_status 12


def _assigned(process: CollectorProcess) -> float:
    """Partitions a collector holds (-1 when it cannot be asked: not up yet, or dead)."""
    try:
        return process.total("fms_assigned_partitions")
    except OSError:
        return -1.0


def test_scale_1_2_1_moves_partitions_without_loss(scenario: Scenario) -> None:
    """A second member joins while traffic flows, then leaves again: partitions move to it and back.

    Members run supervised (restarted if they exit, as Kubernetes does) and must not exit: a member
    once aborted in a rebalance (a librdkafka callback after nested client calls in the revoke
    callback). With Tansu 0.6 the rebalance on the second member's join hands *every* partition to the
    newcomer instead of sharing them; the scenario checks the moves (first -> second on scale-up,
    second -> first on scale-down) with flushes and commits on revoke.
    """
    background = BackgroundTraffic(scenario.producer, traffic(seed=61), rate=120).start()
    first = Supervisor(scenario, "first")
    wait_for(lambda: _assigned(first.current) == ALL_PARTITIONS, 60, "the first member's assignment")
    time.sleep(3)
    second = Supervisor(scenario, "second")
    wait_for(lambda: _assigned(second.current) > 0, 90, "partitions to move to the second member")
    time.sleep(3)
    after_join = (_assigned(first.current), _assigned(second.current))
    second.stop().terminate(timeout=90)
    wait_for(lambda: _assigned(first.current) == ALL_PARTITIONS, 90, "every partition back on the first member")
    time.sleep(3)
    sent = background.stop()
    remaining = first.stop()
    scenario.wait_caught_up(remaining)
    assert not first.exits and not second.exits, f"members exited: first {first.exits}, second {second.exits}"
    report = scenario.finish()
    print(f"scale 1->2->1: (first, second) partitions after the join {after_join}, exits: first {first.exits}, "
          f"second {second.exits}; {sent} messages; {report.summary()}")


class FencedOverwrite(AssertionError):
    """A fenced writer rewrote another writer's file (with the same rows: anything else fails the oracle)."""


def test_zombie_frozen_mid_upload_neither_overwrites_nor_commits(
    scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server
) -> None:
    """The first member is SIGSTOPped while a minute-file upload is in flight (held at the proxy), for
    longer than max.poll.interval.ms; a second member takes its partitions, stores and commits. Then the
    zombie is SIGCONTinued and its upload completes: it must not replace the new owner's file, and
    nothing it commits may move a partition back or past durable data."""
    host, _, port = moto_server.endpoint.rpartition(":")
    with HttpFaultProxy(host, int(port)) as proxy:
        scenario = scenario_factory(endpoint=proxy.address)
        scenario.produce(traffic(seed=63).generate(1500))
        proxy.hold_puts, proxy.hold_match = True, "/minute/"
        zombie = scenario.collector("zombie", MAX_POLL_INTERVAL_MS="10000")
        assert proxy.put_seen.wait(60), "the zombie never started an upload"
        assert zombie.proc is not None
        os.kill(zombie.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        owner = scenario.collector("owner", MINIO_ENDPOINT=moto_server.endpoint)
        wait_for(lambda: owner.total("fms_assigned_partitions") == ALL_PARTITIONS, 90, "the owner's assignment")
        fenced_from = time.time()
        scenario.wait_caught_up(owner)
        owner_committed = scenario.committed()
        time.sleep(max(0.0, 12 - (time.monotonic() - stopped)))  # past max.poll.interval.ms (10 s)
        os.kill(zombie.proc.pid, signal.SIGCONT)
        proxy.release()  # the upload that was in flight when it froze now lands
        time.sleep(4)
        zombie.terminate(timeout=60)
        fenced_until = time.time()
        assert scenario.committed() == owner_committed, "the zombie's commits changed the group's offsets"
        report = scenario.finish(fenced={"zombie": (fenced_from, fenced_until)})  # other rows: a violation
    log = zombie.log_path.read_text(errors="replace")
    print(f"zombie: held uploads {proxy.held}, commit failures logged {log.count('offset commit failed')}, "
          f"uploads refused after the stall {log.count('not storing')}, uploads refused by the store as already there "
          f"{log.count('already stored (kept)')}, same-rows rewrites "
          f"{len(report.fenced_overwrites)}; {report.summary()}")
    if report.fenced_overwrites:
        raise FencedOverwrite("; ".join(report.fenced_overwrites))
