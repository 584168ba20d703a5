"""Duplicate detection with the compact state: the same flags as a row-by-row model, snapshots
(version 2, deterministic, far smaller than version 1) and the upgrade from version-1 snapshots."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import polars as pl
import pytest

from anomaly import AnomalyEngine, Dimensions, EngineConfig, EngineState
from anomaly.dedup import BUCKET_US, TARGET_ROWS
from anomaly.state import SNAPSHOT_MAGIC
from domains import DOMAINS
from domains.base import POSITION_KEY, UTC_MICROS
from tests.anomaly.helpers import NOW, message, rows_of
from tests.anomaly.test_rules import EQUIPMENT_DIMS

DOMAIN = DOMAINS["equipment_metrics"]
TOPIC = DOMAIN.topic.name
WINDOW = timedelta(minutes=15)
WINDOW_US = WINDOW // timedelta(microseconds=1)
T0 = 1_748_091_600_000_000  # 2025-05-24T13:00:00Z


def dedup_engine(state: EngineState | None = None) -> AnomalyEngine:
    return AnomalyEngine(Dimensions({}), state or EngineState(), EngineConfig())


def batch(rows: list[tuple[int, int, int, str, str, int]]) -> pl.DataFrame:
    """Rows (partition, offset, item_index, equipment_id, sensor_type, event_us) as decoded columns."""
    partition, offset, item, equipment, sensor, ts = zip(*rows, strict=True) if rows else ((),) * 6
    return pl.DataFrame({
        "timestamp": pl.Series(ts, dtype=pl.Int64).cast(UTC_MICROS),
        "equipment_id": pl.Series(equipment, dtype=pl.String), "sensor_type": pl.Series(sensor, dtype=pl.String),
        "item_index": pl.Series(item, dtype=pl.Int32),
        "kafka_topic": pl.Series([TOPIC] * len(ts), dtype=pl.String),
        "kafka_partition": pl.Series(partition, dtype=pl.Int32), "kafka_offset": pl.Series(offset, dtype=pl.Int64),
    })  # fmt: skip


class Model:
    """Row by row, the documented rule: a key seen within the watermark at another position is a duplicate."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[tuple[str, str, int], tuple[int, int]]] = {}
        self.newest: dict[int, int] = {}

    def flags(self, frame: pl.DataFrame) -> list[bool]:
        out = [False] * frame.height
        order = sorted(range(frame.height), key=lambda i: tuple(frame.row(i, named=True)[c] for c in POSITION_KEY))
        for i in order:
            row = frame.row(i, named=True)
            p, ts = row["kafka_partition"], int(row["timestamp"].timestamp() * 1_000_000)
            seen = self.seen.setdefault(p, {})
            key = (row["equipment_id"], row["sensor_type"], ts)
            position = (row["kafka_offset"], row["item_index"])
            if key in seen:
                out[i] = seen[key] != position
            else:
                seen[key] = position
        for p in {int(row["kafka_partition"]) for row in frame.iter_rows(named=True)}:
            newest = max(int(r["timestamp"].timestamp() * 1_000_000) for r in frame.filter(kafka_partition=p).iter_rows(
                named=True))  # fmt: skip
            self.newest[p] = max(self.newest.get(p, 0), newest)
            limit = self.newest[p] - WINDOW_US
            self.seen[p] = {k: v for k, v in self.seen[p].items() if k[2] >= limit}
        return out


def traffic(seed: int, batches: int) -> list[pl.DataFrame]:
    """Random batches over 3 partitions: in order, late, far too late, re-sent, replayed, same-batch repeats."""
    rng = random.Random(seed)
    offsets = [0, 0, 0]
    sent: list[tuple[int, int, int, str, str, int]] = []
    clock = T0
    out = []
    for _ in range(batches):
        rows = []
        clock += rng.randrange(0, 90_000_000)
        for _ in range(rng.randrange(0, 12)):
            partition = rng.randrange(3)
            draw = rng.random()
            if draw < 0.15 and sent:  # replay: the very same position again
                rows.append(rng.choice(sent))
                continue
            if draw < 0.35 and sent:  # re-sent at a new offset
                _, _, _, equipment, _, ts = rng.choice(sent)
            else:
                equipment = f"EQ_{rng.randrange(4)}"
                late = rng.random()
                ts = clock - (rng.randrange(0, 1_200_000_000) if late < 0.2 else rng.randrange(0, 3_000_000))
                ts -= ts % rng.choice([1, 1000, 1_000_000])  # often several rows on one bucket boundary
            partition = int(equipment[-1]) % 3 if rng.random() < 0.9 else partition
            for item, sensor in enumerate(rng.sample(["temperature", "vibration", "temperature"], 2)):
                rows.append((partition, offsets[partition], item, equipment, sensor, ts))
            offsets[partition] += 1
        sent += rows
        out.append(batch(rng.sample(rows, len(rows))))  # any order: the engine sorts by position
    return out


