"""Helpers of the security suite: RSS sampling, reading DLQ topics, /metrics and stored files."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from collector.topics import all_topics
from domains import DOMAINS
from trafficgen import GeneratedMessage

# DLQ reasons that decoding gives (the message is rejected, never stored).
DECODE_REASONS = frozenset({"schema_error", "invalid_enum", "unit_violation", "unit_mismatch"})


def read_all(
    client: str | dict[str, Any], topics: Iterable[tuple[str, int]], idle_s: float = 2.0, timeout_s: float = 60.0
) -> list[Message]:
    """Every record of the given (topic, partitions) pairs, read until nothing came for ``idle_s``.

    ``client`` is a bootstrap address or a whole client configuration (e.g. with TLS settings).
    """
    config = {"bootstrap.servers": client} if isinstance(client, str) else client
    consumer = Consumer(
        {**config, "group.id": "security-reader", "enable.auto.commit": False,
         "fetch.max.bytes": 64 * 1024 * 1024, "receive.message.max.bytes": 128 * 1024 * 1024}
    )  # fmt: skip
    consumer.assign([TopicPartition(t, p, 0) for t, n in topics for p in range(n)])
    out: list[Message] = []
    started = last = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s and time.monotonic() - last < idle_s:
            good = [m for m in consumer.consume(500, 0.3) if m.error() is None]
            if good:
                out.extend(good)
                last = time.monotonic()
    finally:
        consumer.close()
    return out


def dlq_topics() -> list[tuple[str, int]]:
    """(DLQ topic, partitions) of every domain."""
    return [(d.dlq_topic.name, d.dlq_topic.partitions) for d in DOMAINS.values()]


def metrics_text(port: int) -> str:
    """The raw ``/metrics`` page of a running collector."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@dataclass
class RssSampler:
    """Samples a process's resident set size from ``/proc`` every ``interval`` seconds."""

    pid: int
    interval: float = 0.1
    peak_bytes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_bytes = max(self.peak_bytes, int(line.split()[1]) * 1024)
                        self.samples += 1
            except OSError:  # the process is gone
                return
            self._stop.wait(self.interval)


def parquet_files(root: Path) -> list[Path]:
    """Every Parquet file below ``root``."""
    return sorted(p for p in root.rglob("*.parquet") if p.is_file())


def cells_as_text(path: Path) -> pl.DataFrame:
    """A Parquet file with every column cast to text (binary decoded leniently), for substring scans."""
    frame = pl.from_arrow(pq.read_table(pa.BufferReader(path.read_bytes())))
    assert isinstance(frame, pl.DataFrame)
    columns = []
    for name, dtype in frame.schema.items():
        column = frame.get_column(name)
        if dtype == pl.Binary:
            columns.append(column.map_elements(lambda b: b.decode("latin-1"), return_dtype=pl.String).alias(name))
        elif dtype.is_nested():
            columns.append(column.map_elements(str, return_dtype=pl.String).alias(name))
        else:
            columns.append(column.cast(pl.String).alias(name))
    return pl.DataFrame(columns)


def create_all_topics(config: dict[str, Any]) -> None:
    """Every domain, DLQ and alarm topic, through a client built from ``config`` (e.g. TLS settings)."""
    admin = AdminClient(config)
    new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config()) for s in all_topics()]
    for future in admin.create_topics(new, request_timeout=30).values():
        future.result(30)


def produce_generated(config: dict[str, Any], messages: Sequence[GeneratedMessage], timeout: float = 60.0) -> int:
    """Produce generated messages through a client built from ``config``; returns how many were acknowledged."""
    producer = Producer({**config, "acks": "all", "linger.ms": 5})
    acked: list[int] = []
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked.append(1)

    for m in messages:
        producer.produce(m.topic, key=m.key, value=m.value, on_delivery=on_delivery)
        producer.poll(0)
    producer.flush(timeout)
    assert not errors, errors[:3]
    return len(acked)


def secrets_in(text: str, secrets: dict[str, str]) -> list[str]:
    """Names of the ``secrets`` whose value occurs in ``text`` (also URL- or JSON-escaped)."""
    found = []
    for name, value in secrets.items():
        variants = {value, urllib.parse.quote(value, safe=""), json.dumps(value)[1:-1]}
        if any(v and v in text for v in variants):
            found.append(name)
    return found
