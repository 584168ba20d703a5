"""The oracle itself: a run with bad messages but no failure passes it, and planted faults are caught."""

from __future__ import annotations

import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from minio import Minio

from tests.reliability.harness import Scenario, traffic
from tests.support.oracle import CommitSample, S3VersionedView, check, read_dlq

pytestmark = pytest.mark.slow


def test_clean_run_passes_and_planted_faults_are_caught(scenario: Scenario) -> None:
    started = time.time()
    scenario.produce(traffic(seed=1).generate(4000))
    collector = scenario.collector()
    scenario.wait_caught_up(collector)
    report = scenario.finish()
    assert report.produced == 4000 and report.losses == 0 and report.duplicates == 0
    assert report.dlq_rejected_messages > 20 and report.collapsed > 0  # ~2 % faults, duplicates included
    assert report.merged_files.get("hour", 0) >= 2 and report.merged_files.get("week", 0) >= 2
    assert report.rows_stored == report.rows_expected - _collapsed_rows(scenario)

    # Now break what was stored, one fault per check, and run the oracle again.
    moto = scenario.moto
    client = Minio(moto.endpoint, access_key=moto.access_key, secret_key=moto.secret_key, secure=False)
    bucket = scenario.bucket

    def put(key: str, data: bytes) -> None:
        client.put_object(bucket, key, io.BytesIO(data), len(data))

    def get(key: str) -> bytes:
        response = client.get_object(bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    hours = sorted(o.object_name for o in client.list_objects(bucket, "robot_status/hour/", recursive=True))
    days = sorted(o.object_name for o in client.list_objects(bucket, "equipment_metrics/day/", recursive=True))
    weeks = sorted(o.object_name for o in client.list_objects(bucket, "robot_status/week/", recursive=True))
    hour = pq.read_table(pa.BufferReader(get(hours[0])))
    doubled = pa.concat_tables([hour, hour.slice(0, 5)])  # five rows twice
    put(hours[0], _parquet(doubled))
    put(_manifest(hours[0]), _with_rows(get(_manifest(hours[0])), doubled.num_rows))
    day = pq.read_table(pa.BufferReader(get(days[0])))
    put(days[0], _parquet(day.slice(0, day.num_rows - 7)))  # seven rows lost, manifest left saying otherwise
    client.remove_object(bucket, weeks[0])  # its manifest is now an orphan
    put("equipment_metrics/minute/.tmp-upload-1.parquet", b"partial")
    put("robot_status/hour/20250101_00_01.parquet.part", b"partial")
    produced = scenario.produced[1:]  # the first message "never produced": its rows are phantoms now
    early = CommitSample(started, dict(scenario.ends()))  # "committed" everything before anything was stored

    broken = check(produced, S3VersionedView.from_env(scenario.storage_env),
                   dlq=read_dlq(scenario.bootstrap, scenario.domains), samples=[early])  # fmt: skip
    print(broken.failure_message())
    assert not broken.ok
    for name in ("accounting", "merged_duplicates", "readable", "no_temporaries", "commit_safety", "stable_keys"):
        assert broken.counts[name] > 0, f"planted fault for check {name} not caught:\n{broken.failure_message()}"
    assert broken.duplicates >= 5 and broken.losses >= 7


def _collapsed_rows(scenario: Scenario) -> int:
    """Rows of injected duplicate messages (merged away: same de-dup key as their original)."""
    assert scenario.report is not None
    dups = [p for p in scenario.produced if p.message.fault == "duplicate" and p.message.expected_reason is None]
    return sum(p.message.expected_rows for p in dups) if scenario.report.collapsed == len(dups) else -1


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _manifest(key: str) -> str:
    domain, grain, name = key.split("/")
    return f"{domain}/_manifests/{grain}/{name.removesuffix('.parquet')}.json"


def _with_rows(manifest: bytes, rows: int) -> bytes:
    body = json.loads(manifest)
    body["rows"] = rows
    return json.dumps(body).encode()
