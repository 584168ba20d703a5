"""Equipment status transitions: per equipment the last status seen (by event time, per partition);
flags per stored row, transition counts in the state (surviving a snapshot/restore)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from anomaly import AnomalyEngine, EngineConfig, EngineState, flag_schema
from tests.anomaly.helpers import NOW, message, rows_of
from tests.anomaly.test_rules import EQUIPMENT_DIMS

T = datetime(2025, 5, 24, 13, 0, tzinfo=UTC)
FLAGS = ("status_transition", "status_previous_mismatch")


def report(minute: float, current: str, previous: str, equipment: str = "LINE_A_PRESS_001") -> dict[str, Any]:
    at = T + timedelta(minutes=minute)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return message("equipment_metrics", timestamp=stamp, ingestion_timestamp=stamp, equipment_id=equipment,
                   status__current=current, status__previous=previous, status__changed_at=stamp)  # fmt: skip


class Feed:
    """One engine; messages at consecutive offsets of a partition; flags per offset."""

    def __init__(self, state: EngineState | None = None) -> None:
        self.engine = AnomalyEngine(EQUIPMENT_DIMS, state or EngineState(), EngineConfig())
        self.offset = 0

    def send(self, *records: dict[str, Any], partition: int = 0) -> dict[int, tuple[bool | None, bool | None]]:
        rows = rows_of("equipment_metrics", list(records), self.offset, partition)
        self.offset += len(records)
        out = self.engine.evaluate("equipment_metrics", rows, NOW).rows
        flags = out.select("kafka_offset", *FLAGS).unique(maintain_order=True)
        assert flags["kafka_offset"].is_unique().all(), "every row of a message has its message's flags"
        return {o: (t, m) for o, t, m in flags.iter_rows()}

    def last(self, equipment: str = "LINE_A_PRESS_001", partition: int = 0) -> list[Any] | None:
        return self.engine.state.partition("iot.equipment_metrics", partition).entity_status.get(equipment)


def test_flag_columns_are_for_equipment_only_and_nullable() -> None:
    assert list(flag_schema("equipment_metrics"))[-2:] == list(FLAGS)
    for domain in ("qc_result", "energy_usage", "robot_status", "environmental_readings", "device_status"):
        assert not set(FLAGS) & set(flag_schema(domain))
    first = Feed().send(report(0, "running", "idle"))
    assert first == {0: (None, None)}  # nothing to compare with yet


def test_transition_no_transition_and_a_contradicting_previous() -> None:
    feed = Feed()
    feed.send(report(0, "running", "idle"))
    assert feed.send(report(1, "idle", "running")) == {1: (True, False)}  # running → idle, as reported
    # Still idle: its previous is the status before idle, not a contradiction.
    assert feed.send(report(2, "idle", "running")) == {2: (False, False)}
    # idle → maintenance, but it says it came from setup: idle → setup was missed.
    assert feed.send(report(3, "maintenance", "setup")) == {3: (True, True)}
    assert feed.last() == [int((T + timedelta(minutes=3)).timestamp() * 1e6), "maintenance"]
    assert feed.engine.state.status_transitions() == 2


def test_out_of_order_message_does_not_move_the_state_back() -> None:
    feed = Feed()
    feed.send(report(0, "running", "idle"), report(5, "idle", "running"))
    newest = feed.last()
    # An older report arriving later: not a transition, and it disagrees with the newer status.
    assert feed.send(report(3, "running", "idle")) == {2: (False, True)}
    assert feed.last() == newest
    # An older report that agrees with the status seen is not flagged.
    assert feed.send(report(4, "idle", "running")) == {3: (False, False)}
    assert feed.send(report(6, "idle", "running")) == {4: (False, False)}  # compared with idle, not running
    assert feed.engine.state.status_transitions() == 1


def test_a_batch_is_compared_in_event_time_order() -> None:
    one_by_one, together = Feed(), Feed()
    records = [report(2, "idle", "running"), report(0, "running", "idle"), report(3, "setup", "idle"),
               report(1, "running", "idle")]  # fmt: skip
    # Separately, in offset order: minute 0 and 1 arrive after 2 (out of order).
    separate = {}
    for record in records:
        separate |= one_by_one.send(record)
    assert separate == {0: (None, None), 1: (False, True), 2: (True, False), 3: (False, True)}
    # In one batch the messages are compared by event time: 0 → 1 → 2 → 3.
    assert together.send(*records) == {1: (None, None), 3: (False, False), 0: (True, False), 2: (True, False)}
    assert together.engine.state.status_transitions() == 2 and one_by_one.engine.state.status_transitions() == 1
    assert together.last() == one_by_one.last()


def test_state_per_equipment_and_partition() -> None:
    feed = Feed()
    feed.send(report(0, "running", "idle"), report(0, "idle", "running", equipment="LINE_B_WELD_002"))
    flags = feed.send(report(1, "idle", "running"), report(1, "idle", "running", equipment="LINE_B_WELD_002"))
    assert flags == {2: (True, False), 3: (False, False)}
    assert feed.send(report(2, "setup", "idle"), partition=1) == {4: (None, None)}  # its own partition's state
    assert feed.last(partition=1) is not None and feed.last()[1] == "idle"  # type: ignore[index]


def test_rejected_duplicates_and_replays_do_not_count() -> None:
    feed = Feed()
    feed.send(report(0, "running", "idle"), report(1, "idle", "running"))
    duplicate = report(1, "setup", "idle")  # same equipment + sensors + timestamp: rejected
    assert feed.send(duplicate) == {}
    replay = feed.engine.evaluate("equipment_metrics", rows_of("equipment_metrics", [report(1, "idle", "running")], 1),
                                  NOW).rows  # fmt: skip
    assert replay.select(*FLAGS).unique().rows() == [(False, False)]
    assert feed.last()[1] == "idle" and feed.engine.state.status_transitions() == 1  # type: ignore[index]


def test_last_status_and_counts_survive_snapshot_restore() -> None:
    feed = Feed()
    feed.send(report(0, "running", "idle"), report(1, "idle", "running"), report(2, "setup", "idle"))
    snapshot = feed.engine.state.snapshot()
    restored = Feed(EngineState.restore(snapshot))
    restored.offset = feed.offset
    assert restored.engine.state.status_transitions() == 2 and restored.last() == feed.last()
    assert restored.send(report(3, "running", "setup")) == {3: (True, False)}
    assert restored.send(report(2.5, "idle", "running")) == {4: (False, True)}  # older than the restored status
    assert restored.engine.state.status_transitions() == 3
    assert EngineState.restore(restored.engine.state.snapshot()).snapshot() == restored.engine.state.snapshot()
