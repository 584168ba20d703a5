"""The traffic generator: determinism, schema-valid messages, faults with their outcomes, Kafka round trip."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro.validation
import orjson
import pytest

from domains import DOMAINS
from domains.avro import decode_one
from domains.base import INVALID_ENUM, SCHEMA_ERROR, UNIT_MISMATCH, UNIT_VIOLATION
from domains.device_status import DEVICE_TYPES
from domains.energy_usage import ENERGY_UNITS
from domains.environmental_readings import SENSOR_UNITS
from domains.equipment_metrics import SENSOR_QUALITIES
from domains.qc_result import ITEM_UNITS
from domains.robot_status import ROBOT_STATES
from trafficgen import FAULT_KINDS, GeneratedMessage, TrafficGenerator, canonical_examples, expected_counts
from trafficgen.__main__ import build_parser, client_config, main
from trafficgen.encoding import FORMATS, decode_value, encode_key, encode_value
from trafficgen.faults import EXPECTED_REASON, applies, spread_rate
from trafficgen.generator import GARBAGE, expected_flags
from trafficgen.messages import parse_iso, sample_messages
from trafficgen.producer import MSG_ID_HEADER, TokenBucket

START = datetime(2025, 5, 24, 13, 0, tzinfo=UTC)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


def generate(n: int, **kwargs: Any) -> list[GeneratedMessage]:
    kwargs.setdefault("start", START)
    return TrafficGenerator(**kwargs).generate(n)


def decoded(m: GeneratedMessage) -> dict[str, Any]:
    return decode_value(DOMAINS[m.domain], m.value, m.fmt)


def timestamps(record: dict[str, Any]) -> list[str]:
    out = [record["timestamp"], record["ingestion_timestamp"]]
    status = record.get("status", {})
    out += [status[k] for k in ("changed_at", "last_success_at") if k in status]
    return out


# -- determinism and shape ------------------------------------------------------------------------


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    rates = spread_rate(0.2)
    first = generate(2000, seed=42, fault_rates=rates)
    again = generate(2000, seed=42, fault_rates=rates)
    other = generate(2000, seed=43, fault_rates=rates)
    assert first == again
    assert [m.value for m in first] != [m.value for m in other]
    assert len({m.msg_id for m in first}) == len(first)


def test_stream_continues_where_generate_stopped() -> None:
    gen = TrafficGenerator(seed=5, start=START)
    head = gen.generate(300)
    tail = [m for _, m in zip(range(200), gen, strict=False)]
    assert head + tail == generate(500, seed=5)


def test_event_time_advances_by_step_and_defaults_follow_the_clock() -> None:
    messages = generate(60, domains=["robot_status", "qc_result"], step=timedelta(seconds=2))
    assert [m.event_time for m in messages] == [START + i * timedelta(seconds=2) for i in range(60)]
    clocked = TrafficGenerator(clock=lambda: START).generate(3)
    assert clocked[0].event_time == START
    assert clocked[1].event_time - START == timedelta(milliseconds=166)  # 1 s / 6 domains, whole ms


def test_live_mode_follows_the_clock_and_keeps_entity_times_increasing() -> None:
    frozen = datetime(2025, 5, 24, 13, 0, 0, 123456, tzinfo=UTC)
    messages = TrafficGenerator(clock=lambda: frozen, live=True, domains=["robot_status"]).generate(50)
    per_robot: dict[bytes, list[datetime]] = {}
    for m in messages:
        per_robot.setdefault(m.key, []).append(m.event_time)
    assert messages[0].event_time == frozen.replace(microsecond=123000)
    assert all(b > a for times in per_robot.values() for a, b in zip(times, times[1:], strict=False))


def test_clean_messages_validate_and_round_trip_every_encoding() -> None:
    messages = generate(3000, seed=1)
    assert {m.domain for m in messages} == set(DOMAINS)
    assert {m.fmt for m in messages} == set(FORMATS)
    for m in messages:
        domain = DOMAINS[m.domain]
        assert m.fault is None and m.expected_reason is None and m.expected_flag is None
        assert m.topic == domain.topic.name
        record = decoded(m)
        assert fastavro.validation.validate(record, domain.parsed_schema, raise_errors=True)
        assert set(record) == {f["name"] for f in domain.schema["fields"]}
        assert m.key == record[domain.entity_key].encode() == encode_key(domain, record)
        assert record["schema_version"] == domain.schema_version
        assert all(ISO.match(t) for t in timestamps(record))
        assert parse_iso(record["timestamp"]) == m.event_time
        lag = parse_iso(record["ingestion_timestamp"]) - m.event_time
        assert timedelta(0) <= lag <= timedelta(seconds=5)
        rows = len(record[domain.explode]) if domain.explode else 1
        assert m.expected_rows == rows >= 1
        for fmt in FORMATS:
            assert decode_value(domain, encode_value(domain, record, fmt), fmt) == record


def test_framed_avro_carries_the_domain_schema_id() -> None:
    for m in generate(300, seed=2, formats=["avro-confluent"]):
        domain = DOMAINS[m.domain]
        assert m.value[0] == 0
        assert int.from_bytes(m.value[1:5], "big") == domain.schema_id
        assert decode_one(m.value[5:], domain.parsed_schema) == decoded(m)


def test_values_are_realistic() -> None:
    records: dict[str, list[dict[str, Any]]] = {d: [] for d in DOMAINS}
    for m in generate(6000, seed=3):
        records[m.domain].append(decoded(m))
    for r in records["equipment_metrics"]:
        assert re.fullmatch(r"LINE_[A-F]_[A-Z]+_\d{3}", r["equipment_id"])
        assert r["location"] == f"line_{r['equipment_id'][5].lower()}"
        assert re.fullmatch(r"OP\d{3}", r["operator_id"]) and re.fullmatch(r"BATCH_\d{8}_\d{3}", r["batch_id"])
        assert parse_iso(r["status"]["changed_at"]) <= parse_iso(r["timestamp"])
        for metric in r["metrics"]:
            assert (metric["sensor_type"], metric["unit"]) in {
                ("temperature", "celsius"), ("vibration", "mm/s"), ("pressure", "bar"), ("current", "A"),
            }  # fmt: skip
            assert metric["sensor_id"].split("_")[0] in ("TEMP", "VIB", "PRESS", "CURRENT")
    qualities = Counter(m["quality"] for r in records["equipment_metrics"] for m in r["metrics"])
    assert set(qualities) <= set(SENSOR_QUALITIES) and qualities["good"] / sum(qualities.values()) > 0.9
    for r in records["qc_result"]:
        assert re.fullmatch(r"P\d{8}", r["product_code"])
        assert r["inspection_type"] in ("vision", "dimension", "weight")
        for item in r["inspection_items"]:
            assert item["unit"] in ITEM_UNITS[item["item_id"]]
    for r in records["energy_usage"]:
        assert r["unit"] in ENERGY_UNITS[r["energy_type"]] and r["usage"] > 0
    for r in records["environmental_readings"]:
        assert re.fullmatch(r"line_[a-f]_zone_\d", r["location"])
        for reading in r["readings"]:
            assert reading["unit"] in SENSOR_UNITS[reading["sensor_type"]]
            if reading["sensor_type"] == "temperature":
                assert 18 <= reading["value"] <= 32
            if reading["sensor_type"] == "co2":
                assert 400 <= reading["value"] <= 1400
    for r in records["robot_status"]:
        assert re.fullmatch(r"ROBOT_\d{3}", r["robot_id"])
        assert r["model"] in ("agv_type_a", "agv_type_b", "agv_type_c", "arm_6axis", "drone_x")
        assert r["status"]["current"] in ROBOT_STATES and r["status"]["previous"] in ROBOT_STATES
        assert parse_iso(r["status"]["changed_at"]) <= parse_iso(r["timestamp"]) and 0 <= r["battery_level"] <= 100
        assert (r["error_code"] is not None) == (r["status"]["current"] == "error")
        if r["error_code"]:
            assert re.fullmatch(r"E[1-5]\d\d", r["error_code"])
        assert r["task_id"] is None or re.fullmatch(r"TSK_\d{8}_\d{3}", r["task_id"])
    for r in records["device_status"]:
        assert r["device_type"] in DEVICE_TYPES and 5 <= r["status"]["latency_ms"] <= 400
        assert parse_iso(r["status"]["last_success_at"]) <= parse_iso(r["timestamp"])
        if r["status"]["ping_success"]:
            assert r["error_code"] is None
    pings = Counter(r["status"]["ping_success"] for r in records["device_status"])
    assert pings[True] / sum(pings.values()) > 0.9


def test_no_natural_duplicates_of_the_dedup_key() -> None:
    """Without the duplicate fault, no two rows share a domain's de-duplication key."""
    seen: dict[str, set[tuple[Any, ...]]] = {d: set() for d in DOMAINS}
    for m in generate(6000, seed=4, step=timedelta(milliseconds=1)):
        domain, record = DOMAINS[m.domain], decoded(m)
        rows = [{**record, **element} for element in record[domain.explode]] if domain.explode else [record]
        for row in rows:
            key = tuple(row[k] for k in domain.dedup_key)
            assert key not in seen[m.domain]
            seen[m.domain].add(key)


