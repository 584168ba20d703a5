"""Backoff and log throttling, on a hand-driven clock."""

from __future__ import annotations

import logging

import pytest

from common.backoff import Backoff, ThrottledLog, ThrottleFilter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_within_the_cap_and_resets() -> None:
    clock = FakeClock()
    backoff = Backoff(base=0.5, cap=4.0, clock=clock)
    assert backoff.ready()
    delays = [backoff.failed() for _ in range(8)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    assert not backoff.ready()
    clock.now += 4.0
    assert backoff.ready()
    backoff.failed()
    backoff.succeeded()
    assert backoff.ready() and backoff.failures == 0


def test_throttled_log_writes_one_line_per_interval_and_key_with_the_folded_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    throttled = ThrottledLog(logging.getLogger("t.throttled"), interval=30, clock=clock)
    caplog.set_level(logging.INFO, logger="t.throttled")
    for _ in range(100):  # a failing dependency, 100 times in one second
        throttled.log(logging.WARNING, "dlq", "delivery failed", {"topic": "a"})
        clock.now += 0.01
    throttled.log(logging.WARNING, "other", "another failure")
    clock.now += 30
    throttled.log(logging.WARNING, "dlq", "delivery failed", {"topic": "a"})
    lines = [(r.getMessage(), getattr(r, "repeated", 0), getattr(r, "topic", None)) for r in caplog.records]
    assert lines == [("delivery failed", 0, "a"), ("another failure", 0, None), ("delivery failed", 99, "a")]


def test_throttle_filter_keys_librdkafka_lines_by_facility_and_client(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    logger = logging.getLogger("t.kafka")
    logger.addFilter(ThrottleFilter(lambda r: "|".join(map(str, r.args[:2])) if isinstance(r.args, tuple) else "",
                                    interval=30, clock=clock))  # fmt: skip
    caplog.set_level(logging.INFO, logger="t.kafka")
    for i in range(50):  # what confluent-kafka forwards while the broker is down
        logger.error("%s [%s] %s", "FAIL", "consumer-1", f"Connect to 127.0.0.1:9092 failed ({i})")
    logger.error("%s [%s] %s", "FAIL", "producer-2", "Connect to 127.0.0.1:9092 failed")
    logger.warning("%s [%s] %s", "FAIL", "consumer-1", "a warning is its own key")
    clock.now += 31
    logger.error("%s [%s] %s", "FAIL", "consumer-1", "Connect to 127.0.0.1:9092 failed (again)")
    got = [(r.args[1], r.levelname, getattr(r, "repeated", 0)) for r in caplog.records]  # type: ignore[index]
    assert got == [("consumer-1", "ERROR", 0), ("producer-2", "ERROR", 0), ("consumer-1", "WARNING", 0),
                   ("consumer-1", "ERROR", 49)]  # fmt: skip
