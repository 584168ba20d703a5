"""Backfill benchmark: ``python -m backfill`` over pre-produced history, next to a bare
confluent-kafka consumer reading the same topics, in one run.

Run: ``python -m bench.bench_backfill [--messages 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_collector import ROOT, _produce, bare_consume
from collector.topics import create_topics
from embedded.servers import TansuBroker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    with TansuBroker() as broker:
        create_topics(broker.bootstrap)
        rows = _produce(broker.bootstrap, args.messages, ("avro", "json", "avro-confluent"))
        bare = bare_consume(broker.bootstrap, args.messages, group=False)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KAFKA_BROKERS": broker.bootstrap, "LOCAL_STORAGE_DIR": str(data),
               "ANOMALY_ENABLED": "false", "LOG_LEVEL": "WARNING"}
        result = subprocess.run([sys.executable, "-m", "backfill", "--no-merge"], env=env, capture_output=True,
                                text=True, check=True)
    summary = json.loads(result.stdout.split("backfill summary: ", 1)[1].splitlines()[0])
    rate = summary["messages"] / summary["seconds"]
    print(f"backfill benchmark: {args.messages:,} messages ({rows:,} rows) on tansu")
    print(f"{'path':<34}{'msg/s':>10}{'vs bare':>10}")
    print(f"{'bare consumer, explicit assignment':<34}{bare:>10,.0f}{'100%':>10}")
    print(f"{'backfill → Parquet (local)':<34}{rate:>10,.0f}{rate / bare:>10.0%}")
    print(f"summary: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