def test_robot_battery_drains_while_moving_and_recovers_while_charging() -> None:
    records = sample_messages("robot_status", 6000, seed=7, step=timedelta(seconds=1))
    last: dict[str, dict[str, Any]] = {}
    drains: list[float] = []
    charged = 0
    for r in records:
        prev = last.get(r["robot_id"])
        last[r["robot_id"]] = r
        if prev is None:
            continue
        assert parse_iso(r["timestamp"]) > parse_iso(prev["timestamp"])
        if r["status"]["changed_at"] != prev["status"]["changed_at"]:  # a transition in between
            assert r["status"]["previous"] == prev["status"]["current"]
            assert parse_iso(prev["timestamp"]) <= parse_iso(r["status"]["changed_at"]) <= parse_iso(r["timestamp"])
            continue
        assert r["status"] == prev["status"]
        minutes = (parse_iso(r["timestamp"]) - parse_iso(prev["timestamp"])).total_seconds() / 60
        delta = r["battery_level"] - prev["battery_level"]
        if r["status"]["current"] == "moving":
            assert delta <= 0
            assert -delta <= 2.0 * minutes + 0.1  # at most 2 %/min, give or take the 0.1 rounding
            drains.append(-delta / minutes)
        elif r["status"]["current"] == "charging" and prev["battery_level"] < 99:
            assert delta > 0
            charged += 1
    assert len(drains) > 500 and charged > 50
    assert 0.5 <= sum(drains) / len(drains) <= 2.0


