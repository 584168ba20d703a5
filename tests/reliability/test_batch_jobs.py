"""The merger and the backfill killed at random points (kill -9) and run again."""

from __future__ import annotations

import os
import random
import subprocess
import time
from datetime import timedelta

import pytest

from tests.reliability.harness import Scenario, chaos_trials, traffic, wait_for

pytestmark = pytest.mark.slow

LONG_STEP = timedelta(seconds=10)  # 1500 messages span ~4 hours: several hour files


def _stored_history(scenario: Scenario, n: int, seed: int) -> None:
    """``n`` messages over many hours, stored by a collector that then stops."""
    scenario.produce(traffic(seed=seed, step=LONG_STEP).generate(n))
    collector = scenario.collector()
    scenario.wait_caught_up(collector)
    collector.terminate(timeout=90)


def test_merger_killed_at_random_points_then_rerun_at_once(scenario: Scenario) -> None:
    """kill -9 of ``python -m merger hour|day|week`` mid-run, several times, each killed run followed at once
    by the next (a killed run's lease must not make its successor skip); then complete runs of every grain
    leave nothing pending, and the oracle checks the files."""
    _stored_history(scenario, 1500, seed=81)
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "81")))
    trials = chaos_trials(3)
    outcomes = []
    for trial in range(trials):
        grain = ("hour", "day", "week")[trial % 3] if trial >= 1 else "hour"
        job = scenario.start_module("merger", grain, name=f"merger-{trial}")
        time.sleep(rng.uniform(1.5, 4.0))
        outcomes.append(f"{grain}: {'killed' if job.poll() is None else f'finished ({job.returncode})'}")
        job.kill()
        job.wait(10)
    report = scenario.finish()  # merges every grain at once (a lease left by a killed run fails it)
    pending = scenario.pending()
    assert not any(pending.values()), f"periods left unmerged: {pending}"
    print(f"merger kill -9: {trials} trials {outcomes}; {report.summary()}")
    assert report.merged_files.get("hour", 0) >= 8  # two domains


def test_backfill_killed_at_random_points_then_rerun(scenario: Scenario) -> None:
    """History sits in Kafka before the realtime collector starts (at the end, KAFKA_AUTO_OFFSET_RESET=latest);
    new traffic goes to the collector; the backfill of the history is killed and re-run until it finishes."""
    history = traffic(seed=85)
    scenario.produce(history.generate(2000))
    realtime = scenario.collector(KAFKA_AUTO_OFFSET_RESET="latest")
    wait_for(lambda: realtime.probe("/readyz") == 200, 60, "the realtime collector")
    scenario.produce(history.generate(600))  # the same stream goes on: no de-dup key repeats
    scenario.wait_caught_up(realtime)
    env = {"KAFKA_GROUP_ID": "fms-backfill", "REALTIME_GROUP_ID": scenario.group, "BACKFILL_LEASE_SECONDS": "2",
           "MAX_BUFFER_BYTES": str(2 * 1024 * 1024), "SESSION_TIMEOUT_MS": "6000"}  # fmt: skip
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "85")))
    kills = 0
    for attempt in range(chaos_trials(3) + 5):
        job = scenario.start_module("backfill", "--no-merge", "--rate", "400", env=env, name=f"backfill-{attempt}")
        try:
            if attempt < chaos_trials(3):
                time.sleep(rng.uniform(1.5, 4.0))
                if job.poll() is None:
                    job.kill()
                    kills += 1
                    job.wait(10)
                    time.sleep(2.5)  # the killed run's lease (2 s) expires
                    continue
            job.wait(180)
        except subprocess.TimeoutExpired:
            job.kill()
            raise
        log = (scenario.tmp_path / f"backfill-{attempt}.log").read_text(errors="replace")
        if job.returncode == 0 and "backfill summary" in log:
            break
        time.sleep(2.5)
    else:
        raise AssertionError("the backfill never completed")
    boundaries = {
        (o.key.split("/")[-2], int(o.key.split("/")[-1])): int(scenario.store.get(o.key))
        for o in scenario.store.list(f"_backfill/boundary/{scenario.group}/")
    }
    report = scenario.finish(commit_floor=boundaries)
    print(f"backfill kill -9: {kills} kills, completed on attempt {attempt + 1}; {report.summary()}")
