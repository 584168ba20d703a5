"""Pacing repeated failures: exponential backoff with jitter, and log lines that do not flood.

A dependency that is down (storage, the DLQ topic, the broker) makes the same call fail many times a
second; callers retry on a :class:`Backoff` and report through a :class:`ThrottledLog`, which writes the
first occurrence of each kind at once and then one line per interval saying how many were folded in.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

Monotonic = Callable[[], float]


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, base: float = 0.5, cap: float = 15.0, clock: Monotonic = time.monotonic) -> None:
        self.base, self.cap, self.failures = base, cap, 0
        self.next_attempt = 0.0
        self._clock = clock

    def failed(self) -> float:
        """Register a failure; returns the delay before the next attempt."""
        self.failures += 1
        delay = random.uniform(self.base, min(self.cap, self.base * 2**self.failures))  # noqa: S311
        self.next_attempt = self._clock() + delay
        return delay

    def succeeded(self) -> None:
        """Reset after a success."""
        self.failures, self.next_attempt = 0, 0.0

    def ready(self) -> bool:
        """Whether the next attempt may run now."""
        return self._clock() >= self.next_attempt


class Throttle:
    """Admits one occurrence per ``interval`` seconds for each key, counting the ones it folds in."""

    def __init__(self, interval: float = 30.0, clock: Monotonic = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None if ``key`` was admitted within the interval (this one is folded in); else how many were
        folded in since the last admitted one."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._folded[key] = self._folded.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._folded.pop(key, 0)


class ThrottledLog:
    """At most one line per ``interval`` seconds for each key; later lines carry ``repeated``: how many
    occurrences since the last line were not written."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0, clock: Monotonic = time.monotonic) -> None:
        self._logger = logger
        self._throttle = Throttle(interval, clock)

    def log(self, level: int, key: str, message: str, extra: dict[str, Any] | None = None) -> bool:
        """Write ``message`` unless a line for ``key`` was written within the interval; True if written."""
        repeated = self._throttle.admit(key)
        if repeated is None:
            return False
        self._logger.log(level, message, extra={**(extra or {}), **({"repeated": repeated} if repeated else {})})
        return True


class ThrottleFilter(logging.Filter):
    """A logging filter with the same rule, keyed by the record's logger, level and ``key_of(record)``
    (librdkafka's own log lines: keyed by facility and client, e.g. ``FAIL`` of ``consumer-1``)."""

    def __init__(self, key_of: Callable[[logging.LogRecord], str], interval: float = 30.0,
                 clock: Monotonic = time.monotonic) -> None:  # fmt: skip
        super().__init__()
        self._key_of = key_of
        self._throttle = Throttle(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass the first record of a key per interval (with ``repeated`` set), drop the rest."""
        repeated = self._throttle.admit(f"{record.name}|{record.levelno}|{self._key_of(record)}")
        if repeated is None:
            return False
        if repeated:
            record.repeated = repeated
        return True