def test_device_ip_hash_is_a_hash_never_an_ip() -> None:
    ip_like = re.compile(r"(\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}")
    hashes = {r["ip_address_hash"] for r in sample_messages("device_status", 500)}
    assert len(hashes) > 20
    for h in hashes:
        assert re.fullmatch(r"0x[0-9a-f]{16}", h) and not ip_like.search(h)


# -- faults ---------------------------------------------------------------------------------------

RECORD_REASON = {
    "missing_field": {d: SCHEMA_ERROR for d in DOMAINS},
    "bad_enum": {"robot_status": INVALID_ENUM, "device_status": INVALID_ENUM, "equipment_metrics": SCHEMA_ERROR},
    "wrong_unit": {
        "qc_result": UNIT_MISMATCH,
        "energy_usage": UNIT_MISMATCH,
        "environmental_readings": UNIT_MISMATCH,
        "robot_status": UNIT_VIOLATION,
    },
}


def test_fault_table_is_the_documented_one() -> None:
    for kind, table in RECORD_REASON.items():
        assert EXPECTED_REASON[kind] == table
    assert EXPECTED_REASON["wrong_type"] == dict.fromkeys(DOMAINS, SCHEMA_ERROR)
    for kind in ("garbage_bytes", "truncated_avro"):
        assert EXPECTED_REASON[kind] == dict.fromkeys(DOMAINS, SCHEMA_ERROR)
    for kind in ("late_arrival", "duplicate"):
        assert EXPECTED_REASON[kind] == dict.fromkeys(DOMAINS)
    assert set(EXPECTED_REASON) == set(FAULT_KINDS)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{path}.{key}").items()} | {path: value}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in _leaves(sub, f"{path}[{i}]").items()} | {path: value}
    return {path: value}


