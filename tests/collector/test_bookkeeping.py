"""The collector's bookkeeping units: which buckets are due, event-time watermarks, pending ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from collector.buffer import MinuteBuffer
from collector.offsets import EventTimeTracker, PendingAgeTracker
from domains.base import UTC_MICROS

NOW = datetime(2026, 11, 22, 12, 0, 30, tzinfo=UTC)
TP = ("iot.robot_status", 0)


def rows(*stamps: datetime, first_offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {"timestamp": list(stamps), "kafka_topic": [TP[0]] * len(stamps), "kafka_partition": [0] * len(stamps),
         "kafka_offset": list(range(first_offset, first_offset + len(stamps)))},
        schema={"timestamp": UTC_MICROS, "kafka_topic": pl.String, "kafka_partition": pl.Int32,
                "kafka_offset": pl.Int64},
    )  # fmt: skip


def test_past_minutes_are_due_after_the_grace_and_far_future_ones_at_once() -> None:
    buffer = MinuteBuffer()
    buffer.add("robot_status", rows(NOW - timedelta(minutes=2), NOW, NOW + timedelta(minutes=1),
                                    NOW + timedelta(days=1)))  # fmt: skip
    due = [b.minute for b in buffer.due(NOW, grace_seconds=5)]
    assert due == [datetime(2026, 11, 22, 11, 58, tzinfo=UTC), datetime(2026, 11, 23, 12, 0, tzinfo=UTC)]
    # The current and the next minute wait; the day-ahead one no longer holds offset 3 back.
    assert buffer.held_offsets() == {TP: 0}


def test_watermark_is_the_newest_event_time_below_the_committed_offset() -> None:
    tracker = EventTimeTracker()
    tracker.observe(TP, last_offset=9, newest_us=100)
    tracker.observe(TP, last_offset=19, newest_us=50)  # older events later: the running max stays
    tracker.observe(TP, last_offset=29, newest_us=300)
    assert tracker.durable(TP, committed=5) is None
    assert tracker.durable(TP, committed=20) == 100
    assert tracker.durable(TP, committed=30) == 300


def test_pending_age_is_the_oldest_uncommitted_message() -> None:
    ages = PendingAgeTracker()
    ages.observe(TP, 0, 9, oldest_ms=1_000)
    ages.observe(TP, 10, 19, oldest_ms=5_000)
    assert ages.oldest(TP, committed=None, behind=False) == 1_000
    assert ages.oldest(TP, committed=10, behind=False) == 5_000
    assert ages.oldest(TP, committed=20, behind=False) is None
    assert ages.oldest(TP, committed=20, behind=True) == 5_000  # unread messages are younger than this
