"""The realtime collector's main loop: consume → decode → buffer → flush → commit.

Buffering (:mod:`collector.buffer`), the flush decision (:meth:`Collector.due_buckets`) and the
write (:meth:`Collector.store_bucket`) are separate units; :meth:`Collector.checkpoint` is the one
place where the commit protocol lives.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from anomaly import AnomalyEngine, Dimensions, EngineConfig, EngineState, Evaluation, flag_schema
from anomaly.records import alarm_dicts as _alarm_dicts
from collector import metrics
from collector.buffer import DLQ, Bucket, MinuteBuffer
from collector.dlq import DlqPublisher
from collector.http import HealthState, serve
from collector.offsets import EventTimeTracker, OffsetTracker, PendingAgeTracker
from collector.parquet import encode_rows, stored_positions, verify
from common.backoff import Backoff, ThrottledLog, ThrottleFilter
from common.errors import CollectorError, FatalError, TransientError
from common.layout import minute_key, position_suffix
from common.progress import PartitionProgress, progress_key
from domains import DOMAINS, domain_for_topic
from domains.base import POSITION_KEY, Domain
from domains.decode import BatchDecoder, DecodedBatch, MessageBatch, Rejected
from domains.dlq import DLQ_ROW_SCHEMA, DLQ_SORT_KEY, dlq_root, dlq_rows
from domains.registry import SchemaResolver
from settings import CollectorSettings
from storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger("collector")


def _kafka_log_key(record: logging.LogRecord) -> str:
    # confluent-kafka logs librdkafka's lines as ("%s [%s] %s", facility, client, text).
    args = record.args if isinstance(record.args, tuple) else ()
    return "|".join(str(a) for a in args[:2])


# librdkafka's own log lines (connection failures every reconnect while the broker is down, ...), in the
# same structured format as ours and at most one per facility, client and level every 30 s.
KAFKA_LOG = logging.getLogger("collector.kafka")
KAFKA_LOG.addFilter(ThrottleFilter(_kafka_log_key))

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class EncodedBucket:
    """A buffered minute's Parquet file, ready to upload."""

    rows: pl.DataFrame
    key: str
    data: bytes
    positions: list[dict[str, Any]]  # the manifest's Kafka positions
    started: float  # perf_counter when encoding began (flush latency)


def utc_now() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


