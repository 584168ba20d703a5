"""Alarm latency benchmark: live traffic for all six domains at a fixed rate through the collector
(anomaly engine on, sample dimension tables), and the time from each source message's event time
(stamped by the generator as it produces, i.e. the Kafka record time within milliseconds) to the
alarm's arrival on ``iot.alarm_log``.

In the same run a bare consumer (its own group, subscribed to the six source topics) records how old
each source record is when it arrives: the broker's own share of the latency, which no collector
can beat. Rows are printed for the whole run and per 10 s window (a growing broker delay shows there).

Run: ``python -m bench.bench_alarms [--rate 30000] [--duration 30] [--broker tansu|mock]``
(30,000 msg/s = 5,000 per domain; see :mod:`bench.brokers` for the two brokers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from anomaly import upload_samples
from bench.brokers import BROKERS, bench_broker, partition_count
from domains import ALARM_TOPIC, DOMAINS
from embedded.servers import free_port
from storage.local import LocalStore
from trafficgen import TrafficGenerator, produce

ROOT = Path(__file__).resolve().parents[1]
WINDOW_S = 10.0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted, non-empty ``ordered`` (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return f"{'-':>8}" * 4
    return "".join(f"{_quantile(ordered, q):>8.2f}" for q in (0.5, 0.9, 0.99, 1.0))


def _median_p99(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return f"{'-':>15}"
    return f"{_quantile(ordered, 0.5):>6.2f} / {_quantile(ordered, 0.99):<6.2f}"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Samples:
    """Latencies (seconds) with the wall-clock time they were observed, appended from reader threads."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.values: list[float] = []

    def add(self, at: float, value: float) -> None:
        self.at.append(at)
        self.values.append(value)

    def window(self, start: float, end: float) -> list[float]:
        return [v for t, v in zip(self.at, self.values, strict=True) if start <= t < end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=30_000)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--broker", choices=BROKERS, default="tansu")
    args = parser.parse_args()
    os.environ.setdefault("RUST_BACKTRACE", "0")  # the collector's caught polars panics on corrupt Avro stay short
    data = Path(tempfile.mkdtemp(prefix="bench-alarms-"))
    upload_samples(LocalStore(data, "fms-data"))
    arrived = Samples()  # event time -> alarm arrived on iot.alarm_log
    produced = Samples()  # event time -> the collector produced the alarm (its Kafka record time)
    broker_age = Samples()  # source record time -> a bare consumer received it
    stop = threading.Event()
    with bench_broker(args.broker) as bootstrap:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KAFKA_BROKERS": bootstrap, "LOCAL_STORAGE_DIR": str(data),
               "HTTP_PORT": str(port), "SESSION_TIMEOUT_MS": "6000", "LOG_LEVEL": "WARNING"}
        collector = subprocess.Popen([sys.executable, "-m", "collector"], env=env)
        try:
            deadline = time.monotonic() + 60
            while not _ready(port) and time.monotonic() < deadline:
                time.sleep(0.2)
            alarm_partitions = partition_count(bootstrap, ALARM_TOPIC.name)

            def read_alarms() -> None:
                consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-alarms",
                                     "fetch.wait.max.ms": 50})  # the reader must not add latency itself
                consumer.assign([TopicPartition(ALARM_TOPIC.name, p, 0) for p in range(alarm_partitions)])
                while not stop.is_set():
                    for record in consumer.consume(1000, 0.2):
                        if record.error() is None:
                            now = time.time()
                            alarm = json.loads(record.value() or b"{}")
                            if alarm.get("rule") == "offline_timeout":
                                continue  # found by the sweep, not a message: no source time to measure from
                            event = datetime.fromisoformat(str(alarm["event_time"]).replace("Z", "+00:00"))
                            arrived.add(now, now - event.timestamp())
                            produced.add(now, record.timestamp()[1] / 1000 - event.timestamp())
                consumer.close()

            def read_sources() -> None:
                consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-alarms-bare",
                                     "fetch.wait.max.ms": 100, "session.timeout.ms": 6000,
                                     "auto.offset.reset": "latest"})  # the collector's fetch settings
                consumer.subscribe([d.topic.name for d in DOMAINS.values()])
                while not stop.is_set():
                    first = consumer.poll(0.2)
                    if first is None:
                        continue
                    now = time.time()
                    for record in [first, *consumer.consume(20_000, 0)]:
                        if record.error() is None:
                            broker_age.add(now, now - record.timestamp()[1] / 1000)
                consumer.close()

            readers = [threading.Thread(target=read_alarms, daemon=True),
                       threading.Thread(target=read_sources, daemon=True)]  # fmt: skip
            for reader in readers:
                reader.start()
            time.sleep(5)  # the bare consumer joins its group before traffic starts
            idle = _cpu_seconds(collector.pid)
            started_wall, started = time.time(), time.monotonic()
            sent = produce(TrafficGenerator(seed=5, live=True).stream(), bootstrap, rate=args.rate,
                           duration_s=args.duration)
            elapsed = time.monotonic() - started
            busy = _cpu_seconds(collector.pid)
            time.sleep(5)
            stop.set()
            for reader in readers:
                reader.join(5)
        finally:
            collector.terminate()
            collector.wait(60)
    if not arrived.values:
        print("no alarms received")
        return
    print(f"alarm latency on {args.broker}: {sent:,} messages at {sent / elapsed:,.0f} msg/s over {elapsed:.0f} s "
          f"(asked {args.rate:,.0f}), {len(arrived.values):,} alarms")
    print(f"collector CPU while traffic ran: {(busy - idle) / elapsed:.0%} of one core ({os.cpu_count()} cores)")
    print(f"{'':<14}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}  (seconds)")
    rows = [("alarm arrived", arrived, "event time -> alarm on iot.alarm_log"),
            ("alarm produced", produced, "event time -> the collector produced the alarm"),
            ("broker only", broker_age, "record time -> a bare consumer received the record")]  # fmt: skip
    for name, samples, meaning in rows:
        print(f"{name:<14}{_percentiles(samples.values)}  {meaning}")
    print(f"per {WINDOW_S:.0f} s window (alarm arrived | broker only), p50 / p99:")
    start = started_wall
    while start < started_wall + elapsed + 5:
        a = arrived.window(start, start + WINDOW_S)
        b = broker_age.window(start, start + WINDOW_S)
        print(f"  {start - started_wall:>4.0f} s  {_median_p99(a)} | {_median_p99(b)}")
        start += WINDOW_S


if __name__ == "__main__":
    main()
