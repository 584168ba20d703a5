"""Collector crashes and stops: kill -9 at random points, SIGTERM in the middle of a flush.

Traffic keeps flowing while collectors die; at the end one collector catches up, the merger runs,
and the oracle checks every produced message against storage, the DLQ and the sampled commits.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import pytest

from embedded.servers import MotoS3Server
from tests.reliability.faults import HttpFaultProxy
from tests.reliability.harness import BackgroundTraffic, Scenario, chaos_trials, traffic, wait_for
from tests.support.collector_process import CollectorProcess

pytestmark = pytest.mark.slow

SMALL_BUFFER = str(1024 * 1024)  # frequent memory flushes: more kills land mid-flush


def _stored(process: CollectorProcess) -> int:
    try:
        return process.log_path.read_text(errors="replace").count(" stored key=")
    except OSError:
        return 0


def kill_nine_trials(scenario: Scenario, trials: int, seed: int, rate: float = 400.0) -> dict[str, int]:
    """Start a collector, kill -9 it at a random moment, ``trials`` times, with traffic flowing; then catch up.

    One kill in five lands at a random moment of the start-up (before or while joining the group);
    the others wait until the collector stores files and then kill it 0-2.5 s later, mostly in the
    middle of consuming, flushing or committing.
    """
    rng = random.Random(seed)
    background = BackgroundTraffic(scenario.producer, traffic(seed=seed), rate=rate).start()
    phases = {"during_startup": 0, "while_storing": 0}
    try:
        for trial in range(trials):
            victim = scenario.collector(f"kill{trial}", MAX_BUFFER_BYTES=SMALL_BUFFER)
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.2, 3.0))
                phases["during_startup"] += 1
            else:
                wait_for(lambda v=victim: _stored(v) > 0, 60, f"trial {trial}: the collector to store a file")
                time.sleep(rng.uniform(0.0, 2.5))
                phases["while_storing"] += 1
            victim.kill()
    finally:
        background.stop()
    final = scenario.collector("final", MAX_BUFFER_BYTES=SMALL_BUFFER)
    scenario.wait_caught_up(final, timeout=240)
    return phases


def test_kill_9_at_random_points(scenario: Scenario) -> None:
    trials, seed = chaos_trials(3), int(os.environ.get("CHAOS_SEED", "8"))
    phases = kill_nine_trials(scenario, trials, seed)
    report = scenario.finish()
    print(f"kill -9: {trials} trials (seed {seed}, {phases}); {report.summary()}")
    assert report.losses == 0 and report.duplicates == 0


@pytest.mark.chaos
@pytest.mark.timeout(7200)
def test_kill_9_long_run(scenario: Scenario) -> None:
    """The hand-run version: ``CHAOS_TRIALS`` (default 50) kills at 100 msg/s; figures go to RELIABILITY.md."""
    trials, seed = chaos_trials(50), int(os.environ.get("CHAOS_SEED", "2026"))
    phases = kill_nine_trials(scenario, trials, seed, rate=100.0)
    report = scenario.finish()
    print(f"kill -9 long run: {trials} trials (seed {seed}, {phases}); {report.summary()}")
    assert report.losses == 0 and report.duplicates == 0


def test_sigterm_mid_flush_stores_and_commits_everything(
    scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server
) -> None:
    """SIGTERM while uploads are slow and in flight: the collector finishes them, commits everything and
    exits 0 (SPEC §5; slow storage keeps consumer.close() busy past a statistics interval, which once
    made it abort); a restart reads nothing again."""
    host, _, port = moto_server.endpoint.rpartition(":")
    with HttpFaultProxy(host, int(port)) as proxy:
        scenario = scenario_factory(endpoint=proxy.address)
        collector = scenario.collector(MAX_BUFFER_BYTES=SMALL_BUFFER)
        wait_for(lambda: collector.probe("/readyz") == 200, 60, "the collector to be ready")
        proxy.delay = 0.1  # every request takes 100 ms: a flush of many minute files takes seconds
        scenario.produce(traffic(seed=3).generate(700))
        wait_for(lambda: _stored(collector) >= 3, 90, "the first uploads")
        code = collector.terminate(timeout=120)
        assert "shutdown complete: everything stored and committed" in collector.tail(200), collector.tail()
        assert code == 0, f"exit code {code}:\n{collector.tail(5)}"
        assert scenario.caught_up(), f"not everything committed at exit: {scenario.committed()}"
        proxy.delay = 0.0
        again = scenario.collector("restart")
        wait_for(lambda: again.probe("/readyz") == 200, 60, "the restarted collector to be ready")
        time.sleep(3)
        assert again.total("fms_messages_consumed_total") == 0, "a graceful stop must leave nothing to re-read"
        report = scenario.finish()
    print(f"SIGTERM mid-flush: {report.summary()}")
