"""A bad configuration stops the collector at start with one clear line and a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-value-never-printed"


def run_collector(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MINIO_", "STORAGE_", "GCS_"))}
    return subprocess.run(
        [sys.executable, "-m", "collector"],
        env={**clean, "PYTHONPATH": str(ROOT), "LOCAL_STORAGE_DIR": str(tmp_path), "HTTP_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "KAFKA_BROKERS"),
        ({"KAFKA_BROKERS": "no-port-here"}, "KAFKA_BROKERS"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "KAFKA_TOPIC": "iot.nope"}, "KAFKA_TOPIC"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "STORAGE_BACKEND": "ftp"}, "STORAGE_BACKEND"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "STORAGE_BACKEND": "minio", "MINIO_SECRET_KEY": SECRET}, "MINIO_ENDPOINT"),
        (
            {
                "KAFKA_BROKERS": "127.0.0.1:9",
                "STORAGE_BACKEND": "minio",
                "MINIO_ENDPOINT": "http://x:9000",
                "MINIO_ACCESS_KEY": "a",
                "MINIO_SECRET_KEY": SECRET,
            },
            "MINIO_ENDPOINT",
        ),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "MAX_BUFFER_BYTES": "lots"}, "MAX_BUFFER_BYTES"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "FLUSH_GRACE_SECONDS": "-1"}, "FLUSH_GRACE_SECONDS"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "WIRE_FORMATS": "iot.robot_status=xml"}, "WIRE_FORMATS"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "WORKER_THREADS": "0"}, "WORKER_THREADS"),
        ({"KAFKA_BROKERS": "127.0.0.1:9", "BATCH_WAIT_SECONDS": "-1"}, "BATCH_WAIT_SECONDS"),
    ],
)
def test_bad_configuration_exits_with_one_line_naming_the_variable(
    env: dict[str, str], names: str, tmp_path: Path
) -> None:
    result = run_collector(env, tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert SECRET not in result.stderr + result.stdout


def test_malformed_dimension_file_stops_the_collector_with_one_line(tmp_path: Path) -> None:
    dims = tmp_path / "fms-data" / "_dims"
    dims.mkdir(parents=True)
    (dims / "dim_device_threshold.csv").write_text("device_type,max_latency,timeout_multiplier\ngateway,fast,2.5\n")
    result = run_collector({"KAFKA_BROKERS": "127.0.0.1:9"}, tmp_path)
    assert result.returncode != 0
    # Warnings about the other (absent) tables are JSON log records; the error is one plain line.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert "dim_device_threshold.csv" in lines[0] and "max_latency" in lines[0]
