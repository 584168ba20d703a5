"""A corpus of malformed and hostile messages, each with the outcome the collector must give it.

Used by ``tests/security``: every entry is produced to its domain's topic, the collector runs over
them, and each message must end up exactly once either as rows in the Parquet files or as one
record on the domain's DLQ topic with a ``dlq.reason`` header (:class:`Expect` says which).

Clean records are the seed examples (:mod:`trafficgen.examples`) moved to a unique event time per
entry, so the anomaly engine's duplicate rule never mistakes two corpus entries for each other.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from domains import DOMAINS
from domains.avro import encode_one, zigzag_varint
from domains.base import INVALID_ENUM, SCHEMA_ERROR, UNIT_VIOLATION
from trafficgen.encoding import confluent_frame
from trafficgen.examples import canonical_example
from trafficgen.faults import truncate
from trafficgen.messages import iso

MIB = 1024 * 1024
# The test producer's limit: above librdkafka's 1 MB default so that 10 MB messages can be sent.
PRODUCER_MAX_BYTES = 32 * MIB

# Raw IP addresses that corpus entries smuggle into device_status fields; none may ever be stored.
RAW_IPS = (
    "192.168.10.20",
    "10.20.30.40",
    "172.16.5.4",
    "10.99.0.7",
    "10.11.12.13",
    "fe80::1ff:fe23:4567:890a",
    "2001:db8::17",
    "10.0.0.8",
)
# Entity ids and locations that try to escape the bucket's domain folders.
HOSTILE_IDS = (
    "../../etc/passwd",
    "/etc/shadow",
    "..\\..\\windows\\system32",
    "a/../../../b",
    "x\x00y/../z",
    "line_a/../../minute/20250101_0000_evil.parquet",
    "%2e%2e%2f%2e%2e%2fetc",
    "~root/.ssh/id_rsa",
)


@dataclass(frozen=True)
class Expect:
    """What must become of a message: rejected with ``reason``, stored as ``rows`` rows, or either.

    ``reason`` set: exactly one DLQ record with that reason and no rows. ``rows`` set: that many rows
    and no rejecting DLQ record (flag copies from the anomaly engine are allowed). Neither set
    (bit flips, whose damage is random): exactly one of the two, never both, never neither.
    """

    reason: str | None = None
    rows: int | None = None

    def describe(self) -> str:
        """Short text for tables and assertion messages."""
        if self.reason:
            return f"DLQ {self.reason}"
        if self.rows is not None:
            return f"stored ({self.rows} row{'s' if self.rows != 1 else ''})"
        return "DLQ schema_error or stored, exactly one"


def dlq(reason: str = SCHEMA_ERROR) -> Expect:
    """The message must be rejected to its DLQ topic with ``reason``."""
    return Expect(reason=reason)


def stored(rows: int = 1) -> Expect:
    """The message must be stored as ``rows`` rows."""
    return Expect(rows=rows)


EITHER = Expect()


@dataclass(frozen=True)
class BadInput:
    """One corpus message: what kind of damage it carries, its bytes and its expected outcome."""

    kind: str
    domain: str
    key: bytes | None
    value: bytes | None
    expect: Expect

    @property
    def topic(self) -> str:
        """The domain's topic."""
        return DOMAINS[self.domain].topic.name


@dataclass(frozen=True)
class Placed:
    """A corpus entry and where the broker put it."""

    entry: BadInput
    partition: int
    offset: int

    @property
    def position(self) -> tuple[str, int, int]:
        """(topic, partition, offset)."""
        return (self.entry.topic, self.partition, self.offset)


