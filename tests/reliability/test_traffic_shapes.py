"""Traffic that changes shape: a schema version change mid-stream, a burst of 10x the normal rate, and
consumer lag approaching the topic's retention."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastavro
import orjson
import pytest

from collector.http import scrape_totals
from domains import DOMAINS
from domains.avro import encode_one
from embedded.servers import LOOPBACK, MotoS3Server, TcpProxy, free_port
from tests.reliability.harness import BackgroundTraffic, Scenario, past_start, traffic, wait_for, with_message
from trafficgen import GeneratedMessage
from trafficgen.encoding import AVRO_CONFLUENT, JSON, confluent_frame, decode_value

pytestmark = pytest.mark.slow

V21_ID = 9021


def robot_status_v21() -> dict[str, object]:
    """robot_status v2.1: a new optional field in the middle, same full name (a compatible evolution)."""
    schema = copy.deepcopy(DOMAINS["robot_status"].schema)
    fields = schema["fields"]
    fields.insert(3, {"name": "firmware_version", "type": ["null", "string"], "default": None})
    schema["doc"] = "Robot state report, schema_version v2.1 (adds firmware_version)."
    return schema


class SchemaRegistry:
    """A minimal Confluent Schema Registry (``GET /schemas/ids/{id}``) over real HTTP, for the collector's
    SCHEMA_REGISTRY_URL: the repo's schemas under their ids, plus robot_status v2.1."""

    def __init__(self) -> None:
        self.schemas = {d.schema_id: d.schema for d in DOMAINS.values()} | {V21_ID: robot_status_v21()}
        self.port = free_port()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                schema_id = self.path.rsplit("/", 1)[-1]
                found = registry.schemas.get(int(schema_id)) if schema_id.isdigit() else None
                body = json.dumps({"schema": json.dumps(found)} if found else {"error_code": 40403}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """SCHEMA_REGISTRY_URL."""
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry() -> Iterator[SchemaRegistry]:
    """A schema registry for one test."""
    server = SchemaRegistry()
    try:
        yield server
    finally:
        server.close()


def to_v21(messages: list[GeneratedMessage]) -> list[GeneratedMessage]:
    """The same records written by a v2.1 producer: Confluent-framed with the v2.1 id, or JSON."""
    parsed = fastavro.parse_schema(robot_status_v21())
    out = []
    for m in messages:
        record = decode_value(DOMAINS[m.domain], m.value, m.fmt)
        record["firmware_version"] = "fw-2.1.0"
        record["schema_version"] = "v2.1"
        value = orjson.dumps(record) if m.fmt == JSON else confluent_frame(V21_ID, encode_one(record, parsed))
        out.append(with_message(m, value=value, msg_id=m.msg_id + "-v21"))
    return out


def test_schema_version_change_mid_stream(scenario: Scenario, registry: SchemaRegistry) -> None:
    collector = scenario.collector(SCHEMA_REGISTRY_URL=registry.url)
    scenario.produce(traffic(seed=111, fault_rate=0.01).generate(800))
    later = traffic(seed=112, domains=["robot_status"], fault_rate=0, start=past_start() + timedelta(hours=1))
    v20 = [m for m in later.generate(600) if m.fmt in (AVRO_CONFLUENT, JSON)]
    v21 = to_v21(v20)
    scenario.produce(v21)
    scenario.produce(traffic(seed=113, domains=["equipment_metrics"], start=past_start() + timedelta(hours=1),
                             fault_rate=0).generate(200))  # fmt: skip
    scenario.wait_caught_up(collector)
    report = scenario.finish()
    print(f"schema change: {len(v21)} robot_status v2.1 messages (id {V21_ID} and JSON) after v2.0; {report.summary()}")


def test_burst_of_ten_times_the_rate(scenario: Scenario) -> None:
    """150 msg/s, then 1,500 msg/s for 5 s, then 150 msg/s again: no loss, the lag drains, memory stays bounded."""
    limit = 16 * 1024 * 1024
    collector = scenario.collector(MAX_BUFFER_BYTES=str(limit))
    wait_for(lambda: collector.probe("/readyz") == 200, 60, "the collector")
    generator = traffic(seed=121)
    normal = BackgroundTraffic(scenario.producer, generator, rate=150).start()
    time.sleep(4)
    normal.pause()
    burst = BackgroundTraffic(scenario.producer, generator, rate=1500, chunk=500).start()
    peak_buffer, peak_lag = 0.0, 0.0
    started = time.monotonic()
    while time.monotonic() - started < 5:
        peak_buffer = max(peak_buffer, collector.total("fms_buffered_bytes"))
        peak_lag = max(peak_lag, collector.total("kafka_lag_max"))
        time.sleep(0.3)
    in_burst = burst.stop()
    normal.resume()
    time.sleep(4)
    sent = normal.stop() + in_burst
    drained = time.monotonic()
    scenario.wait_caught_up(collector, timeout=120)
    drain_s = time.monotonic() - drained
    assert peak_buffer <= limit * 1.5, f"buffer grew to {peak_buffer:.0f} bytes (limit {limit})"
    report = scenario.finish()
    print(f"burst: {in_burst} messages in 5 s within {sent}; peak lag {peak_lag:.0f}, peak buffer "
          f"{peak_buffer / 2**20:.1f} MiB, drained {drain_s:.0f} s after the traffic; {report.summary()}")


def test_lag_approaching_retention_raises_an_alarm(
    scenario_factory: Callable[..., Scenario], moto_server: MotoS3Server
) -> None:
    host, _, port = moto_server.endpoint.rpartition(":")
    proxy = TcpProxy(host, int(port)).start()
    try:
        scenario = scenario_factory(endpoint=proxy.address)
        collector = scenario.collector()
        wait_for(lambda: collector.probe("/readyz") == 200, 60, "the collector")
        proxy.pause()  # storage down: nothing can be committed, the lag stays
        old = traffic(seed=131, domains=["robot_status"], start=past_start(6.5), fault_rate=0).generate(300)
        scenario.producer.send(old, timestamps="event")  # Kafka timestamps 6.5 days old: robot_status keeps 7 days
        scenario.producer.flush()
        wait_for(lambda: any(v >= 0.9 for k, v in scrape_totals(collector.port).items() if "retention" in k), 20,
                 "a lag-vs-retention signal")  # fmt: skip
        metrics = scrape_totals(collector.port)
        proxy.resume()
        scenario.wait_caught_up(collector, timeout=120)
        scenario.finish()
    finally:
        proxy.stop()
    retention = {name: value for name, value in metrics.items() if "retention" in name}
    assert any(value >= 0.9 for value in retention.values()), f"no lag-vs-retention signal in {sorted(metrics)}"