@pytest.mark.parametrize("seed", range(8))
def test_duplicate_flags_equal_the_row_by_row_model_across_snapshots(seed: int) -> None:
    model, engine = Model(), dedup_engine()
    flagged = 0
    for n, frame in enumerate(traffic(seed, 60)):
        got = engine.duplicates(DOMAIN, frame).to_list()
        assert got == model.flags(frame), f"batch {n}"
        flagged += sum(got)
        if n % 7 == 3:  # a restart: the next batches run on the restored state
            snapshot = engine.state.snapshot()
            engine = dedup_engine(EngineState.restore(snapshot))
            assert engine.state.snapshot() == snapshot
    assert flagged > 0


def test_replaying_the_first_position_in_the_same_batch_is_not_a_duplicate() -> None:
    rows = [(0, 5, 0, "EQ_1", "temperature", T0), (0, 5, 0, "EQ_1", "temperature", T0),
            (0, 6, 0, "EQ_1", "temperature", T0), (0, 4, 1, "EQ_1", "temperature", T0)]  # fmt: skip
    # Kafka order: offset 4 item 1 carried the key first; the rest repeat it.
    assert dedup_engine().duplicates(DOMAIN, batch(rows)).to_list() == [True, True, True, False]
    engine = dedup_engine()
    assert engine.duplicates(DOMAIN, batch(rows[:2])).to_list() == [False, False]  # a repeated position
    assert engine.duplicates(DOMAIN, batch(rows[:1])).to_list() == [False]


def test_keys_are_per_partition() -> None:
    engine = dedup_engine()
    assert engine.duplicates(DOMAIN, batch([(0, 0, 0, "EQ_1", "temperature", T0)])).to_list() == [False]
    assert engine.duplicates(DOMAIN, batch([(1, 0, 0, "EQ_1", "temperature", T0)])).to_list() == [False]
    assert engine.duplicates(DOMAIN, batch([(1, 1, 0, "EQ_1", "temperature", T0)])).to_list() == [True]


def test_state_stays_bounded_and_sparse_partitions_keep_few_frames() -> None:
    engine = dedup_engine()
    for second in range(0, 3600, 5):  # an hour, one message every 5 s, window 15 min
        engine.duplicates(DOMAIN, batch([(0, second, 0, "EQ_1", "temperature", T0 + second * 1_000_000)]))
    seen = engine.state.partition(TOPIC, 0).seen
    assert 180 <= seen.frame().height <= 181  # 15 min of keys, nothing older
    assert len(seen) <= 181 + TARGET_ROWS and seen.segments <= 3


