"""Each container of the built dev overlay, run as a process with its manifest command and the
ConfigMap's environment against the test broker (Tansu) and S3 server (moto): manifests and code
cannot drift apart."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from collector.topics import all_topics
from domains import DOMAINS
from embedded.servers import MotoS3Server, TansuBroker, free_port
from tests.k8s.manifests import KUBECTL, ROOT, build, container_env, find, pod_spec
from tests.support.kafka import produce_tracked
from tests.support.storage import make_store
from trafficgen import TrafficGenerator

pytestmark = [pytest.mark.slow, pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")]


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return build("overlays/dev", ("backfill",))


def container(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec = pod_spec(find(resources, kind, name))
    assert spec is not None
    return spec["containers"][0]


def pod_env(resources: list[dict[str, Any]], spec: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """What the pod would see, pointed at the test servers; the repo on PYTHONPATH as in the image."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")}
    return {**env, **container_env(resources, spec), **overrides, "PYTHONPATH": str(ROOT)}


def command(spec: dict[str, Any]) -> list[str]:
    argv = [*spec.get("command", []), *spec.get("args", [])]
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def storage_env(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Any, dict[str, str]]:
    store, env = make_store("minio", tmp_path, request)
    return store, env


def test_topic_bootstrap_job_creates_every_topic(dev: list[dict[str, Any]], tmp_path: Path) -> None:
    spec = container(dev, "Job", "topic-bootstrap")
    with TansuBroker() as broker:
        env = pod_env(dev, spec, {"KAFKA_BROKERS": broker.bootstrap})
        done = subprocess.run(command(spec), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        listed = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        assert {t.name for t in all_topics()} <= set(listed)
        for topic in all_topics():
            assert len(listed[topic.name].partitions) == topic.partitions


def test_collector_deployment_writes_minute_files_and_the_hour_cronjob_merges_them(
    dev: list[dict[str, Any]], kafka: TansuBroker, moto_server: MotoS3Server, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    store, storage = storage_env(tmp_path, request)
    servers = {"KAFKA_BROKERS": kafka.bootstrap, **storage}
    # A complete hour in the past, so the merger's catch-up (no --now in the manifests) takes it.
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=10, second=0, microsecond=0)
    produced = produce_tracked(kafka.bootstrap, TrafficGenerator(seed=7, start=start).generate(300))
    assert len(produced) == 300

    spec = container(dev, "Deployment", "realtime-collector")
    env = pod_env(dev, spec, {**servers, "HTTP_PORT": str(free_port()), "SESSION_TIMEOUT_MS": "6000",
                              "LOG_FORMAT": "text"})
    assert env["ANOMALY_ENABLED"] == "true"  # the ConfigMap's, as deployed
    log = (tmp_path / "collector.log").open("wb")
    proc = subprocess.Popen(command(spec), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(store.list(f"{d}/minute/") for d in DOMAINS):
                break
            assert proc.poll() is None, (tmp_path / "collector.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("no minute files for every domain:\n" + (tmp_path / "collector.log").read_text()[-3000:])
    finally:
        proc.terminate()
        code = proc.wait(90)
        log.close()
    assert code == 0, (tmp_path / "collector.log").read_text()[-3000:]

    for name in ("batch-merger-hour", "batch-merger-day", "batch-merger-week"):
        spec = container(dev, "CronJob", name)
        env = pod_env(dev, spec, servers)
        done = subprocess.run(command(spec), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    hour = f"{start:%Y%m%d_%H}_{start.hour + 1:02d}.parquet"
    for domain in DOMAINS:
        assert any(info.key.endswith(hour) for info in store.list(f"{domain}/hour/")), f"{domain}: no hour file {hour}"


def test_backfill_job_loads_history_and_finishes(
    dev: list[dict[str, Any]], kafka: TansuBroker, moto_server: MotoS3Server, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if importlib.util.find_spec("backfill.__main__") is None:
        pytest.skip("python -m backfill does not exist yet")
    store, storage = storage_env(tmp_path, request)
    start = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=20, second=0, microsecond=0)
    produce_tracked(kafka.bootstrap, TrafficGenerator(seed=9, start=start).generate(200))
    spec = container(dev, "Job", "backfill-loader")
    env = pod_env(dev, spec, {"KAFKA_BROKERS": kafka.bootstrap, **storage, "SESSION_TIMEOUT_MS": "6000",
                              "LOG_FORMAT": "text"})
    done = subprocess.run(command(spec), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(store.list(f"{d}/minute/") or store.list(f"{d}/hour/") for d in DOMAINS)