class Collector:
    """One member of the realtime consumer group."""

    def __init__(self, settings: CollectorSettings, store: ObjectStore, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.writer_id = os.environ.get("HOSTNAME") or socket.gethostname()
        kafka = settings.kafka
        resolver = SchemaResolver([domain_for_topic(t) for t in kafka.kafka_topic], kafka.schema_registry_url)
        self.decoders = {
            t: BatchDecoder(domain_for_topic(t), resolver, kafka.wire_format_for(t)) for t in kafka.kafka_topic
        }
        self.workers = (
            ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="decode")
            if settings.worker_threads > 1 else None
        )  # fmt: skip
        self.buffer = MinuteBuffer()
        self.tracker = OffsetTracker()
        self.event_times = EventTimeTracker()
        self.pending_ages = PendingAgeTracker()
        self._next_lag = 0.0
        self._retention_warned = 0.0
        self._next_progress = 0.0
        self._last_poll = time.monotonic()
        self._partition_counts: dict[str, int] = {}
        # Partitions found empty at an offset while nothing was consumed from them: their progress is
        # that offset without asking the broker again (a blocking round trip per partition).
        self._empty_at: dict[tuple[str, int], int] = {}
        self._unfetched: set[tuple[str, int]] = set()  # nothing read, no position at the last progress report
        self._taken_away: set[tuple[str, int]] = set()  # revoked or lost while a batch was being taken
        self._next_partition_counts = 0.0
        self.health = HealthState(stall_seconds=max(60.0, settings.shutdown_timeout_seconds))
        self.backoff = Backoff()
        self._kafka_errors = ThrottledLog(log)
        self.paused = False
        self.stopping = threading.Event()
        self._last_commit = time.monotonic()
        self._newest: dict[str, float] = {}
        # Dimension tables first: a malformed one must stop us before any Kafka client starts.
        self.engine: AnomalyEngine | None = None
        self._dims_fingerprint = ""
        self._next_dims_check = self._next_sweep = self._next_state_save = 0.0
        self._state_saved: dict[tuple[str, int], tuple[int | None, int]] = {}  # partition -> what was saved
        self._sweeps = 0  # sweeps that changed the state
        if settings.anomaly_enabled:
            self._dims_fingerprint = Dimensions.fingerprint(store, settings.dims_prefix)
            self.engine = AnomalyEngine(Dimensions.load(store, settings.dims_prefix), EngineState(), EngineConfig())
        self.consumer = Consumer(
            {
                **kafka.client_config(),
                "group.id": kafka.kafka_group_id,
                "client.id": f"fms-collector-{self.writer_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": settings.kafka_auto_offset_reset,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": settings.session_timeout_ms,
                "max.poll.interval.ms": settings.max_poll_interval_ms,
                "fetch.wait.max.ms": 100,  # alarms within the SLA: do not let the broker hold a fetch 500 ms
                # New partitions of a subscribed topic are found by the metadata refresh (default 5 min).
                "topic.metadata.refresh.interval.ms": 30_000,
                "error_cb": self._on_kafka_error,
                "logger": KAFKA_LOG,
            }
        )
        self.dlq = DlqPublisher(
            {
                **kafka.client_config(),
                "client.id": f"fms-collector-dlq-{self.writer_id}",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "partitioner": "murmur2_random",
                "logger": KAFKA_LOG,
            },
            self.tracker,
        )
        # Knobs the backfill turns off: minute-due flushing (it flushes by size), alarms, sweeps.
        self.flush_when_due = True
        self.publish_alarms = True
        self.sweep_enabled = True
        self.report_progress = settings.write_files  # per-partition progress objects (completeness markers)
        self.group_member = True  # partitions come from the group (max.poll.interval.ms applies)

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until :meth:`stop`, then flush everything, commit and close."""
        stop_http = serve(self.settings.http_port, self.health, metrics.REGISTRY) if self.settings.http_port else None
        self.consumer.subscribe(
            list(self.settings.kafka.kafka_topic), on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "collector started",
            extra={"topics": list(self.settings.kafka.kafka_topic), "group": self.settings.kafka.kafka_group_id,
                   "storage": self.store.describe()},
        )
        try:
            while not self.stopping.is_set():
                self.step()
            self.shutdown()
        finally:
            self.consumer.close()
            self.dlq.close(5)
            if self.workers is not None:
                self.workers.shutdown()
            if stop_http:
                stop_http()

    def stop(self) -> None:
        """Ask the loop to finish (flush, commit, exit)."""
        self.stopping.set()

    def step(self) -> None:
        """One loop iteration: consume a batch, flush what is due, commit what is durable."""
        self.health.beat()
        self._last_poll = time.monotonic()
        messages = self.consume_batch()
        self._last_poll = time.monotonic()
        if messages:
            self.process(messages)
        self.dlq.poll()
        if self.buffer.nbytes > self.settings.max_buffer_bytes:
            self.flush(self.buffer.all(), reason="memory")
        elif self.flush_when_due:
            self.flush(self.due_buckets(), reason="minute")
        if time.monotonic() - self._last_commit >= self.settings.commit_interval_seconds:
            self.checkpoint()
        if self.engine is not None:
            self.maintain_engine()
        if time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + 5.0
            self.update_lag()
        if self.report_progress and time.monotonic() >= self._next_progress:
            self._next_progress = time.monotonic() + self.settings.watermark_interval_seconds
            self.write_progress({(p.topic, p.partition) for p in self.consumer.assignment()})

    def consume_batch(self) -> list[Message]:
        """Wait up to the poll timeout for a first message, then up to the batch wait for more (less
        when the batch size is reached sooner).

        A plain ``consume(n, timeout)`` waits its whole timeout whenever fewer than ``n`` messages
        come, idle traffic or not. Here the wait starts at the first message: under live traffic a
        message waits at most the batch wait, and the fixed cost of processing a batch (per domain,
        whatever its size) is shared by what arrived meanwhile, which keeps the CPU per message low.

        A rebalance served during the second call may take the first message's partition away
        (librdkafka drops only the messages it still holds); that message is then left to the new
        owner, as the buffered rows of the partition are.
        """
        first = self.consumer.poll(self.settings.poll_timeout_seconds)
        if first is None:
            return []
        if self.settings.batch_size == 1:
            return [first]
        self._taken_away.clear()
        rest = self.consumer.consume(self.settings.batch_size - 1, self.settings.batch_wait_seconds)
        if (first.topic(), first.partition()) in self._taken_away:
            return rest
        return [first, *rest]

    def shutdown(self) -> None:
        """Flush every bucket and commit; retries storage until the shutdown deadline."""
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds
        log.info("shutting down: flushing buffered rows", extra={"rows": self.buffer.rows})
        while len(self.buffer) and time.monotonic() < deadline and not self.evicted():
            if self.backoff.ready():
                self.flush(self.buffer.all(), reason="shutdown")
            else:
                time.sleep(0.2)
        self.checkpoint(final=True)
        if self.report_progress:
            self.write_progress({(p.topic, p.partition) for p in self.consumer.assignment()}, final=True)
        if len(self.buffer):
            log.error("stopped with rows not stored; they will be re-read", extra={"rows": self.buffer.rows})
        else:
            log.info("shutdown complete: everything stored and committed")

    # -- consume and decode ---------------------------------------------------------------------

    def process(self, messages: list[Message]) -> None:
        """Decode consumed messages per topic; buffer rows, send rejects to the DLQ.

        Each topic's messages are decoded and evaluated by the anomaly engine in a worker thread
        (polars and the Avro reader release the GIL, and each topic's engine state is its own), then
        their outcomes are applied here, topic after topic: DLQ records, alarms, buffered rows and the
        offsets they hold.
        """
        started = time.perf_counter()
        now = self.clock()
        by_topic: dict[str, list[Message]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
                continue
            by_topic.setdefault(message.topic(), []).append(message)  # type: ignore[arg-type]
        work = list(by_topic.items())
        pool_map = self.workers.map if len(work) > 1 and self.workers is not None else map
        results = list(pool_map(lambda item: self.decode_and_evaluate(item[0], item[1], now), work))
        for (topic, batch_messages), (batch, decoded, evaluation, details) in zip(work, results, strict=True):
            domain = self.decoders[topic].domain
            metrics.SEED.observe_rejects(domain.name, decoded.rejected)
            rows = decoded.rows
            self.dlq.publish(domain, batch_messages, decoded.rejected, now)
            self.file_rejected(domain, batch_messages, decoded.rejected, now)
            if evaluation is not None:
                rows = self.apply_evaluation(domain, evaluation, batch_messages, now, details)
            if self.settings.write_files:
                self.buffer.add(domain.name, rows)
            spans: dict[int, list[int]] = {}  # partition -> [first offset, last offset, oldest Kafka time ms]
            for partition, offset, ts in zip(batch.partitions, batch.offsets, batch.timestamps_ms, strict=True):
                span = spans.get(partition)
                if span is None:
                    spans[partition] = [offset, offset, ts]
                else:
                    span[1] = offset
                    span[2] = min(span[2], ts)
            newest = self._newest_event_us(decoded.rows)
            for partition, (first, last, oldest_ms) in spans.items():
                self.tracker.consumed((topic, partition), last)
                self.event_times.observe((topic, partition), last, newest.get(partition))
                self.pending_ages.observe((topic, partition), first, last, oldest_ms)
            metrics.MESSAGES_IN.labels(domain.name).inc(len(batch))
            metrics.ROWS_IN.labels(domain.name).inc(decoded.rows.height)
        metrics.BUFFERED_BYTES.set(self.buffer.nbytes)
        metrics.BUFFERED_ROWS.set(self.buffer.rows)
        metrics.PROCESS_SECONDS.observe(time.perf_counter() - started)

    def decode_and_evaluate(
        self, topic: str, messages: list[Message], now: datetime
    ) -> tuple[MessageBatch, DecodedBatch, Evaluation | None, pl.DataFrame | None]:
        """The side-effect-free part of processing one topic's messages (safe to run in a worker
        thread, one topic per thread): decode, then the anomaly engine (which moves only the state of
        this topic's partitions)."""
        decoder = self.decoders[topic]
        batch = MessageBatch(
            topic=topic,
            values=[m.value() for m in messages],
            partitions=[m.partition() for m in messages],  # type: ignore[misc]
            offsets=[m.offset() for m in messages],  # type: ignore[misc]
            timestamps_ms=[m.timestamp()[1] for m in messages],
        )
        decoded = decoder.decode(batch, now)
        if self.engine is None:
            return batch, decoded, None, None
        evaluation = self.engine.evaluate(decoder.domain.name, decoded.rows, now)
        details = dlq_details(decoded.rows, evaluation.dlq, batch) if evaluation.dlq.height else None
        return batch, decoded, evaluation, details

    @staticmethod
    def _newest_event_us(rows: pl.DataFrame) -> dict[int, int]:
        """Newest event time (µs) per partition of a decoded batch."""
        if rows.is_empty():
            return {}
        newest = rows.group_by("kafka_partition").agg(pl.col("timestamp").max().dt.epoch("us"))
        return {int(p): int(t) for p, t in newest.iter_rows() if t is not None}

    def file_rejected(self, domain: Domain, messages: list[Message], rejected: list[Rejected], now: datetime) -> None:
        """Buffer the decoder's rejects as DLQ rows (stored under ``<domain>/_dlq/minute/``)."""
        if rejected:
            self.file_dlq_rows(
                domain, [messages[r.index] for r in rejected], [(r.reason, r.detail, True, None, None, None)
                                                                for r in rejected], now,
            )  # fmt: skip

    def file_dlq_rows(
        self,
        domain: Domain,
        messages: list[Message],
        reasons: list[tuple[str, str, bool, str | None, str | None, int | None]],
        now: datetime,
    ) -> None:
        """Buffer DLQ rows; like fact rows they hold back their offsets until their file is stored."""
        if not messages or not self.settings.write_files:
            return
        records = [(m.topic() or "", m.partition() or 0, m.offset() or 0, m.timestamp()[1], m.key(), m.value())
                   for m in messages]  # fmt: skip
        self.buffer.add(domain.name, dlq_rows(domain.name, records, reasons, now), kind=DLQ)

    # -- anomaly engine ---------------------------------------------------------------------------

    def apply_evaluation(
        self,
        domain: Domain,
        evaluation: Evaluation,
        messages: list[Message],
        now: datetime,
        details: pl.DataFrame | None,
    ) -> pl.DataFrame:
        """Act on the anomaly engine's verdict on a decoded batch: DLQ records and alarms out now, seed
        metrics updated; returns the flagged rows to store.

        ``messages`` are the batch's Kafka messages; ``details``: :func:`dlq_details` of its DLQ
        records (None when it has none).
        """
        assert self.engine is not None
        metrics.SEED.observe(evaluation, self.engine.config, now)
        if details is not None:
            column = {c: details.get_column(c).to_list() for c in details.columns}
            flagged_messages = [messages[i] for i in column["_message"]]
            reasons = list(zip(column["reason"], column["detail"], column["rejected"], column["entity_id"],
                               column["_decoded"], column["_event"], strict=True))  # fmt: skip
            for message, (reason, detail, *_rest) in zip(flagged_messages, reasons, strict=True):
                self.dlq.publish_one(domain, message, reason, detail, now)
            for reason, n in Counter(column["reason"]).items():
                metrics.FLAGGED.labels(domain.name, reason).inc(n)
            self.file_dlq_rows(domain, flagged_messages, reasons, now)
        for alarm in evaluation.alarm_records() if self.publish_alarms else []:
            tp = (str(alarm["source_topic"]), int(alarm["source_partition"]))
            self.dlq.publish_alarm(alarm, tp, int(alarm["source_offset"]))
        flagged = evaluation.rows.filter(pl.col("anomaly").fill_null(False))
        if flagged.height:
            for (rule,), part in flagged.group_by("anomaly_rule"):
                metrics.ANOMALIES.labels(domain.name, str(rule)).inc(part.height)
        return evaluation.rows

    def maintain_engine(self) -> None:
        """Periodic engine work: offline sweep, state checkpoints, dimension reloads."""
        assert self.engine is not None
        now_mono = time.monotonic()
        if self.sweep_enabled and now_mono >= self._next_sweep:
            self._next_sweep = now_mono + self.settings.sweep_interval_seconds
            alarms, dlq = self.engine.state.sweep(self.clock(), self.engine.dims, self.engine.config)
            if alarms.height or dlq.height:
                self._sweeps += 1  # the sweep recorded its findings in the state: checkpoint it again
            metrics.SEED.observe_sweep(alarms)
            for alarm in alarms.pipe(_alarm_dicts):
                self.dlq.publish_alarm(alarm, None, None)
            for record in dlq.iter_rows(named=True):
                self.dlq.publish_offline(DOMAINS[record["domain"]], record)
        if now_mono >= self._next_dims_check:
            self._next_dims_check = now_mono + self.settings.dims_reload_seconds
            self.reload_dims()

    def reload_dims(self) -> None:
        """Reload the dimension tables when their objects changed; keep the old ones if the new are bad."""
        assert self.engine is not None
        try:
            fingerprint = Dimensions.fingerprint(self.store, self.settings.dims_prefix)
            if fingerprint == self._dims_fingerprint:
                return
            self.engine.dims = Dimensions.load(self.store, self.settings.dims_prefix)
            self._dims_fingerprint = fingerprint
            metrics.DIM_RELOADS.labels("ok").inc()
            log.info("dimension tables reloaded")
        except (CollectorError, ValueError) as exc:
            metrics.DIM_RELOADS.labels("failed").inc()
            log.error("dimension reload failed; keeping the previous tables", extra={"error": str(exc)})

    def state_key(self, tp: tuple[str, int]) -> str:
        """Where a partition's engine state is checkpointed (beside the data, per consumer group)."""
        return f"_state/{self.settings.kafka.kafka_group_id}/{tp[0]}/{tp[1]}.json"

    def save_state(self, partitions: set[tuple[str, int]]) -> None:
        """Checkpoint the engine state of ``partitions`` (after their offsets were committed)."""
        if self.engine is None:
            return
        for tp in partitions:
            # Unchanged since the last checkpoint (nothing consumed, no sweep finding): nothing to write.
            version = (self.tracker.next_offset(tp), self._sweeps)
            if self._state_saved.get(tp) == version:
                continue
            try:
                self.store.put(self.state_key(tp), self.engine.state.snapshot(only={tp}))
            except TransientError as exc:
                log.warning("engine state checkpoint failed", extra={"error": str(exc)})
                return
            self._state_saved[tp] = version

    def load_state(self, partitions: list[TopicPartition]) -> None:
        """Restore the engine state of newly assigned partitions."""
        if self.engine is None:
            return
        for p in partitions:
            try:
                restored = EngineState.restore(self.store.get(self.state_key((p.topic, p.partition))))
            except ObjectNotFound:
                continue
            except (CollectorError, ValueError) as exc:
                log.warning("engine state not restored", extra={"partition": f"{p.topic}[{p.partition}]",
                                                                 "error": str(exc)})
                continue
            self.engine.state.adopt(restored)

    # -- flush ----------------------------------------------------------------------------------

    def due_buckets(self) -> list[Bucket]:
        """Buckets whose minute (plus the grace) is over by the wall clock."""
        return self.buffer.due(self.clock(), self.settings.flush_grace_seconds)

    def flush(self, buckets: list[Bucket], reason: str) -> bool:
        """Store buckets oldest first; on a storage failure pause consumption and back off."""
        if not buckets or not self.backoff.ready():
            return not buckets
        # Files are encoded ahead in the worker threads (the Parquet encoder releases the GIL) and
        # uploaded here, one after another, oldest first. Encodings not used (a failed upload ends the
        # flush) are cancelled or, when already running, thrown away.
        ahead = (
            [self.workers.submit(self.encode_bucket, b) for b in buckets]
            if self.workers is not None and len(buckets) > 1 else []
        )  # fmt: skip
        try:
            for i, bucket in enumerate(buckets):
                if self.evicted():
                    log.warning("not storing: no poll for longer than max.poll.interval.ms, so the group may "
                                "have given these partitions to another member; polling first",
                                extra={"seconds_since_poll": round(time.monotonic() - self._last_poll, 1)})  # fmt: skip
                    return False
                try:
                    self.store_bucket(bucket, ahead[i].result() if ahead else None)
                except TransientError as exc:
                    delay = self.backoff.failed()
                    metrics.STORAGE_FAILURES.inc()
                    metrics.STORAGE_UP.set(0)
                    self.health.storage_ok = False
                    log.warning(
                        "storage write failed; pausing consumption and retrying",
                        extra={"error": str(exc), "retry_in_s": round(delay, 2), "buffered_rows": self.buffer.rows},
                    )
                    self._pause()
                    return False
        finally:
            for future in ahead:
                future.cancel()
        self.backoff.succeeded()
        metrics.STORAGE_UP.set(1)
        self.health.storage_ok = True
        self._resume()
        log.debug("flushed", extra={"reason": reason, "files": len(buckets)})
        return True

    def evicted(self) -> bool:
        """Whether this member went longer than ``max.poll.interval.ms`` without polling: the group then
        considers it gone and another member may own its partitions (a zombie must not write)."""
        limit = self.settings.max_poll_interval_ms / 1000
        return self.group_member and time.monotonic() - self._last_poll > limit

    def encode_bucket(self, bucket: Bucket) -> EncodedBucket:
        """A bucket's Parquet file, verified, and its position-derived name (no I/O: safe to run in a
        worker thread while the bucket is not changed)."""
        started = time.perf_counter()
        rows = bucket.table()
        positions = (
            rows.group_by("kafka_topic", "kafka_partition")
            .agg(pl.col("kafka_offset").min().alias("first"), pl.col("kafka_offset").max().alias("last"))
            .sort("kafka_topic", "kafka_partition")
        )
        position_rows = positions.to_dicts()
        manifest = {
            "domain": bucket.domain,
            "minute": bucket.minute.isoformat(),
            "writer": self.writer_id,
            "positions": position_rows,
        }
        domain = DOMAINS[bucket.domain]
        last_offsets = {(t, p): last for t, p, _first, last in positions.iter_rows()}
        suffix = position_suffix(bucket.first_offsets, last_offsets)
        if bucket.kind == DLQ:
            data = encode_rows(rows, DLQ_SORT_KEY, DLQ_ROW_SCHEMA, {**manifest, "kind": DLQ})
            key = minute_key(dlq_root(bucket.domain), bucket.minute, suffix)
        else:
            data = encode_rows(rows, domain.sort_key, self.output_schema(domain), manifest)
            key = minute_key(bucket.domain, bucket.minute, suffix)
        verify(data, rows.height)
        return EncodedBucket(rows, key, data, position_rows, started)

    def store_bucket(self, bucket: Bucket, encoded: EncodedBucket | None = None) -> str:
        """Upload one bucket (encoded by :meth:`encode_bucket` unless ``encoded``) under its
        position-derived name and release it from the buffer; returns the key."""
        encoded = encoded or self.encode_bucket(bucket)
        rows, key, data = encoded.rows, encoded.key, encoded.data
        # A conditional create, never a replace: an existing object under this name holds the same
        # positions, stored by an earlier run (before a crash) or by a member that owned these partitions
        # meanwhile; and a member that lost its partitions while an upload was in flight (a zombie) cannot
        # rewrite the new owner's file when that upload finally lands.
        created = self.store.put_new(key, data)
        if not created:
            self._check_same_positions(key, encoded.positions)
            metrics.FILES_ALREADY_STORED.labels(bucket.domain).inc()
        self.buffer.remove(bucket)
        if bucket.kind == DLQ:
            metrics.DLQ_ROWS_OUT.labels(bucket.domain).inc(rows.height)
        else:
            self._stored_facts(bucket.domain, rows, len(data), time.perf_counter() - encoded.started)
        metrics.BUFFERED_BYTES.set(self.buffer.nbytes)
        metrics.BUFFERED_ROWS.set(self.buffer.rows)
        log.info("stored" if created else "already stored (kept)", extra={"key": key, "rows": rows.height,
                                                                           "bytes": len(data)})  # fmt: skip
        return key

    def _check_same_positions(self, key: str, positions: object) -> None:
        """An existing object under a minute file's name must hold the same Kafka positions (the name hashes
        them); anything else would be a name collision, and keeping it would lose rows: stop instead."""
        stored = stored_positions(self.store.get(key))
        if stored != positions:
            raise FatalError(f"minute file {key} already exists with other Kafka positions ({stored} instead of "
                             f"{positions}); not replacing it. Move it aside and restart.")

    def _stored_facts(self, domain: str, rows: pl.DataFrame, nbytes: int, seconds: float) -> None:
        newest = rows["timestamp"].max()
        if isinstance(newest, datetime) and newest.timestamp() > self._newest.get(domain, 0.0):
            if domain not in self._newest:
                metrics.FRESHNESS.labels(domain).set_function(lambda: time.time() - self._newest[domain])
            self._newest[domain] = newest.timestamp()
            metrics.NEWEST_STORED.labels(domain).set(newest.timestamp())
        metrics.FILES_WRITTEN.labels(domain).inc()
        metrics.BYTES_WRITTEN.labels(domain).inc(nbytes)
        metrics.ROWS_OUT.labels(domain).inc(rows.height)
        metrics.FLUSH_SECONDS.labels(domain).observe(seconds)

    def output_schema(self, domain: Domain) -> dict[str, pl.DataType]:
        """Columns of a stored row: the domain's fields and provenance, plus the engine's flags."""
        if self.engine is None:
            return dict(domain.flat_schema)
        return {**domain.flat_schema, **flag_schema(domain.name)}

    # -- commit ---------------------------------------------------------------------------------

    def checkpoint(self, final: bool = False, asynchronous: bool = False) -> None:
        """Commit the offsets that are durable. The commit protocol, step by step:

        1. buffer: consumed rows sit in minute buckets; rejected messages are in flight to the DLQ;
        2. write: due buckets are encoded as Parquet (:meth:`store_bucket`);
        3. verify: the encoded bytes are read back as Parquet and their row count checked;
        4. publish: the object is uploaded atomically under its position-derived final name;
        5. commit: here, after DLQ deliveries are acknowledged (failed ones are re-sent), each
           partition is committed up to the lowest of (next offset, first offset still buffered,
           first DLQ record not acknowledged) -- never past data that is not durable.
        """
        self.dlq.retry_failed()
        self.dlq.flush(10.0 if final else 0.5)
        offsets = self.tracker.committable(self.buffer.held_offsets())
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            if asynchronous:
                self.consumer.commit(offsets=positions, asynchronous=True)
            else:
                self.consumer.commit(offsets=positions, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                return
            log.warning("offset commit failed; will retry", extra={"error": str(exc)})
            return
        self.tracker.committed(offsets)
        metrics.COMMITS.inc()
        if self.engine is not None and (final or time.monotonic() >= self._next_state_save):
            self._next_state_save = time.monotonic() + self.settings.state_checkpoint_seconds
            self.save_state(self.tracker.partitions())

    def write_progress(self, partitions: set[tuple[str, int]], final: bool = False) -> None:
        """Store each partition's progress (``_progress/<group>/<topic>/<p>.json``) for completeness markers.

        A partition with nothing read and no fetch position yet is usually about to be fetched: the
        broker is asked for its offsets (a blocking round trip each) only when it is still so at the
        next interval, or at the ``final`` report, and one found empty is not asked again.
        """
        now = self.clock()
        counts = self._partition_counts_of({t for t, _ in partitions})
        for topic, partition in sorted(partitions):
            tp = TopicPartition(topic, partition)
            committed = self.tracker.committed_offset((topic, partition))
            try:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
                if committed is None and not self.tracker.consumed_any((topic, partition)):
                    committed = self.consumer.position([tp])[0].offset  # nothing read yet: where we start
                    if committed < 0 and (topic, partition) in self._empty_at:
                        committed = self._empty_at[(topic, partition)]
                    elif committed < 0 and not final and (topic, partition) not in self._unfetched:
                        self._unfetched.add((topic, partition))  # look again next interval
                    elif committed < 0:  # no fetch position yet (e.g. an empty partition): ask the broker
                        low, high = self.consumer.get_watermark_offsets(tp, timeout=5)
                        committed = high if low == high else None
                        if committed is not None:  # still true until something is consumed from it
                            self._empty_at[(topic, partition)] = committed
            except KafkaException:
                high = -1
            if committed is None or committed < 0:
                continue
            newest = self.event_times.durable((topic, partition), committed)
            progress = PartitionProgress(
                domain=domain_for_topic(topic).name,
                topic=topic,
                partition=partition,
                partitions=counts[topic],
                committed=committed,
                event_time=datetime.fromtimestamp(newest / 1e6, UTC) if newest is not None else None,
                caught_up=high >= 0 and committed >= high,
                checked_at=now,
                writer=self.writer_id,
            )
            try:
                self.store.put(progress_key(self.settings.kafka.kafka_group_id, topic, partition), progress.to_json())
            except CollectorError as exc:
                log.warning("progress not stored; retried next interval", extra={"error": str(exc)})
                return

    def _partition_counts_of(self, topics: set[str]) -> dict[str, int]:
        """Partitions per topic from the broker's metadata: one request for all topics, at most once a
        minute (a blocking round trip in the main loop), the last known counts in between or when the
        broker cannot answer."""
        if topics - self._partition_counts.keys() or time.monotonic() >= self._next_partition_counts:
            self._next_partition_counts = time.monotonic() + 60.0
            try:
                metadata = self.consumer.list_topics(timeout=5)
                for topic in self.settings.kafka.kafka_topic:
                    count = len(metadata.topics[topic].partitions) if topic in metadata.topics else 0
                    if count:
                        self._partition_counts[topic] = count
            except KafkaException:
                pass
        return {topic: self._partition_counts.get(topic, 0) for topic in topics}

    # -- rebalance ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.health.assigned = True
        log.info("partitions assigned", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]})
        self.load_state(partitions)
        self.record_start_boundary(consumer, partitions)
        if self.paused and partitions:
            consumer.pause(partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(consumer.assignment()) + len(partitions))

    def record_start_boundary(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Where the group first starts reading a partition, for the backfill's end (SPEC §4).

        Only for partitions the group never committed: with ``latest`` that is the high watermark,
        committed right away so every later member starts there too; the offset is also kept in
        storage (``_backfill/boundary/<group>/<topic>/<partition>``) so a backfill loads exactly the
        offsets before it, never one the collector stores itself.
        """
        if not partitions:
            return
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            log.warning("could not read committed offsets", extra={"error": str(exc)})
            return
        fresh = [tp for tp in committed if tp.offset < 0]
        if not fresh:
            return
        starts: list[TopicPartition] = []
        for tp in fresh:
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            start = high if self.settings.kafka_auto_offset_reset == "latest" else low
            starts.append(TopicPartition(tp.topic, tp.partition, start))
            key = f"_backfill/boundary/{self.settings.kafka.kafka_group_id}/{tp.topic}/{tp.partition}"
            try:
                if not self.store.exists(key):
                    self.store.put(key, str(start).encode())
            except CollectorError as exc:
                log.warning("could not record the start boundary", extra={"error": str(exc)})
        if self.settings.kafka_auto_offset_reset == "latest":
            consumer.commit(offsets=starts, asynchronous=False)
            for tp in starts:
                self.tracker.committed({(tp.topic, tp.partition): tp.offset})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before letting partitions go: store what is buffered and commit it."""
        revoked = {(p.topic, p.partition) for p in partitions}
        self._taken_away |= revoked
        log.info("partitions revoked", extra={"partitions": sorted(f"{t}[{p}]" for t, p in revoked)})
        # While stopping, shutdown() has already stored, committed and reported everything; this runs
        # inside consumer.close(), where further consumer calls can abort the process (librdkafka
        # callbacks nested in a callback), so only the local state is released.
        # The commit is sent without waiting: a blocking consumer call inside this callback lets
        # librdkafka serve other callbacks nested in it, which aborts the process. A commit that does
        # not land before the partitions move only makes the new owner re-read (never lose) rows.
        if not self.stopping.is_set():
            deadline = time.monotonic() + min(30.0, self.settings.max_poll_interval_ms / 2000)
            while len(self.buffer) and time.monotonic() < deadline:
                if not self.flush(self.buffer.all(), reason="rebalance"):
                    time.sleep(min(1.0, max(0.0, self.backoff.next_attempt - time.monotonic())))
            self.checkpoint(final=True, asynchronous=True)
        self._forget_fetch_state(revoked)
        dropped = self.buffer.drop_partitions(revoked)
        if dropped:
            log.warning("rows of revoked partitions not stored; the new owner re-reads them", extra={"rows": dropped})
        self.save_state(revoked)
        if self.engine is not None:
            for topic, partition in revoked:
                self.engine.state.drop(topic, partition)
                self._state_saved.pop((topic, partition), None)
        self.tracker.forget(revoked)
        self.event_times.forget(revoked)
        self.pending_ages.forget(revoked)
        if not self.stopping.is_set():
            metrics.ASSIGNED_PARTITIONS.set(max(0, len(consumer.assignment()) - len(partitions)))

    def _forget_fetch_state(self, partitions: set[tuple[str, int]]) -> None:
        """Forget what progress reports learnt about partitions this member no longer holds."""
        for tp in partitions:
            self._empty_at.pop(tp, None)
            self._unfetched.discard(tp)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a clean revoke: another member may own them, do not commit."""
        lost = {(p.topic, p.partition) for p in partitions}
        self._taken_away |= lost
        self._forget_fetch_state(lost)
        dropped = self.buffer.drop_partitions(lost)
        self.tracker.forget(lost)
        self.event_times.forget(lost)
        self.pending_ages.forget(lost)
        if self.engine is not None:
            for topic, partition in lost:
                self.engine.state.drop(topic, partition)
                self._state_saved.pop((topic, partition), None)
        log.warning("partitions lost; dropped their buffered rows", extra={"rows": dropped})

    def _pause(self) -> None:
        if not self.paused:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.pause(assignment)
            self.paused = True

    def _resume(self) -> None:
        if self.paused:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.resume(assignment)
            self.paused = False

    # -- callbacks ------------------------------------------------------------------------------

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalError(f"Kafka consumer failed: {error.str()}")
        log.warning("consume error", extra={"error": error.str()})

    def _on_kafka_error(self, error: KafkaError) -> None:
        """The consumer's error callback: fatal stops the collector; others (the broker unreachable, ...)
        are retried by librdkafka and logged at most every 30 s per error code."""
        if error.fatal():
            log.error("fatal Kafka error", extra={"error": error.str()})
            self.stop()
        else:
            self._kafka_errors.log(logging.WARNING, str(error.code()), "Kafka client error", {"error": error.str()})

    def update_lag(self) -> None:
        """Consumer lag per topic (messages), and how much of each topic's retention the oldest message
        not yet durable has used up: at 1.0 the broker deletes data this group has not stored."""
        assignment = self.consumer.assignment()
        if not assignment:
            return
        try:
            positions = self.consumer.position(assignment)
        except KafkaException:
            return
        now_ms = time.time() * 1000
        lags: dict[str, int] = {}
        used: dict[str, float] = {}
        lag_max = 0
        for tp in positions:
            key = (tp.topic, tp.partition)
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
            lag = max(0, high - tp.offset) if high >= 0 and tp.offset >= 0 else 0
            lags[tp.topic] = lags.get(tp.topic, 0) + lag
            lag_max = max(lag_max, lag)
            oldest = self.pending_ages.oldest(key, self.tracker.committed_offset(key), behind=lag > 0)
            retention_ms = domain_for_topic(tp.topic).topic.retention_days * 86_400_000
            ratio = max(0.0, now_ms - oldest) / retention_ms if oldest is not None else 0.0
            used[tp.topic] = max(used.get(tp.topic, 0.0), ratio)
        for topic, lag in lags.items():
            metrics.CONSUMER_LAG.labels(topic).set(lag)
            metrics.RETENTION_USED.labels(topic).set(used.get(topic, 0.0))
        metrics.KAFKA_LAG_MAX.set(lag_max)
        worst = max(used.items(), key=lambda kv: kv[1], default=("", 0.0))
        if worst[1] >= 0.5 and time.monotonic() - self._retention_warned > 60:
            self._retention_warned = time.monotonic()
            log.error("data not yet stored is close to the topic's retention: it will be deleted by the broker",
                      extra={"topic": worst[0], "retention_used": round(worst[1], 3)})  # fmt: skip


def dlq_details(rows: pl.DataFrame, dlq: pl.DataFrame, batch: MessageBatch) -> pl.DataFrame:
    """The engine's DLQ records (:data:`anomaly.records.DLQ_SCHEMA`) of a batch, in their order, with
    each message's index in ``batch`` (``_message``), its decoded first row as JSON (``_decoded``) and
    its event time in epoch µs (``_event``)."""
    position = ["kafka_topic", "kafka_partition", "kafka_offset"]
    decoded = (
        rows.join(dlq.select(position), on=position, how="semi")
        .sort(list(POSITION_KEY))
        .unique(position, keep="first", maintain_order=True)
        .select(*position, pl.col("timestamp").dt.epoch("us").alias("_event"),
                pl.struct(pl.all()).struct.json_encode().alias("_decoded"))
    )  # fmt: skip
    index = pl.DataFrame(
        {"kafka_partition": batch.partitions, "kafka_offset": batch.offsets},
        schema={"kafka_partition": pl.Int32, "kafka_offset": pl.Int64},
    ).with_row_index("_message")
    return dlq.join(decoded, on=position, how="left", maintain_order="left").join(
        index, on=["kafka_partition", "kafka_offset"], how="left", maintain_order="left"
    )


def install_signal_handlers(collector: Collector) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second one, or the deadline passing: exit at once."""

    def handle(signum: int, _frame: object) -> None:
        if collector.stopping.is_set():
            log.error("second signal: exiting without flushing")
            os._exit(2)
        log.info("signal received: stopping", extra={"signal": signal.Signals(signum).name})
        collector.stop()
        deadline = collector.settings.shutdown_timeout_seconds + 10
        timer = threading.Timer(deadline, lambda: os._exit(3))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