class _Records:
    """Clean seed-example records, each at its own event time (start + n seconds)."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.n = 0

    def __call__(self, domain: str) -> dict[str, Any]:
        self.n += 1
        at = self.start + timedelta(seconds=self.n)
        record = canonical_example(domain)
        record["timestamp"] = iso(at)
        record["ingestion_timestamp"] = iso(at + timedelta(seconds=2))
        status = record.get("status")
        if isinstance(status, dict):
            for field in ("changed_at", "last_success_at"):
                if field in status:
                    status[field] = iso(at - timedelta(seconds=30))
        return record


def avro(domain: str, record: dict[str, Any]) -> bytes:
    """Schemaless Avro of ``record``."""
    return encode_one(record, DOMAINS[domain].parsed_schema)


def confluent(domain: str, record: dict[str, Any], schema_id: int | None = None) -> bytes:
    """Confluent-framed Avro of ``record`` (the domain's id unless ``schema_id`` is given)."""
    return confluent_frame(DOMAINS[domain].schema_id if schema_id is None else schema_id, avro(domain, record))


def js(record: Any) -> bytes:
    """Compact JSON."""
    return orjson.dumps(record)


def _key(domain: str, record: dict[str, Any]) -> bytes:
    return str(record[DOMAINS[domain].entity_key]).encode()


def _bit_flips(value: bytes, rng: random.Random, flips: int) -> bytes:
    out = bytearray(value)
    for _ in range(flips):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _avro_array_bomb(domain: str, record: dict[str, Any]) -> bytes:
    """Valid leading fields, then an array that claims 2^62 elements and holds none."""
    ts, location = record["timestamp"].encode(), record["location"].encode()
    return zigzag_varint(len(ts)) + ts + zigzag_varint(len(location)) + location + zigzag_varint(2**62)


def _with(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``record`` with the field at a dotted path (``status.current``, ``metrics.0.value``) set."""
    node: Any = record
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    node[parts[-1]] = value
    return record


def _without(record: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = record
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[parts[-1]]
    return record


def build_corpus(start: datetime, seed: int = 8, huge_array: int = 25_000, big_bytes: int = 10 * MIB) -> list[BadInput]:
    """The corpus: every kind of damage the collector must survive, with its expected outcome.

    ``huge_array`` is the element count of the huge-array entries (kept so that their Avro stays
    under 1 MB: see :func:`oversized_dlq_records` for what happens above); ``big_bytes`` the size of
    the big message that must be stored.
    """
    rng = random.Random(seed)
    rec = _Records(start)
    out: list[BadInput] = []

    def add(kind: str, domain: str, value: bytes | None, expect: Expect, key: bytes | None = b"k") -> None:
        out.append(BadInput(kind, domain, key, value, expect))

    # -- Avro damage -----------------------------------------------------------------------------
    for domain in DOMAINS:
        r = rec(domain)
        add("avro: truncated", domain, truncate(DOMAINS[domain], avro(domain, r), rng), dlq(), _key(domain, r))
    for domain in ("energy_usage", "robot_status"):
        r = rec(domain)
        framed = truncate(DOMAINS[domain], confluent(domain, r), rng, header=5)
        add("avro (Confluent): truncated", domain, framed, dlq(), _key(domain, r))
    for i, domain in enumerate(list(DOMAINS) * 2):
        r = rec(domain)
        add("avro: bit-flipped", domain, _bit_flips(avro(domain, r), rng, 1 + i % 3), EITHER, _key(domain, r))
    r = rec("qc_result")
    add("avro: trailing bytes after the record", "qc_result", avro("qc_result", r) + b"\x00\x02", dlq())
    for magic in (1, 0x7F, 0xFF):
        r = rec("energy_usage")
        add("wrong magic byte", "energy_usage", bytes([magic]) + confluent("energy_usage", r)[1:], dlq())
    r = rec("energy_usage")
    add("unknown schema id, payload of the domain's schema", "energy_usage", confluent("energy_usage", r, 9999),
        stored(1))  # fmt: skip
    r = rec("robot_status")
    add("unknown schema id, payload of another schema", "energy_usage", confluent("robot_status", r, 9999), dlq())
    add("Confluent frame shorter than its header", "energy_usage", b"\x00\x00\x01", dlq())
    r = rec("environmental_readings")
    add("avro: array claiming 2^62 elements", "environmental_readings", _avro_array_bomb("environmental_readings", r),
        dlq())  # fmt: skip
    add("avro: string claiming 2^60 bytes", "robot_status", zigzag_varint(2**60) + b"2025", dlq())
    r = rec("energy_usage")
    add("avro: invalid UTF-8 in a string", "energy_usage",
        avro("energy_usage", r).replace(b"LINE_C", b"LIN\xff\xfe\xfd"), dlq())  # fmt: skip

    # -- JSON damage -----------------------------------------------------------------------------
    r = rec("energy_usage")
    add("json: invalid UTF-8", "energy_usage", js(r).replace(b"LINE_C", b"LIN\xff\xfe\xfd"), dlq())
    for raw in (b" [1, 2, 3]", b' "just a string"', b" 42", b" null", b" true", b"[1,2]", b"42"):
        add("json: not an object", "energy_usage", raw, dlq())
    add("json: truncated", "energy_usage", js(rec("energy_usage"))[:40], dlq())
    add("json: nested 100,000 deep", "energy_usage", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, dlq())
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        add("json: NaN / infinity as a number", "energy_usage",
            js(rec("energy_usage")).replace(b'"usage":12.7', b'"usage":' + literal), dlq())  # fmt: skip
    for domain, path, text in (
        ("equipment_metrics", "metrics.0.value", "68.2"),
        ("energy_usage", "usage", "12.7"),
        ("robot_status", "battery_level", "85"),
        ("device_status", "status.latency_ms", "43"),
        ("device_status", "status.ping_success", "true"),
    ):
        add("json: number (or boolean) as a string", domain, js(_with(rec(domain), path, text)), dlq())
    for domain, path in (
        ("equipment_metrics", "equipment_id"),
        ("equipment_metrics", "metrics.1.sensor_type"),
        ("qc_result", "inspection_items.0.unit"),
        ("robot_status", "status"),
        ("device_status", "ip_address_hash"),
    ):
        add("json: missing required field", domain, js(_without(rec(domain), path)), dlq())
    add("json: empty object", "device_status", b"{}", dlq())
    add("json: nullable field absent (error_code)", "device_status", js(_without(rec("device_status"), "error_code")),
        stored(1))  # fmt: skip
    add("json: unknown extra fields", "robot_status", js({**rec("robot_status"), "extra": {"deep": [1, 2]}}), stored(1))
    add("json: empty array", "equipment_metrics", js(_with(rec("equipment_metrics"), "metrics", [])), dlq())
    add("json: timestamp not ISO-8601", "qc_result", js(_with(rec("qc_result"), "timestamp", "yesterday")), dlq())

    # -- values: NaN / infinity in Avro, unknown enums ----------------------------------------------
    for value in (float("nan"), float("inf"), float("-inf")):
        add("avro: NaN / infinity battery_level", "robot_status",
            avro("robot_status", _with(rec("robot_status"), "battery_level", value)), dlq(UNIT_VIOLATION))  # fmt: skip
        add("avro: NaN / infinity measurement", "energy_usage",
            avro("energy_usage", _with(rec("energy_usage"), "usage", value)), dlq())  # fmt: skip
    add("unknown enum: robot status", "robot_status",
        avro("robot_status", _with(rec("robot_status"), "status.current", "flying")), dlq(INVALID_ENUM))  # fmt: skip
    add("unknown enum: device_type", "device_status",
        js(_with(rec("device_status"), "device_type", "toaster")), dlq(INVALID_ENUM))  # fmt: skip
    add("unknown enum: sensor quality", "equipment_metrics",
        js(_with(rec("equipment_metrics"), "metrics.0.quality", "excellent")), dlq())  # fmt: skip

    # -- sizes -----------------------------------------------------------------------------------
    add("empty value", "qc_result", b"", dlq())
    add("null value (tombstone)", "qc_result", None, dlq())
    big = _with(rec("robot_status"), "task_id", "T" * big_bytes)
    add(f"{big_bytes // MIB} MB message (valid)", "robot_status", js(big), stored(1))
    array = avro("environmental_readings", _huge_readings(rec("environmental_readings"), huge_array))
    assert len(array) < 1_000_000, "a flagged copy of it must fit the DLQ producer's 1 MB limit"
    add(f"huge array ({huge_array:,} elements, Avro)", "environmental_readings", array, stored(huge_array))

    # -- keys and hostile ids ----------------------------------------------------------------------
    add("no Kafka key", "robot_status", avro("robot_status", rec("robot_status")), stored(1), key=None)
    for i, hostile in enumerate(HOSTILE_IDS):
        domain = ("equipment_metrics", "robot_status", "device_status", "energy_usage")[i % 4]
        r = rec(domain)
        r[DOMAINS[domain].entity_key] = hostile
        r["location"] = hostile
        add("hostile entity id / location (path traversal)", domain, js(r), stored(_rows(domain, r)), hostile.encode())

    # -- raw IP addresses in device_status ----------------------------------------------------------
    for path, text in (
        ("ip_address_hash", RAW_IPS[0]),
        ("ip_address_hash", RAW_IPS[5]),
        ("ip_address_hash", f"::ffff:{RAW_IPS[1]}"),
        ("ip_address_hash", f"{RAW_IPS[2]}:8080"),
        ("device_id", RAW_IPS[3]),
        ("location", f"rack 3 gateway {RAW_IPS[4]}"),
        ("error_code", f"ECONNREFUSED [{RAW_IPS[6]}]:502"),
    ):
        add("raw IP address in a device_status field", "device_status", js(_with(rec("device_status"), path, text)),
            dlq())  # fmt: skip
    leaky = {**rec("device_status"), "ip_address": RAW_IPS[7]}
    add("raw IP address in an extra device_status field", "device_status", js(leaky), stored(1))
    return out


def _huge_readings(record: dict[str, Any], n: int) -> dict[str, Any]:
    first = record["readings"][0]
    record["readings"] = [{**first, "sensor_id": f"S{i}"} for i in range(n)]
    return record


def _rows(domain: str, record: dict[str, Any]) -> int:
    explode = DOMAINS[domain].explode
    return len(record[explode]) if explode else 1


def oversized_dlq_records(start: datetime, size: int = 10 * MIB, huge_array: int = 100_000) -> list[BadInput]:
    """Messages whose DLQ record exceeds librdkafka's 1 MB default: two rejected, one stored and flagged.

    The huge array has no dimension-table threshold, so the anomaly engine copies it to the DLQ
    as ``threshold_missing`` while its rows are stored.
    """
    rng = random.Random(size)
    rec = _Records(start)
    garbage = b"\x05" + rng.randbytes(size - 1)
    record = _with(rec("robot_status"), "status.current", "flying")
    record["task_id"] = "T" * size
    array = _huge_readings(rec("environmental_readings"), huge_array)
    return [
        BadInput(f"{size // MIB} MB of random bytes", "energy_usage", b"big", garbage, dlq()),
        BadInput(f"{size // MIB} MB JSON with an unknown enum", "robot_status", b"big", js(record), dlq(INVALID_ENUM)),
        BadInput(f"huge array ({huge_array:,} elements) flagged by the engine", "environmental_readings", b"big",
                 avro("environmental_readings", array), stored(huge_array)),
    ]


def produce_corpus(bootstrap: str, entries: Sequence[BadInput], timeout: float = 60.0) -> list[Placed]:
    """Produce every entry (in order) and return where each landed."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.max.bytes": PRODUCER_MAX_BYTES}
    )
    placed: list[Placed | None] = [None] * len(entries)
    errors: list[str] = []

    def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(f"{entries[index].kind}: {err}")
            else:
                placed[index] = Placed(entries[index], msg.partition(), msg.offset())  # type: ignore[arg-type]

        return callback

    for i, entry in enumerate(entries):
        producer.produce(entry.topic, key=entry.key, value=entry.value, on_delivery=on_delivery(i))
        producer.poll(0)
    deadline = time.monotonic() + timeout
    while producer.flush(1.0) and time.monotonic() < deadline:
        pass
    assert not errors and all(placed), f"produce failed: {errors[:3]}"
    return [p for p in placed if p is not None]


def header_map(message: Message) -> dict[str, str]:
    """A DLQ record's headers as text."""
    out: dict[str, str] = {}
    for header in message.headers() or []:
        key, value = header[0], header[1]
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
    return out
