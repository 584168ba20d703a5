"""Side outputs: rejected/flagged messages to the domain's DLQ topic (original key and bytes, reason and
position in headers) and alarms to ``iot.alarm_log`` (JSON keyed by entity).

Every record tied to a source message holds back that message's offset until the broker
acknowledges it; a failed delivery is produced again (with backoff while the topic keeps refusing), so
nothing is committed before it is out. A producer that can no longer deliver anything (a fatal error,
e.g. fenced after a refused record) is replaced by a new one, and what it still held is produced again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from collector import metrics
from collector.offsets import OffsetTracker
from common.backoff import Backoff, ThrottledLog
from domains import ALARM_TOPIC
from domains.base import Domain
from domains.decode import Rejected

log = logging.getLogger(__name__)

# Delivery errors after which this producer instance delivers nothing more: it must be replaced.
_PRODUCER_GONE = frozenset({KafkaError._FATAL, KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                            KafkaError.INVALID_PRODUCER_EPOCH})  # fmt: skip


def _json(record: dict[str, Any]) -> bytes:
    """An alarm or sweep record as compact JSON with sorted keys (NaN as null, others as text)."""
    return orjson.dumps(record, default=str, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class DlqRecord:
    """One record bound for a DLQ topic."""

    domain: Domain
    source: Message
    reason: str
    detail: str

    def headers(self, detected_at: bytes) -> list[tuple[str, str | bytes | None]]:
        """Kafka headers describing why and where from (``detected_at``: ISO-8601, encoded)."""
        return [
            ("dlq.reason", self.reason.encode()),
            ("dlq.detail", self.detail.encode("utf-8", "replace")[:2000]),
            ("dlq.domain", self.domain.name.encode()),
            ("dlq.source.topic", (self.source.topic() or "").encode()),
            ("dlq.source.partition", str(self.source.partition()).encode()),
            ("dlq.source.offset", str(self.source.offset()).encode()),
            ("dlq.source.timestamp", str(self.source.timestamp()[1]).encode()),
            ("dlq.detected_at", detected_at),
        ]


class DlqPublisher:
    """Produces DLQ records and reports acknowledgements to the offset tracker.

    A record whose delivery fails is kept and produced again on the next :meth:`retry_failed`,
    so its source offset is never committed before the DLQ holds it.
    """

    def __init__(self, config: dict[str, Any], tracker: OffsetTracker) -> None:
        self._config = {**config, "error_cb": self._on_error}
        self._producer = Producer(self._config)
        self._tracker = tracker
        self._failed: list[tuple[DlqRecord, datetime]] = []
        self._failed_alarms: list[tuple[dict[str, object], tuple[str, int] | None, int | None]] = []
        self._backoff = Backoff(base=0.5, cap=10.0)
        self._throttled = ThrottledLog(log)
        self._replace_producer = False
        self.producers_created = 1
        self._detected: tuple[datetime | None, bytes] = (None, b"")  # the last detection time, encoded

    def _on_error(self, error: KafkaError) -> None:
        """The producer's error callback: a fatal error retires it; others are logged, throttled."""
        if error.fatal():
            self._replace_producer = True
            self._throttled.log(logging.WARNING, "fatal", "DLQ producer failed for good; replacing it",
                                {"error": error.str()})  # fmt: skip
        else:
            self._throttled.log(logging.WARNING, f"error-{error.code()}", "Kafka producer error",
                                {"error": error.str()})  # fmt: skip

    def _delivery_failed(self, err: KafkaError, what: str, topic: str) -> None:
        if err.code() in _PRODUCER_GONE or err.fatal():
            self._replace_producer = True
        metrics.DLQ_DELIVERY_FAILURES.labels(topic).inc()
        self._throttled.log(logging.WARNING, f"{what}-{topic}-{err.code()}", f"{what} delivery failed, will retry",
                            {"error": str(err), "topic": topic})  # fmt: skip

    def publish(self, domain: Domain, messages: list[Message], rejected: list[Rejected], now: datetime) -> None:
        """Send every rejected message of a decoded batch to the domain's DLQ topic."""
        for r in rejected:
            self._send(DlqRecord(domain, messages[r.index], r.reason, r.detail), now)

    def publish_one(self, domain: Domain, message: Message, reason: str, detail: str, now: datetime) -> None:
        """Send one message (rejected or flagged by the anomaly engine) to the domain's DLQ topic."""
        self._send(DlqRecord(domain, message, reason, detail), now)

    def publish_alarm(self, alarm: dict[str, object], tp: tuple[str, int] | None, offset: int | None) -> None:
        """Produce an alarm (JSON, keyed by entity) to ``iot.alarm_log``; held against its source offset."""
        value = _json(alarm)
        key = str(alarm.get("entity_id", "")).encode()
        if tp is not None and offset is not None:
            self._tracker.dlq_sent(tp, offset)

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                if tp is not None and offset is not None:
                    self._tracker.dlq_acknowledged(tp, offset)
                metrics.ALARMS.labels(str(alarm.get("domain")), str(alarm.get("rule"))).inc()
            else:
                self._delivery_failed(err, "alarm", ALARM_TOPIC.name)
                self._failed_alarms.append((alarm, tp, offset))  # still owed: its offset stays held

        self._produce(ALARM_TOPIC.name, key, value, [("alarm.id", str(alarm.get("alarm_id")).encode())], on_delivery)

    def publish_offline(self, domain: Domain, record: dict[str, object]) -> None:
        """A sweep finding (no source message): JSON description on the domain's DLQ topic."""
        value = _json(record)
        headers = [("dlq.reason", str(record.get("reason")).encode()), ("dlq.domain", domain.name.encode()),
                   ("dlq.detail", str(record.get("detail", "")).encode())]

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                metrics.DLQ_RECORDS.labels(domain.name, str(record.get("reason"))).inc()

        self._produce(domain.dlq_topic.name, str(record.get("entity_id", "")).encode(), value, headers, on_delivery)

    def _produce(self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]],
                 on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=list(headers), on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: serve callbacks, then try again
                self._producer.poll(0.1)

    def _send(self, record: DlqRecord, detected_at: datetime, stand_in: bool = False) -> None:
        """Produce one DLQ record; ``stand_in``: without the value (too large for the DLQ topic), its
        size and SHA-256 in headers instead (the DLQ Parquet row keeps the bytes)."""
        tp = (record.source.topic() or "", record.source.partition() or 0)
        offset = record.source.offset() or 0
        self._tracker.dlq_sent(tp, offset)
        value = record.source.value()
        if self._detected[0] != detected_at:  # one time for a whole batch: encode it once
            self._detected = (detected_at, detected_at.isoformat().encode())
        headers = record.headers(self._detected[1])
        if stand_in:
            headers += [("dlq.value.dropped", b"too large for the DLQ topic"),
                        ("dlq.value.size", str(len(value or b"")).encode()),
                        ("dlq.value.sha256", hashlib.sha256(value or b"").hexdigest().encode())]  # fmt: skip
            value = None

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._tracker.dlq_acknowledged(tp, offset)
                metrics.DLQ_RECORDS.labels(record.domain.name, record.reason).inc()
            elif err.code() == KafkaError.MSG_SIZE_TOO_LARGE and not stand_in:
                self._tracker.dlq_acknowledged(tp, offset)  # the stand-in re-registers it
                self._send(record, detected_at, stand_in=True)
            else:
                self._delivery_failed(err, "DLQ", record.domain.dlq_topic.name)
                self._failed.append((record, detected_at))

        while True:
            try:
                self._producer.produce(
                    record.domain.dlq_topic.name,
                    value=value,
                    key=record.source.key(),
                    headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # local queue full: serve callbacks, then try again
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if stand_in or not isinstance(error, KafkaError) or error.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                log.warning("DLQ record too large for its topic: sending it without the value",
                            extra={"topic": tp[0], "offset": offset, "bytes": len(value or b"")})  # fmt: skip
                self._tracker.dlq_acknowledged(tp, offset)
                self._send(record, detected_at, stand_in=True)
                return

    def retry_failed(self) -> None:
        """Produce again the records whose delivery failed (their offsets are still held back), once the
        backoff allows; first replace the producer if it can deliver nothing more."""
        if self._replace_producer:
            self._renew_producer()
        if not (self._failed or self._failed_alarms):
            self._backoff.succeeded()
            return
        if not self._backoff.ready():
            return
        self._backoff.failed()  # the next retry waits longer unless this round's deliveries succeed
        failed, self._failed = self._failed, []
        for record, detected_at in failed:
            tp = (record.source.topic() or "", record.source.partition() or 0)
            self._tracker.dlq_acknowledged(tp, record.source.offset() or 0)  # the new send re-registers it
            self._send(record, detected_at)
        alarms, self._failed_alarms = self._failed_alarms, []
        for alarm, source, offset in alarms:
            if source is not None and offset is not None:
                self._tracker.dlq_acknowledged(source, offset)
            self.publish_alarm(alarm, source, offset)

    def _renew_producer(self) -> None:
        """Retire the current producer (what it still holds fails back into the retry lists) and start a
        new one; on Tansu a refused record fences the idempotent producer for good."""
        old = self._producer
        old.purge(in_queue=True, in_flight=True)
        old.flush(1.0)  # serves the purged records' delivery callbacks: they land in the retry lists
        self._producer = Producer(self._config)
        self._replace_producer = False
        self.producers_created += 1
        metrics.DLQ_PRODUCERS_CREATED.inc()
        log.warning("DLQ producer replaced", extra={"records_to_resend": len(self._failed) + len(self._failed_alarms)})

    def poll(self) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait for in-flight records; returns how many are still not acknowledged."""
        self._producer.flush(timeout)
        return self._tracker.dlq_in_flight()

    def close(self, timeout: float) -> None:
        """Deliver what is in flight, within ``timeout`` seconds."""
        self._producer.flush(timeout)
