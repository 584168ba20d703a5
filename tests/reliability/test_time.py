"""Time: producers with skewed clocks, records on minute/day/year boundaries, a non-UTC container zone."""

from __future__ import annotations

import io
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from tests.reliability.harness import Scenario, past_start, traffic, wait_for
from trafficgen import GeneratedMessage

pytestmark = pytest.mark.slow

KEEP_MINUTES = {"MINUTE_KEEP_HOURS": "1000000"}  # keep minute files: their names are compared too


def skewed_traffic() -> list[GeneratedMessage]:
    """One stream on time, one from a producer 30 days behind, one 2 h and one 1 day ahead, interleaved."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    streams = [
        traffic(seed=91).generate(1200),
        traffic(seed=92, start=past_start(30)).generate(300),
        traffic(seed=93, start=now + timedelta(hours=2), fault_rate=0).generate(60),
        traffic(seed=94, start=now + timedelta(days=1), fault_rate=0).generate(60),
    ]
    mixed: list[GeneratedMessage] = []
    for i in range(max(map(len, streams))):
        mixed += [s[i] for s in streams if i < len(s)]
    return mixed


def test_clock_skew_future_and_far_past_events_are_all_stored(scenario: Scenario) -> None:
    """Far-past rows land in (and re-open) their old periods; future rows wait in memory for their minute
    and are written at the latest on shutdown; nothing is lost or doubled."""
    scenario.produce(skewed_traffic())
    collector = scenario.collector()
    wait_for(lambda: collector.total("fms_messages_consumed_total") >= len(scenario.produced), 60, "consumption")
    time.sleep(5)
    held = {tp: (c, e) for tp, e in scenario.ends().items() if (c := scenario.committed().get(tp, -1)) < e}
    collector.terminate(timeout=90)  # its exit code: see test_crashes
    report = scenario.finish()
    future_keys = [o.key for o in scenario.store.list("") if "/minute/" in o.key and o.key.split("/")[-1][:8]
                   > datetime.now(UTC).strftime("%Y%m%d_%H%M")[:8]]  # fmt: skip
    print(f"clock skew: {len(held)} partitions held back by future events while running; "
          f"{len(future_keys)} future minute files after shutdown; {report.summary()}")


def test_a_future_event_does_not_hold_its_partition(scenario: Scenario) -> None:
    messages = traffic(seed=95).generate(400)
    ahead = traffic(seed=96, start=datetime.now(UTC) + timedelta(days=1), fault_rate=0).generate(1)
    scenario.produce(messages[:200] + ahead + messages[200:])
    collector = scenario.collector()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not scenario.caught_up():
        time.sleep(1)
    behind = {tp: (scenario.committed().get(tp), end) for tp, end in scenario.ends().items()
              if scenario.committed().get(tp, -1) < end}  # fmt: skip
    collector.terminate(timeout=90)
    assert not behind, f"partitions not committed 40 s after their last message: {behind}"


BOUNDARIES = [
    datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),  # year, day, hour, minute
    datetime(2026, 1, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 14, 14, 59, 59, 999000, tzinfo=UTC),  # midnight in Seoul (UTC+9)
    datetime(2026, 3, 14, 15, 0, tzinfo=UTC),
    datetime(2026, 6, 30, 23, 59, 59, 999000, tzinfo=UTC),  # half year, month
    datetime(2026, 7, 1, 0, 0, tzinfo=UTC),
]


def boundary_traffic() -> list[GeneratedMessage]:
    """A few messages 1 ms apart around each boundary (every other field as the generator makes it)."""
    out: list[GeneratedMessage] = []
    for i, edge in enumerate(BOUNDARIES[::2]):
        out += traffic(seed=100 + i, start=edge - timedelta(milliseconds=3), step=timedelta(milliseconds=1),
                       fault_rate=0).generate(8)  # fmt: skip
    return out


def placement(scenario: Scenario) -> dict[tuple[str, int, int], set[str]]:
    """For each stored message: the files holding it (minute files by their time stamp only)."""
    where: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for info in scenario.store.list(""):
        parts = info.key.split("/")
        if len(parts) != 3 or parts[1] not in ("minute", "hour", "day", "week"):
            continue
        name = parts[2][:13] if parts[1] == "minute" else parts[2]
        table = pq.read_table(io.BytesIO(scenario.store.get(info.key)), columns=["kafka_topic", "kafka_partition",
                                                                                "kafka_offset"])  # fmt: skip
        for topic, partition, offset in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
            where[(topic, partition, offset)].add(f"{parts[0]}/{parts[1]}/{name}")
    return where


def test_boundaries_and_a_non_utc_zone_give_the_same_keys_as_utc(
    scenario_factory: Callable[..., Scenario],
) -> None:
    utc = scenario_factory(group="utc-run")
    seoul = scenario_factory(group="seoul-run")
    utc.produce(boundary_traffic())
    seoul.produced = utc.produced
    collectors = [(run, run.collector(f"tz-{zone.replace('/', '-')}", TZ=zone))
                  for run, zone in ((utc, "UTC"), (seoul, "Asia/Seoul"))]  # fmt: skip
    for run, collector in collectors:
        run.wait_caught_up(collector)
        collector.terminate(timeout=90)
    utc.finish(env=KEEP_MINUTES)
    # The merger as its own process in the zone, like a CronJob pod with TZ set: hour, day, week.
    done = seoul.run_python(
        "import sys\nfrom merger.__main__ import main\nsys.exit(main(['hour']) or main(['day']) or main(['week']))",
        env={"TZ": "Asia/Seoul", **KEEP_MINUTES}, name="merger-seoul",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seoul.finish(merge=False)
    in_utc, in_seoul = placement(utc), placement(seoul)
    assert in_utc == in_seoul, "a collector and merger in Asia/Seoul placed rows differently from UTC"
    by_position = {(p.message.topic, p.partition, p.offset): p.message for p in utc.produced}
    for position, files in in_utc.items():
        at = by_position[position].event_time
        domain = by_position[position].domain
        week_start = (at.date() - timedelta(days=(at.weekday() + 1) % 7))
        expected = {
            f"{domain}/minute/{at:%Y%m%d_%H%M}",
            f"{domain}/hour/{at:%Y%m%d_%H}_{at.hour + 1:02d}.parquet",
            f"{domain}/day/{at:%Y%m%d}.parquet",
            f"{domain}/week/{week_start:%Y%m%d}_{week_start + timedelta(days=6):%Y%m%d}.parquet",
        }
        assert files == expected, f"{position} at {at.isoformat()}: {sorted(files)} != {sorted(expected)}"
    print(f"boundaries: {len(in_utc)} messages around {len(BOUNDARIES)} instants, same keys in UTC and Asia/Seoul")
