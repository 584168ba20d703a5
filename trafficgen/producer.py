"""Producing generated messages to Kafka (confluent-kafka), with optional pacing.

:func:`produce` is the one place that talks to the broker; the command line and the tests and
benchmarks all use it. Records go to their domain topic, keyed by entity id, lz4-compressed, with
``acks=all`` and a 5 ms linger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from domains import DOMAINS
from trafficgen.generator import GeneratedMessage

PRODUCER_DEFAULTS: dict[str, Any] = {
    "compression.type": "lz4",
    "linger.ms": 5,
    "acks": "all",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
}
MSG_ID_HEADER = "trafficgen-msg-id"


class TokenBucket:
    """Paces callers to ``rate`` events per second, allowing bursts of ``burst`` events."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 100)  # ~10 ms of traffic
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def acquire(self, n: float = 1.0) -> None:
        """Block until ``n`` tokens are available, then take them."""
        while True:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n - 1e-9:  # tolerance: float sums of small refills fall just short
                self._tokens -= n
                return
            self._sleep((n - self._tokens) / self.rate)


@dataclass
class Progress:
    """Running totals, handed to the progress callback about once per second."""

    sent: int = 0  # handed to the client
    delivered: int = 0  # acknowledged by the broker
    failed: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Messages handed to the client per second so far."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ProduceError(RuntimeError):
    """Some messages were not acknowledged by the broker."""


def produce(
    messages: Iterable[GeneratedMessage],
    bootstrap: str,
    *,
    rate: float | None = None,
    duration_s: float | None = None,
    config: dict[str, Any] | None = None,
    headers: bool = False,
    progress: Callable[[Progress], None] | None = None,
    flush_timeout_s: float = 60.0,
) -> int:
    """Produce ``messages`` (stopping after ``duration_s`` if given), flush, return the delivered count.

    ``rate`` paces sending with a token bucket (messages per second); ``headers`` adds each
    message's ``msg_id`` as a ``trafficgen-msg-id`` header; ``progress`` is called about once per
    second and at the end. Raises :class:`ProduceError` if the flush times out.
    """
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **(config or {})})
    state = Progress()
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            state.delivered += 1
        else:
            state.failed += 1
            if len(errors) < 10:
                errors.append(err)

    bucket = TokenBucket(rate) if rate else None
    started = time.monotonic()
    next_report = started + 1.0
    for message in messages:
        now = time.monotonic()
        if duration_s is not None and now - started >= duration_s:
            break
        if bucket is not None:
            bucket.acquire()
        kwargs: dict[str, Any] = {"key": message.key, "value": message.value, "on_delivery": delivered}
        if headers:
            kwargs["headers"] = [(MSG_ID_HEADER, message.msg_id.encode())]
        while True:
            try:
                producer.produce(message.topic, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.05)
        state.sent += 1
        producer.poll(0)
        if progress is not None and now >= next_report:
            state.elapsed_s = now - started
            progress(state)
            next_report = now + 1.0
    remaining = producer.flush(flush_timeout_s)
    state.elapsed_s = time.monotonic() - started
    if progress is not None:
        progress(state)
    if remaining:
        raise ProduceError(f"{remaining} message(s) still queued after {flush_timeout_s:.0f} s flush")
    if errors and not state.delivered:
        raise ProduceError(f"no message was delivered; first errors: {errors}")
    return state.delivered


def create_topics(
    bootstrap: str,
    domains: Sequence[str] | None = None,
    *,
    replication: int = 1,
    timeout_s: float = 30.0,
    config: dict[str, Any] | None = None,
) -> list[str]:
    """Create the source topics of ``domains`` (all by default) as SPEC §2 configures them.

    Topics that already exist are left alone; returns the names that were created. ``config`` adds
    librdkafka settings (security) to the admin client.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})
    specs = [DOMAINS[d].topic for d in (domains or DOMAINS)]
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication, config=s.config())
           for s in specs]  # fmt: skip
    created: list[str] = []
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