def _strictly_invalid(domain: str, value: bytes) -> bool:
    for payload in (value, value[5:]):
        try:
            decode_one(payload, DOMAINS[domain].parsed_schema)
            return False
        except Exception:  # noqa: BLE001
            continue
    try:
        return not isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return True


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_has_its_outcome_where_it_applies(kind: str) -> None:
    messages = generate(1200, seed=11, fault_rates={kind: 1.0})
    by_domain: dict[str, list[GeneratedMessage]] = {}
    for m in messages:
        by_domain.setdefault(m.domain, []).append(m)
    assert set(by_domain) == set(DOMAINS)
    for domain, group in by_domain.items():
        if not applies(kind, domain):
            assert all(m.fault is None and m.expected_reason is None for m in group)
            continue
        faulty = [m for m in group if m.fault == kind]
        assert len(faulty) >= len(group) - 1  # the first duplicate has nothing to copy yet
        for m in faulty:
            assert m.expected_reason == EXPECTED_REASON[kind][domain]
            assert (m.expected_rows == 0) if m.expected_reason else (m.expected_rows >= 1)
            _check_fault(kind, domain, m, messages)


def _check_fault(kind: str, domain: str, m: GeneratedMessage, messages: list[GeneratedMessage]) -> None:
    schema = DOMAINS[domain].parsed_schema
    if kind in ("missing_field", "wrong_type"):
        assert m.fmt == "json"
        record = orjson.loads(m.value)
        assert not fastavro.validation.validate(record, schema, raise_errors=False)
        if kind == "wrong_type":
            strings = [
                v for v in _leaves(record).values() if v in ("abc", "n/a", "slow", "unknown", "high", "maybe", "ok")
            ]
            assert strings
    elif kind == "bad_enum":
        record = decoded(m)
        if domain == "robot_status":
            assert {record["status"]["current"], record["status"]["previous"]} - set(ROBOT_STATES)
        elif domain == "device_status":
            assert record["device_type"] not in DEVICE_TYPES
        else:
            assert {x["quality"] for x in record["metrics"]} - set(SENSOR_QUALITIES)
    elif kind == "wrong_unit":
        record = decoded(m)
        if domain == "qc_result":
            assert any(i["unit"] not in ITEM_UNITS[i["item_id"]] for i in record["inspection_items"])
        elif domain == "energy_usage":
            assert record["unit"] not in ENERGY_UNITS[record["energy_type"]]
        elif domain == "environmental_readings":
            assert any(r["unit"] not in SENSOR_UNITS[r["sensor_type"]] for r in record["readings"])
        else:
            assert not 0 <= record["battery_level"] <= 100
    elif kind == "garbage_bytes":
        assert m.fmt == GARBAGE and 1 <= len(m.value) <= 200 and _strictly_invalid(domain, m.value)
    elif kind == "truncated_avro":
        assert m.fmt in ("avro", "avro-confluent") and _strictly_invalid(domain, m.value)
    elif kind == "late_arrival":
        record = decoded(m)
        lag = parse_iso(record["ingestion_timestamp"]) - parse_iso(record["timestamp"])
        assert timedelta(minutes=11) <= lag <= timedelta(minutes=60)
        assert m.expected_flag == "late_arrival" and m.expected_rows >= 1
    elif kind == "duplicate":
        assert m.expected_flag == "duplicate" and m.expected_rows >= 1
        earlier = messages[: messages.index(m)]
        assert any(e.key == m.key and e.value == m.value and e.fault is None for e in earlier)


def test_truncated_avro_is_cut_from_a_valid_encoding() -> None:
    for m in generate(400, seed=12, fault_rates={"truncated_avro": 1.0}):
        if m.fmt == "avro-confluent" and len(m.value) >= 5:
            assert m.value[0] == 0 and int.from_bytes(m.value[1:5], "big") == DOMAINS[m.domain].schema_id


