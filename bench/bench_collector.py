"""End-to-end benchmark: broker → collector → Parquet, next to a bare consumer on the same topics.

In one run, on the same pre-produced messages (all six domains, Avro/JSON mixed, event times in
the past so every minute is due at once):

- ``bare consume``: one confluent-kafka consumer assigned to every partition, reading all messages
  and touching each value (the broker ceiling for one consumer);
- ``collector``: ``python -m collector`` as a subprocess, from its first consumed message until
  every row is stored in minute files (the newest file's mtime); its peak RSS (VmHWM) is printed.

Run: ``python -m bench.bench_collector [--messages 100000] [--broker tansu|mock]``.
See :mod:`bench.brokers` for the two brokers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.brokers import BROKERS, bench_broker, partition_count
from collector.http import scrape_totals
from domains import DOMAINS
from embedded.servers import free_port
from trafficgen import TrafficGenerator

ROOT = Path(__file__).resolve().parents[1]


def _produce(bootstrap: str, n: int, formats: tuple[str, ...]) -> int:
    # A factory at 5,000 msg/s: event time advances 200 us per message, ending two minutes ago.
    step = timedelta(microseconds=200)
    messages = TrafficGenerator(
        seed=3, formats=formats, step=step,
        start=datetime.now(UTC) - timedelta(minutes=2) - n * step,
    ).generate(n)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
    for m in messages:
        while True:
            try:
                producer.produce(m.topic, key=m.key, value=m.value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    return sum(m.expected_rows for m in messages)


def bare_consume(bootstrap: str, n: int, group: bool) -> float:
    """Messages/s of one consumer reading everything (values touched, nothing else).

    ``group``: subscribe as a consumer-group member like the collector; else explicit assignment.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-bare-{group}", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "auto.offset.reset": "earliest",
                         "partition.assignment.strategy": "cooperative-sticky"})
    if group:
        consumer.subscribe([d.topic.name for d in DOMAINS.values()])
    else:
        consumer.assign([
            TopicPartition(d.topic.name, p, 0) for d in DOMAINS.values()
            for p in range(partition_count(bootstrap, d.topic.name))
        ])  # fmt: skip
    got, started, total_bytes = 0, None, 0
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        for message in consumer.consume(5000, 1.0):
            if message.error() is None:
                started = started or time.perf_counter()
                total_bytes += len(message.value() or b"")
                got += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return got / elapsed if elapsed > 0 else 0.0


def run_collector(bootstrap: str, n: int, data_dir: Path, engine: bool) -> tuple[float, int]:
    """Messages/s through the collector (anomaly engine on or off) and its peak RSS in bytes.

    Timed from its first consumed message (its metrics, scraped every 50 ms until then) to the
    newest Parquet file it stored (the file's mtime). Once messages flow, the metrics are scraped only
    twice a second to see when it is done: each scrape renders every metric series in the collector's
    process, which at 20 scrapes a second took ~10 % of its time (more with the engine's series).
    """
    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "KAFKA_BROKERS": bootstrap, "STORAGE_BACKEND": "local",
        "LOCAL_STORAGE_DIR": str(data_dir), "HTTP_PORT": str(port), "SESSION_TIMEOUT_MS": "6000",
        "FLUSH_GRACE_SECONDS": "0", "LOG_LEVEL": "WARNING", "KAFKA_GROUP_ID": f"bench-collector-{engine}",
        "ANOMALY_ENABLED": str(engine).lower(),
    }
    proc = subprocess.Popen([sys.executable, "-m", "collector"], env=env)
    started = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            m = scrape_totals(port)
            if started is None and m.get("fms_messages_consumed_total", 0) > 0:
                started = time.time()
            done = m.get("fms_messages_consumed_total", 0) >= n and m.get("fms_files_written_total", 0) > 0
            if done and m.get("fms_buffered_rows", 1) == 0:
                break
            time.sleep(0.05 if started is None else 0.5)
        stored = [path.stat().st_mtime for path in data_dir.rglob("*.parquet")]
        elapsed = max((t for t in stored if started and t >= started), default=0.0) - (started or 0.0)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(60)
    return (n / elapsed if elapsed > 0 else 0.0), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--broker", choices=BROKERS, default="tansu")
    parser.add_argument("--formats", default="avro,json,avro-confluent", help="wire formats, mixed per message")
    args = parser.parse_args()
    os.environ.setdefault("RUST_BACKTRACE", "0")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    try:
        with bench_broker(args.broker) as bootstrap:
            rows = _produce(bootstrap, args.messages, tuple(args.formats.split(",")))
            bare_assigned = bare_consume(bootstrap, args.messages, group=False)
            bare = bare_consume(bootstrap, args.messages, group=True)
            from anomaly import upload_samples
            from storage.local import LocalStore

            upload_samples(LocalStore(data_dir, "fms-data"))
            through, peak = run_collector(bootstrap, args.messages, data_dir, engine=False)
            through_engine, peak_engine = run_collector(bootstrap, args.messages, data_dir, engine=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"end-to-end benchmark: {args.messages:,} messages ({rows:,} rows, {args.formats}) on {args.broker}")
    print(f"{'path':<34}{'msg/s':>10}{'vs bare':>10}")
    print(f"{'bare consumer, explicit assignment':<34}{bare_assigned:>10,.0f}{bare_assigned / bare:>10.0%}")
    print(f"{'bare consumer, group member':<34}{bare:>10,.0f}{'100%':>10}")
    print(f"{'collector → Parquet, engine off':<34}{through:>10,.0f}{through / bare:>10.0%}")
    print(f"{'collector → Parquet, engine on':<34}{through_engine:>10,.0f}{through_engine / bare:>10.0%}")
    print(f"engine on / off: {through_engine / through:.0%}; peak RSS {peak / 2**20:.0f} MiB (off), "
          f"{peak_engine / 2**20:.0f} MiB (on)")


if __name__ == "__main__":
    main()
