"""Retry a storage call on :class:`~common.errors.TransientError` only, with capped exponential backoff.

Stores never retry by themselves; callers wrap the calls whose retry they want to control (the
collector, for instance, pauses Kafka consumption from ``on_retry``). Fatal errors and
:class:`~storage.base.ObjectNotFound` propagate at once.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    stop_never,
)
from tenacity.stop import stop_base

from common.errors import TransientError

T = TypeVar("T")

OnRetry = Callable[[int, TransientError, float], None]
"""Called before each back-off sleep with (failed attempt number, its error, seconds to sleep)."""


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int | None = None,
    deadline: float | None = None,
    initial_delay: float = 0.5,
    max_delay: float = 30.0,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it returns, retrying only :class:`TransientError`.

    Stops after ``attempts`` calls and/or before a sleep would pass ``deadline`` seconds from the
    first call (``math.inf`` for "until it works"), then re-raises the last TransientError. At
    least one limit must be given. Delays grow ``initial_delay * 2**n`` plus up to
    ``initial_delay`` of random jitter, capped at ``max_delay``.
    """
    if attempts is None and deadline is None:
        raise ValueError("with_retries needs attempts=, deadline= or both (deadline=math.inf: no limit)")
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be >= 1")
    stops: list[stop_base] = []
    if attempts is not None:
        stops.append(stop_after_attempt(attempts))
    if deadline is not None and math.isfinite(deadline):
        stops.append(stop_before_delay(deadline))

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is None or state.outcome is None or state.next_action is None:
            return
        error = state.outcome.exception()
        if isinstance(error, TransientError):
            on_retry(state.attempt_number, error, state.next_action.sleep)

    def wait(state: RetryCallState) -> float:
        # Written out rather than tenacity's wait_exponential_jitter, whose arguments changed within 9.x.
        backoff = initial_delay * 2 ** (state.attempt_number - 1) + random.uniform(0, initial_delay)
        return min(backoff, max_delay)

    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_any(*stops) if stops else stop_never,
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(fn)