def test_fault_rates_are_roughly_honoured() -> None:
    messages = generate(10_000, seed=13, fault_rates={"garbage_bytes": 0.05})
    assert 400 <= sum(m.fault == "garbage_bytes" for m in messages) <= 600
    spread = generate(10_000, seed=14, fault_rates=spread_rate(0.16))
    counts = Counter(m.fault for m in spread)
    for kind in FAULT_KINDS:
        share = sum(applies(kind, m.domain) for m in spread) / len(spread)
        expected = 10_000 * 0.02 * share
        assert 0.6 * expected <= counts[kind] <= 1.4 * expected, (kind, counts[kind], expected)


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        TrafficGenerator(domains=["nope"])
    with pytest.raises(ValueError):
        TrafficGenerator(formats=["xml"])
    with pytest.raises(ValueError):
        TrafficGenerator(fault_rates={"gremlins": 0.1})
    with pytest.raises(ValueError):
        TrafficGenerator(fault_rates={"duplicate": 0.7, "late_arrival": 0.7})
    with pytest.raises(ValueError):
        TrafficGenerator(step=timedelta(0))


def test_expected_counts_sum_rows_and_rejections() -> None:
    messages = generate(3000, seed=15, fault_rates=spread_rate(0.3))
    counts = expected_counts(messages)
    assert set(counts) == set(DOMAINS)
    for domain, entry in counts.items():
        mine = [m for m in messages if m.domain == domain]
        assert entry["rows"] == sum(m.expected_rows for m in mine)
        assert sum(entry["rejected"].values()) == sum(m.expected_reason is not None for m in mine)
        assert all(m.expected_rows == 0 for m in mine if m.expected_reason)
    flags = expected_flags(messages)
    assert sum(sum(f.values()) for f in flags.values()) == sum(m.expected_flag is not None for m in messages)


def test_generated_faults_agree_with_the_decoder() -> None:
    """Contract with domains.decode: each message is rejected with exactly its expected reason."""
    decode = pytest.importorskip("domains.decode")
    messages = generate(3000, seed=16, fault_rates=spread_rate(0.4))
    for name, domain in DOMAINS.items():
        mine = [m for m in messages if m.domain == name]
        batch = decode.MessageBatch(
            topic=domain.topic.name,
            values=[m.value for m in mine],
            partitions=[0] * len(mine),
            offsets=list(range(len(mine))),
            timestamps_ms=[0] * len(mine),
        )
        result = decode.BatchDecoder(domain).decode(batch, START)
        reasons = {r.index: r.reason for r in result.rejected}
        rows = Counter(result.rows["kafka_offset"].to_list())
        for i, m in enumerate(mine):
            assert (reasons.get(i), rows[i]) == (m.expected_reason, m.expected_rows), (name, m.fault, m.fmt)


# -- canonical examples ---------------------------------------------------------------------------


def test_canonical_examples_are_the_seed_messages() -> None:
    examples = canonical_examples()
    assert set(examples) == set(DOMAINS)
    assert examples["equipment_metrics"]["metrics"][0]["value"] == 68.2
    assert examples["equipment_metrics"]["status"]["changed_at"] == "2025-05-24T12:58:30Z"
    assert examples["qc_result"]["inspection_items"][1] == {"item_id": "SCRATCH", "value": 2, "unit": "count"}
    assert examples["energy_usage"]["equipment_id"] == "LINE_C_PRESS_003" and examples["energy_usage"]["usage"] == 12.7
    assert examples["robot_status"]["error_code"] == "E405"
    assert examples["robot_status"]["task_id"] == "TSK_20250524_018"
    assert examples["environmental_readings"]["readings"][1]["value"] == 1100
    assert examples["device_status"]["ip_address_hash"] == "0x7e239a..."
    assert examples["device_status"]["error_code"] is None
    for name, record in examples.items():
        assert fastavro.validation.validate(record, DOMAINS[name].parsed_schema, raise_errors=True)
    examples["robot_status"]["battery_level"] = -1.0  # a copy: the next call is unaffected
    assert canonical_examples()["robot_status"]["battery_level"] == 23.5


def test_canonical_examples_match_the_seed_file_when_present() -> None:
    seed_dir = Path(__file__).resolve().parents[3] / "shared" / "seeds"
    files = sorted(seed_dir.glob("001_*.txt")) if seed_dir.is_dir() else []
    if not files:
        pytest.skip("seed document not available")
    text = re.sub(r"//[^\n]*", "", files[0].read_text(encoding="utf-8"))
    decoder, parsed, pos = json.JSONDecoder(), [], 0
    while (start := text.find("\n{\n", pos)) >= 0:
        message, pos = decoder.raw_decode(text, start + 1)
        parsed.append(message)
    assert parsed == list(canonical_examples().values())


