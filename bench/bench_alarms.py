"""Alarm latency benchmark: live traffic for all six domains at a fixed rate through the collector
(anomaly engine on, sample dimension tables), and the time from each source message's event time
(stamped by the generator as it produces, i.e. the Kafka record time within milliseconds) to the
alarm's arrival on ``iot.alarm_log``.

Run: ``python -m bench.bench_alarms [--rate 30000] [--duration 30]`` (30,000 msg/s = 5,000 per domain).
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
from collector.topics import create_topics
from domains import ALARM_TOPIC
from embedded.servers import TansuBroker, free_port
from storage.local import LocalStore
from trafficgen import TrafficGenerator, produce

ROOT = Path(__file__).resolve().parents[1]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=30_000)
    parser.add_argument("--duration", type=float, default=30)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-alarms-"))
    upload_samples(LocalStore(data, "fms-data"))
    latencies: list[float] = []
    stop = threading.Event()
    with TansuBroker() as broker:
        create_topics(broker.bootstrap)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KAFKA_BROKERS": broker.bootstrap, "LOCAL_STORAGE_DIR": str(data),
               "HTTP_PORT": str(port), "SESSION_TIMEOUT_MS": "6000", "LOG_LEVEL": "WARNING"}
        collector = subprocess.Popen([sys.executable, "-m", "collector"], env=env)
        try:
            deadline = time.monotonic() + 60
            while not _ready(port) and time.monotonic() < deadline:
                time.sleep(0.2)

            def read_alarms() -> None:
                consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-alarms",
                                     "fetch.wait.max.ms": 50})  # the reader must not add latency itself
                consumer.assign([TopicPartition(ALARM_TOPIC.name, p, 0) for p in range(ALARM_TOPIC.partitions)])
                while not stop.is_set():
                    for record in consumer.consume(1000, 0.2):
                        if record.error() is None:
                            arrived = time.time()
                            alarm = json.loads(record.value() or b"{}")
                            if alarm.get("rule") == "offline_timeout":
                                continue  # found by the sweep, not a message: no source time to measure from
                            event = datetime.fromisoformat(str(alarm["event_time"]).replace("Z", "+00:00"))
                            latencies.append(arrived - event.timestamp())
                consumer.close()

            reader = threading.Thread(target=read_alarms, daemon=True)
            reader.start()
            started = time.monotonic()
            sent = produce(TrafficGenerator(seed=5, live=True).stream(), broker.bootstrap, rate=args.rate,
                           duration_s=args.duration)
            elapsed = time.monotonic() - started
            time.sleep(5)
            stop.set()
            reader.join(5)
        finally:
            collector.terminate()
            collector.wait(60)
    latencies.sort()
    if not latencies:
        print("no alarms received")
        return

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print(f"alarm latency: {sent:,} messages at {sent / elapsed:,.0f} msg/s over {elapsed:.0f} s "
          f"(asked {args.rate:,.0f}), {len(latencies):,} alarms")
    print(f"{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}  (seconds, event time -> alarm on iot.alarm_log)")
    print(f"{pct(0.5):>8.2f}{pct(0.9):>8.2f}{pct(0.99):>8.2f}{latencies[-1]:>8.2f}")


if __name__ == "__main__":
    main()
