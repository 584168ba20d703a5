"""``python -m collector replay``: re-send chosen DLQ records to their source topic after a fix.

    python -m collector replay --domain qc_result --reason threshold_missing \\
        --since 2026-11-21T00:00:00Z --until 2026-11-22T00:00:00Z [--include-flagged] [--dry-run]

Records are read from the DLQ Parquet files (``<domain>/_dlq/``, minute and merged files, each
Kafka position once) and produced with their original key and bytes to the topic they came from,
with headers naming the DLQ position they replay. By default only *rejected* records (not stored
as facts) are sent; ``--include-flagged`` adds flagged ones. Every replayed position is kept in a
ledger (``_replay/<domain>/<run>.json``) and skipped by later runs unless ``--force``, so running
the same replay twice does not produce the messages twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import KafkaError, Message, Producer

from common.errors import CollectorError, ConfigError
from domains import DOMAINS
from domains.dlq import dlq_root
from settings import kafka_settings
from storage.base import ObjectNotFound, ObjectStore
from storage.factory import StorageConfig, open_store

Position = tuple[str, int, int]


@dataclass(frozen=True)
class ReplayRequest:
    """Which DLQ records to replay."""

    domain: str
    reasons: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    include_flagged: bool = False
    force: bool = False


def ledger_prefix(domain: str) -> str:
    """Where replay ledgers of a domain live."""
    return f"_replay/{domain}/"


def replayed_positions(store: ObjectStore, domain: str) -> set[Position]:
    """Positions sent by earlier replays."""
    done: set[Position] = set()
    for info in store.list(ledger_prefix(domain)):
        try:
            body = json.loads(store.get(info.key))
        except (ObjectNotFound, ValueError):
            continue
        done.update((str(t), int(p), int(o)) for t, p, o in body.get("positions", []))
    return done


def select_records(store: ObjectStore, request: ReplayRequest, scratch: Path) -> list[dict[str, Any]]:
    """DLQ records matching ``request`` (each Kafka position once), oldest first."""
    keys = [o.key for o in store.list(f"{dlq_root(request.domain)}/")
            if o.key.endswith(".parquet") and "/_manifests/" not in o.key]  # fmt: skip
    if not keys:
        return []
    paths = []
    for i, key in enumerate(keys):
        path = scratch / f"dlq-{i:05d}.parquet"
        store.get_file(key, str(path))
        paths.append(str(path))
    where = ["raw IS NOT NULL"]  # personal data is never stored, so never replayed
    params: list[object] = []
    if request.reasons:
        where.append(f"reason IN ({', '.join('?' for _ in request.reasons)})")
        params += list(request.reasons)
    if request.since:
        where.append("timestamp >= ?")
        params.append(request.since)
    if request.until:
        where.append("timestamp < ?")
        params.append(request.until)
    if not request.include_flagged:
        where.append("rejected")
    sql = f"""
        SELECT kafka_topic, kafka_partition, kafka_offset, reason, kafka_key, raw, timestamp
        FROM read_parquet(?, union_by_name = true)
        WHERE {' AND '.join(where)}
        QUALIFY row_number() OVER (PARTITION BY kafka_topic, kafka_partition, kafka_offset ORDER BY detected_at) = 1
        ORDER BY kafka_topic, kafka_partition, kafka_offset
    """
    con = duckdb.connect()
    try:
        cursor = con.execute(sql, [paths, *params])
        columns = [d[0] for d in cursor.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def _position(record: dict[str, Any]) -> Position:
    return str(record["kafka_topic"]), int(record["kafka_partition"]), int(record["kafka_offset"])


def replay(store: ObjectStore, producer: Producer, request: ReplayRequest, dry_run: bool = False) -> list[Position]:
    """Send the selected records to their source topics; returns the positions delivered (and recorded)."""
    done = set() if request.force else replayed_positions(store, request.domain)
    with tempfile.TemporaryDirectory(prefix="fms-replay-") as tmp:
        records = [r for r in select_records(store, request, Path(tmp)) if _position(r) not in done]
    if dry_run or not records:
        return [_position(r) for r in records]
    delivered: list[Position] = []
    failures: list[str] = []

    def report(position: Position) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                delivered.append(position)
            else:
                failures.append(f"{position}: {err}")

        return on_delivery

    for r in records:
        position = _position(r)
        headers: list[tuple[str, str | bytes | None]] = [
            ("fms.replay.of", f"{position[0]}:{position[1]}:{position[2]}".encode()),
            ("fms.replay.reason", str(r["reason"]).encode()),
        ]
        while True:
            try:
                producer.produce(position[0], value=r["raw"], key=r["kafka_key"], headers=headers,
                                 on_delivery=report(position))  # fmt: skip
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    if delivered:
        ledger = {"positions": sorted(delivered), "request": {"reasons": list(request.reasons),
                  "since": str(request.since), "until": str(request.until)}, "at": datetime.now(UTC).isoformat()}
        run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        store.put(f"{ledger_prefix(request.domain)}{run_id}.json", json.dumps(ledger).encode())
    if failures:
        raise CollectorError(f"{len(failures)} records not delivered (first: {failures[0]}); re-run to retry them")
    return sorted(delivered)


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str]) -> int:
    """Entry point of ``python -m collector replay``."""
    parser = argparse.ArgumentParser(prog="python -m collector replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    parser.add_argument("--reason", action="append", default=[], help="DLQ reason to replay (repeatable; default all)")
    parser.add_argument("--since", type=_instant, help="records whose time is at or after this ISO instant")
    parser.add_argument("--until", type=_instant, help="records whose time is before this ISO instant")
    parser.add_argument("--include-flagged", action="store_true", help="also records that were stored as facts")
    parser.add_argument("--force", action="store_true", help="send again records an earlier replay sent")
    parser.add_argument("--dry-run", action="store_true", help="print how many records would be sent")
    args = parser.parse_args(argv)
    try:
        kafka = kafka_settings(os.environ, default_group="fms-replay")
        store = open_store(StorageConfig.from_env(os.environ))
    except ConfigError as exc:
        print(f"replay: configuration error: {exc}", file=sys.stderr)
        return 2
    request = ReplayRequest(args.domain, tuple(args.reason), args.since, args.until, args.include_flagged, args.force)
    producer = Producer({**kafka.client_config(), "acks": "all", "enable.idempotence": True})
    try:
        sent = replay(store, producer, request, dry_run=args.dry_run)
    except CollectorError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    print(f"replay {args.domain}: {len(sent)} records {'would be ' if args.dry_run else ''}sent")
    return 0