# -- command line and pacing ----------------------------------------------------------------------


def test_command_line_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", "broker:9092")
    args = build_parser().parse_args(["--rate", "500", "--count", "10", "--domains", "qc_result,robot_status",
                                      "--formats", "json", "--fault", "duplicate=0.1", "--seed", "3"])  # fmt: skip
    assert args.brokers == "broker:9092" and args.rate == 500 and args.count == 10
    assert args.domains == ["qc_result", "robot_status"] and args.formats == ["json"]
    assert args.fault == [("duplicate", 0.1)] and args.seed == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--rate", "5", "--max-speed"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--domains", "nope"])


def test_command_line_takes_the_collectors_security_settings() -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_USERNAME": "gen", "KAFKA_SASL_PASSWORD": "s3cret"}  # fmt: skip
    config = client_config("broker:9093", env)
    assert config == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "gen",
        "sasl.password": "s3cret",
        "ssl.endpoint.identification.algorithm": "https",
    }
    assert client_config("broker:9092", {}) == {"bootstrap.servers": "broker:9092", "security.protocol": "PLAINTEXT"}


def test_command_line_stops_on_incomplete_security_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "gen")
    with pytest.raises(SystemExit) as stopped:
        main(["--brokers", "broker:9092", "--count", "1"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "KAFKA_SASL_MECHANISM" in error and "KAFKA_SECURITY_PROTOCOL=SASL_SSL" in error


def test_token_bucket_paces_to_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(100.0, burst=1.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(201):
        bucket.acquire()
    assert now[0] == pytest.approx(2.0, rel=0.01)


# -- real broker ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_produce_to_a_real_broker_and_consume_back() -> None:
    from confluent_kafka import Consumer, TopicPartition

    from embedded.servers import TansuBroker
    from trafficgen import create_topics, produce

    messages = generate(300, seed=17, fault_rates=spread_rate(0.1))
    with TansuBroker() as broker:
        created = create_topics(broker.bootstrap)
        assert sorted(created) == sorted(d.topic.name for d in DOMAINS.values())
        assert produce(messages, broker.bootstrap, headers=True) == 300
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "trafficgen-test",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        # Assigning every partition skips the consumer-group join, which takes seconds.
        consumer.assign(
            [TopicPartition(d.topic.name, p, 0) for d in DOMAINS.values() for p in range(d.topic.partitions)]
        )
        got: list[tuple[str | None, Any, Any]] = []
        ids: set[Any] = set()
        deadline = time.monotonic() + 60
        try:
            while len(got) < 300 and time.monotonic() < deadline:
                record = consumer.poll(0.5)
                if record is None or record.error():
                    continue
                got.append((record.topic(), record.key(), record.value()))
                headers: Any = record.headers() or []  # a list of (name, value) pairs
                ids.update(v for k, v in headers if k == MSG_ID_HEADER)
        finally:
            consumer.close()
    assert Counter(got) == Counter((m.topic, m.key, m.value) for m in messages)
    assert ids == {m.msg_id.encode() for m in messages}


@pytest.mark.slow
def test_command_produces_with_the_configured_client(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedded.servers import TansuBroker
    from tests.support.kafka import read_topic

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    topic = DOMAINS["robot_status"].topic
    with TansuBroker() as broker:
        status = main(["--brokers", broker.bootstrap, "--count", "40", "--domains", "robot_status",
                       "--formats", "json", "--seed", "5", "--create-topics"])  # fmt: skip
        records = read_topic(broker.bootstrap, topic.name, topic.partitions, expect=40)
    out = capsys.readouterr().out
    assert status == 0
    assert f"created topics: {topic.name}" in out and "done: 40 messages delivered" in out
    expected = generate(40, seed=5, domains=["robot_status"], formats=["json"])
    assert sorted(r.key() for r in records) == sorted(m.key for m in expected)
    assert all(orjson.loads(r.value())["robot_id"] for r in records)