def test_snapshot_v2_is_deterministic_and_far_smaller_than_v1() -> None:
    engine = dedup_engine()
    n, per_batch = 20_000, 2_000
    for first in range(0, n, per_batch):
        rows = [(i % 4, i // 4, 0, f"LINE_A_PRESS_{i % 50:03d}", ("temperature", "vibration")[i % 2],
                 T0 + (i // 2) * 10_000 + i % 7) for i in range(first, first + per_batch)]  # fmt: skip
        assert not engine.duplicates(DOMAIN, batch(rows)).any()
    snapshot = engine.state.snapshot()
    assert snapshot.startswith(SNAPSHOT_MAGIC)
    assert sum(p.seen.frame().height for p in engine.state.partitions.values()) == n
    v1 = v1_snapshot(engine.state)
    assert len(v1) > 10 * len(snapshot), (len(v1), len(snapshot))
    restored = EngineState.restore(snapshot)
    assert restored.snapshot() == snapshot
    assert EngineState.restore(v1).snapshot() == snapshot  # the same state, read from either version


def v1_snapshot(state: EngineState) -> bytes:
    """What the previous release wrote for ``state``: canonical JSON, keys as "|"-joined strings."""
    body = {}
    for (topic, partition), p in sorted(state.partitions.items()):
        seen = {
            f"{r['equipment_id']}|{r['sensor_type']}|{r['timestamp']}":
                [r["kafka_offset"], r["item_index"], r["timestamp"]]
            for r in p.seen.frame().iter_rows(named=True)
        }  # fmt: skip
        body[f"{topic}|{partition}"] = {"max_event_us": p.max_event_us, "seen": seen, "runs": p.runs,
                                        "last_seen": p.last_seen, "status": p.status, "battery": p.battery,
                                        "transitions": p.transitions, "drain_pct": p.drain_pct,
                                        "drain_hours": p.drain_hours}  # fmt: skip
    return json.dumps({"version": 1, "partitions": body}, sort_keys=True, separators=(",", ":")).encode()


# A version-1 snapshot as the previous release wrote it (equipment at offset 0: the seed example, two
# metric rows at 2025-05-24T13:00:00Z; an energy counter; a robot's status and last report).
V1_SNAPSHOT = json.dumps({"version": 1, "partitions": {
    "iot.equipment_metrics|0": {
        "max_event_us": T0, "runs": {}, "last_seen": {}, "status": {}, "battery": {}, "transitions": 0,
        "drain_pct": 0.0, "drain_hours": 0.0,
        "seen": {f"LINE_A_PRESS_001|temperature|{T0}": [0, 0, T0], f"LINE_A_PRESS_001|vibration|{T0}": [0, 1, T0],
                 f"LINE_B_WELD_002|temperature|{T0 - 60_000_000}": [7, 0, T0 - 60_000_000]},
    },
    "iot.energy_usage|3": {
        "max_event_us": T0, "seen": {f"LINE_C_PRESS_003|electricity|{T0}": [41, 0, T0]},
        "runs": {"LINE_C_PRESS_003|electricity": 2}, "last_seen": {}, "status": {}, "battery": {},
        "transitions": 0, "drain_pct": 0.0, "drain_hours": 0.0,
    },
    "iot.robot_status|1": {
        "max_event_us": 0, "seen": {}, "runs": {}, "status": {"ROBOT_005": "moving"},
        "battery": {"ROBOT_005": [T0, 80.0]}, "transitions": 4, "drain_pct": 3.5, "drain_hours": 0.25,
        "last_seen": {"ROBOT_005": {"domain": "robot_status", "ts": T0, "offset": 9, "item_index": 0,
                                    "location": "zone_1", "device_type": None, "alerted": False}},
    },
}}, sort_keys=True, separators=(",", ":")).encode()  # fmt: skip


def test_version_1_snapshot_restores_without_losing_state() -> None:
    state = EngineState.restore(V1_SNAPSHOT)
    equipment = state.partition("iot.equipment_metrics", 0)
    assert equipment.seen.frame().to_dicts() == [
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "temperature", "timestamp": T0, "kafka_offset": 0,
         "item_index": 0},
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "vibration", "timestamp": T0, "kafka_offset": 0,
         "item_index": 1},
        {"equipment_id": "LINE_B_WELD_002", "sensor_type": "temperature", "timestamp": T0 - 60_000_000,
         "kafka_offset": 7, "item_index": 0},
    ]  # fmt: skip
    assert state.partition("iot.energy_usage", 3).runs == {"LINE_C_PRESS_003|electricity": 2}
    robot = state.partition("iot.robot_status", 1)
    assert (robot.status, robot.transitions, robot.drain_pct, robot.last_seen["ROBOT_005"]["offset"]) == (
        {"ROBOT_005": "moving"}, 4, 3.5, 9)
    assert state.battery_drain_per_hour() == pytest.approx(14.0)

    # The restored keys still catch a duplicate; the message that first carried them is a replay.
    engine = AnomalyEngine(EQUIPMENT_DIMS, state, EngineConfig())
    again = engine.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")], 5), NOW)
    assert again.dlq["reason"].to_list() == ["duplicate"] and again.rows.height == 0
    replay = engine.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")], 0), NOW)
    assert replay.dlq.height == 0 and replay.rows.height == 2

    # Written again as version 2 and read back: the same state.
    v2 = state.snapshot()
    assert v2.startswith(SNAPSHOT_MAGIC) and EngineState.restore(v2).snapshot() == v2
    back = EngineState.restore(v2)
    assert back.partition("iot.energy_usage", 3).seen.frame().to_dicts() == [
        {"equipment_id": "LINE_C_PRESS_003", "energy_type": "electricity", "timestamp": T0, "kafka_offset": 41,
         "item_index": 0}]  # fmt: skip
    assert back.partition("iot.robot_status", 1).last_seen == robot.last_seen


def test_restore_rejects_what_is_not_a_snapshot() -> None:
    for data in (b"", b"garbage", b'{"version": 3, "partitions": {}}', SNAPSHOT_MAGIC + b'{"version":9}\n'):
        with pytest.raises(ValueError):
            EngineState.restore(data)


def test_empty_and_dedup_free_partitions_snapshot() -> None:
    engine = dedup_engine()
    assert engine.duplicates(DOMAIN, batch([])).to_list() == []
    robot = engine.state.partition("iot.robot_status", 2)
    robot.status["ROBOT_001"] = "idle"
    data = engine.state.snapshot()
    assert EngineState.restore(data).partition("iot.robot_status", 2).status == {"ROBOT_001": "idle"}
    assert BUCKET_US > 0


@pytest.mark.parametrize("newest_after", [0, 1, BUCKET_US // 2, BUCKET_US - 1, BUCKET_US, 3 * BUCKET_US + 7])
def test_watermark_boundary_inside_a_bucket(newest_after: int) -> None:
    """Keys at or above newest − window are kept (even in the bucket the limit falls in); older ones go."""
    limit = T0 + newest_after
    stamps = [limit - 1, limit, limit + 1, limit + BUCKET_US // 3, T0 - 1, T0]
    engine = dedup_engine()
    first = [(0, i, 0, f"EQ_{i}", "temperature", ts) for i, ts in enumerate(stamps)]
    assert not engine.duplicates(DOMAIN, batch(first)).any()
    engine.duplicates(DOMAIN, batch([(0, 100, 0, "EQ_9", "temperature", limit + WINDOW_US)]))  # moves the watermark
    again = [(0, 200 + i, 0, f"EQ_{i}", "temperature", ts) for i, ts in enumerate(stamps)]
    assert engine.duplicates(DOMAIN, batch(again)).to_list() == [ts >= limit for ts in stamps]


def test_restore_rejects_a_damaged_snapshot() -> None:
    engine = dedup_engine()
    engine.duplicates(DOMAIN, batch([(0, i, 0, f"EQ_{i}", "temperature", T0 + i) for i in range(50)]))
    good = engine.state.snapshot()
    header_end = good.index(b"\n", len(SNAPSHOT_MAGIC))
    for damaged in (good[:-20], good[: header_end + 1], good.replace(b'"partitions"', b'"partitionz"'),
                    good.replace(b'"rows":50', b'"rows":49'), good[:header_end - 3]):  # fmt: skip
        with pytest.raises(ValueError):
            EngineState.restore(damaged)


_CHILD = """
import sys
import polars as pl
pl.Series(["temperature", "zzz", "EQ_7", "vibration", "EQ_2"]).cast(pl.Categorical)  # other category codes
from tests.anomaly.test_dedup_state import DOMAIN, batch, dedup_engine, snapshot_rows
engine = dedup_engine()
engine.duplicates(DOMAIN, batch(snapshot_rows()))
sys.stdout.buffer.write(engine.state.snapshot())
"""


def snapshot_rows() -> list[tuple[int, int, int, str, str, int]]:
    return [(i % 2, i, i % 3, f"EQ_{i % 9}", ("vibration", "temperature")[i % 2], T0 + i * 1000) for i in range(300)]


def test_the_same_state_gives_the_same_bytes_in_another_process() -> None:
    import subprocess
    import sys
    from pathlib import Path

    engine = dedup_engine()
    engine.duplicates(DOMAIN, batch(list(reversed(snapshot_rows()))))
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", _CHILD], cwd=root, capture_output=True, check=True)
    assert child.stdout == engine.state.snapshot()
