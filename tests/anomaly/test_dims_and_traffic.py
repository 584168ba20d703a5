"""Dimension files (load, malformed, absent, fingerprint), the sample set, and generated traffic."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from anomaly import AnomalyEngine, Dimensions, EngineState
from anomaly.dims import TABLES
from anomaly.samples import SAMPLE_DIR, build_samples, to_csv, upload_samples
from common.errors import ConfigError
from domains import DOMAINS
from domains.decode import BatchDecoder, MessageBatch
from storage.local import LocalStore
from trafficgen import TrafficGenerator


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path, "fms-data")


def test_samples_load_cleanly_and_match_their_source(store: LocalStore) -> None:
    assert len(upload_samples(store)) == len(TABLES)
    dims = Dimensions.load(store)
    for name, frame in build_samples().items():
        assert (SAMPLE_DIR / f"{name}.csv").read_bytes() == to_csv(frame), f"regenerate {name}.csv"
        assert dims[name].height == frame.height > 0


def test_malformed_file_names_the_file(store: LocalStore) -> None:
    upload_samples(store)
    store.put("_dims/dim_device_threshold.csv", b"device_type,max_latency,timeout_multiplier\ngateway,fast,2.5\n")
    with pytest.raises(ConfigError, match=r"_dims/dim_device_threshold.csv: column max_latency: cannot read 'fast'"):
        Dimensions.load(store)
    store.put("_dims/dim_device_threshold.csv", b"device_type,max_latency\ngateway,10\n")
    with pytest.raises(ConfigError, match="dim_device_threshold.csv: missing column"):
        Dimensions.load(store)


def test_absent_file_is_an_empty_table_and_fingerprint_changes(store: LocalStore,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    upload_samples(store)
    before = Dimensions.fingerprint(store)
    store.delete("_dims/dim_robot.csv")
    dims = Dimensions.load(store)
    assert dims["dim_robot"].height == 0 and "dim_robot" in caplog.text
    assert Dimensions.fingerprint(store) != before


def test_generated_traffic_has_a_low_anomaly_ratio() -> None:
    start = datetime(2025, 5, 24, 13, 0, tzinfo=UTC)
    now = datetime(2025, 5, 24, 14, 0, tzinfo=UTC)
    by_domain = defaultdict(list)
    for m in TrafficGenerator(seed=7, start=start).generate(4000):
        by_domain[m.domain].append(m)
    engine = AnomalyEngine(Dimensions(build_samples()), EngineState())
    for name, messages in by_domain.items():
        d = DOMAINS[name]
        n = len(messages)
        batch = MessageBatch(d.topic.name, [m.value for m in messages], [0] * n, list(range(n)), [0] * n)
        ev = engine.evaluate(name, BatchDecoder(d).decode(batch, now).rows, now)
        assert ev.rows.height > 0
        assert ev.rows["anomaly"].mean() < 0.10, name
        assert ev.dlq.height < 0.10 * n, name
