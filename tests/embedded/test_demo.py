"""The quick start (``make demo``) end to end, shortened: it stores, merges and answers the three questions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from domains import DOMAINS
from embedded.demo import QUESTIONS
from tests.support.collector_process import ROOT

pytestmark = pytest.mark.slow


def test_demo_stores_merges_and_answers_the_three_questions(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "embedded.demo", "--duration", "3", "--rate", "300", "--history-minutes", "70",
         "--data", str(tmp_path / "data")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for question in QUESTIONS:
        assert question in done.stdout
    bucket = tmp_path / "data" / "fms-data"
    for name in DOMAINS:
        markers = list((bucket / name / "_complete" / "hour").glob("*.json"))
        stats = list((bucket / name / "stats" / "hour").glob("*.parquet"))
        assert markers and stats, name
        hour = markers[0].stem
        rows = duckdb.sql(
            f"SELECT sum(count) FROM read_parquet('{bucket / name / 'stats' / 'hour' / hour}.parquet') "
            f"WHERE section = 'measure'"
        ).fetchall()[0][0]
        assert rows and rows > 0, name
