"""device_status never lets a raw IP address through decoding, whichever text field carries it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from domains import DOMAINS
from domains.base import SCHEMA_ERROR
from domains.decode import BatchDecoder, MessageBatch
from trafficgen.examples import canonical_example
from trafficgen.messages import ip_address_hash

DOMAIN = DOMAINS["device_status"]


def _decode(record: dict[str, object]) -> tuple[int, list[tuple[str, str]]]:
    batch = MessageBatch(DOMAIN.topic.name, [orjson.dumps(record)], [0], [0], [0])
    result = BatchDecoder(DOMAIN).decode(batch, datetime(2025, 5, 24, tzinfo=UTC))
    return result.rows.height, [(r.reason, r.detail) for r in result.rejected]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ip_address_hash", "192.168.0.17"),
        ("ip_address_hash", "10.0.0.1:8080"),
        ("ip_address_hash", "::ffff:10.1.2.3"),
        ("ip_address_hash", "fe80::1ff:fe23:4567:890a"),
        ("ip_address_hash", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
        ("ip_address_hash", "1:2:3"),
        ("device_id", "10.20.30.40"),
        ("location", "rack 3, gateway 172.16.0.9"),
        ("error_code", "ECONNREFUSED [2001:db8::17]:502"),
        ("device_type", "10.0.0.5"),
    ],
)
def test_a_raw_ip_in_any_text_field_rejects_the_message_without_echoing_it(field: str, value: str) -> None:
    record = canonical_example("device_status")
    record[field] = value
    rows, rejected = _decode(record)
    assert rows == 0 and len(rejected) == 1
    reason, detail = rejected[0]
    assert reason == SCHEMA_ERROR and "raw IP" in detail and field in detail
    assert value not in detail  # the DLQ header names the field, never the address


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ip_address_hash", "0x7e239a..."),
        ("ip_address_hash", ip_address_hash("SENSOR_ENV_001")),
        ("ip_address_hash", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ("device_id", "GW_LINE_A_01"),
        ("location", "line_a_zone_1"),
        ("error_code", "NET_TIMEOUT"),
        ("error_code", "FW 1.2.3 fault"),
    ],
)
def test_hashes_and_ordinary_values_are_stored(field: str, value: str) -> None:
    record = canonical_example("device_status")
    record[field] = value
    assert _decode(record) == (1, [])
