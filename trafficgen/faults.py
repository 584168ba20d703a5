"""Fault injection: every defect a message can carry by itself, and what the pipeline must make of it.

:data:`EXPECTED_REASON` is the contract with the decoder: for each fault kind, the domains it
applies to and the DLQ reason the decoder must give (``None``: the message decodes and is stored,
and :data:`EXPECTED_FLAG` names the flag the anomaly engine adds later). A kind that is not listed
for a domain does not apply there, and the generator sends that message without a fault.

Record faults mutate a deep copy of a clean message; byte faults replace its encoding.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from domains import DOMAINS, Domain
from domains.avro import decode_one
from domains.base import INVALID_ENUM, SCHEMA_ERROR, UNIT_MISMATCH, UNIT_VIOLATION
from domains.energy_usage import ENERGY_UNITS
from domains.environmental_readings import SENSOR_UNITS
from domains.qc_result import ITEM_UNITS
from trafficgen.messages import iso, parse_iso

MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_ENUM = "bad_enum"
WRONG_UNIT = "wrong_unit"
GARBAGE_BYTES = "garbage_bytes"
TRUNCATED_AVRO = "truncated_avro"
LATE_ARRIVAL = "late_arrival"
DUPLICATE = "duplicate"

FAULT_KINDS = (
    MISSING_FIELD,
    WRONG_TYPE,
    BAD_ENUM,
    WRONG_UNIT,
    GARBAGE_BYTES,
    TRUNCATED_AVRO,
    LATE_ARRIVAL,
    DUPLICATE,
)

_ALL = tuple(DOMAINS)


def _each(reason: str | None, domains: Sequence[str] = _ALL) -> dict[str, str | None]:
    return dict.fromkeys(domains, reason)


# fault kind → {domain: expected DLQ reason (None = decodes fine)}; absent domain = not applicable.
EXPECTED_REASON: dict[str, dict[str, str | None]] = {
    MISSING_FIELD: _each(SCHEMA_ERROR),
    WRONG_TYPE: _each(SCHEMA_ERROR),
    BAD_ENUM: {"robot_status": INVALID_ENUM, "device_status": INVALID_ENUM, "equipment_metrics": SCHEMA_ERROR},
    WRONG_UNIT: {
        "qc_result": UNIT_MISMATCH,
        "energy_usage": UNIT_MISMATCH,
        "environmental_readings": UNIT_MISMATCH,
        "robot_status": UNIT_VIOLATION,
    },
    GARBAGE_BYTES: _each(SCHEMA_ERROR),
    TRUNCATED_AVRO: _each(SCHEMA_ERROR),
    LATE_ARRIVAL: _each(None),
    DUPLICATE: _each(None),
}
EXPECTED_FLAG: dict[str, str] = {LATE_ARRIVAL: "late_arrival", DUPLICATE: "duplicate"}
# Kinds whose message must be JSON: an Avro serializer cannot write a missing field or a wrong type.
JSON_ONLY = frozenset({MISSING_FIELD, WRONG_TYPE})

LATE_MIN = timedelta(minutes=11)
LATE_MAX = timedelta(minutes=60)


def applies(kind: str, domain: str) -> bool:
    """True if fault ``kind`` can be injected into a message of ``domain``."""
    return domain in EXPECTED_REASON[kind]


def expected_reason(kind: str, domain: str) -> str | None:
    """The DLQ reason the decoder must give a ``domain`` message with fault ``kind``."""
    return EXPECTED_REASON[kind][domain]


def validate_rates(rates: dict[str, float]) -> None:
    """Raise ValueError unless ``rates`` maps known kinds to probabilities summing to at most 1."""
    unknown = set(rates) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; expected some of {', '.join(FAULT_KINDS)}")
    if any(not 0.0 <= r <= 1.0 for r in rates.values()):
        raise ValueError(f"fault rates must be within 0..1: {rates}")
    if sum(rates.values()) > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {sum(rates.values()):.3f} > 1")


def spread_rate(total: float) -> dict[str, float]:
    """``total`` fault probability spread evenly over all kinds."""
    return dict.fromkeys(FAULT_KINDS, total / len(FAULT_KINDS))


# -- record faults --------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def _field_paths(domain: Domain, record: dict[str, Any], want: set[str] | None, rng: random.Random) -> list[Path]:
    """Paths to the fields of ``record`` whose Avro type is in ``want`` (None: every required one).

    Nullable fields are skipped (they may be absent). An array contributes itself and the fields
    of one element picked at random, so long arrays do not crowd out the other fields.
    """
    paths: list[Path] = []

    def visit(fields: list[dict[str, Any]], prefix: Path, value: dict[str, Any]) -> None:
        for f in fields:
            ftype, name = f["type"], f["name"]
            if isinstance(ftype, list):  # ["null", T]: optional
                continue
            kind = ftype if isinstance(ftype, str) else ftype["type"]
            path = (*prefix, name)
            if kind == "record":
                if want is None:
                    paths.append(path)
                visit(ftype["fields"], path, value[name])
            elif kind == "array":
                if want is None:
                    paths.append(path)
                if value[name]:
                    i = rng.randrange(len(value[name]))
                    visit(ftype["items"]["fields"], (*path, i), value[name][i])
            elif want is None or kind in want:
                paths.append(path)

    visit(domain.schema["fields"], (), record)
    return paths


def _parent(record: dict[str, Any], path: Path) -> Any:
    node: Any = record
    for part in path[:-1]:
        node = node[part]
    return node


def drop_required_field(domain: Domain, record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of ``record`` without one required field (top-level, in a struct or in an element)."""
    out = copy.deepcopy(record)
    path = rng.choice(_field_paths(domain, out, None, rng))
    del _parent(out, path)[path[-1]]
    return out


_NOT_A_NUMBER = ("abc", "n/a", "slow", "unknown", "high")
_NOT_A_BOOLEAN = ("maybe", "unknown", "ok")


def wrong_type(domain: Domain, record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of ``record`` with one number or boolean field holding a non-numeric string."""
    out = copy.deepcopy(record)
    path = rng.choice(_field_paths(domain, out, {"double", "float", "int", "long", "boolean"}, rng))
    parent = _parent(out, path)
    is_bool = isinstance(parent[path[-1]], bool)
    parent[path[-1]] = rng.choice(_NOT_A_BOOLEAN if is_bool else _NOT_A_NUMBER)
    return out


_BAD_ROBOT_STATES = ("flying", "sleeping", "teleporting", "dancing")
_BAD_DEVICE_TYPES = ("toaster", "fridge", "coffee_machine", "smartwatch")
_BAD_QUALITIES = ("excellent", "perfect", "great")


def bad_enum(domain: Domain, record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of ``record`` with one enumerated field outside its allowed values."""
    out = copy.deepcopy(record)
    if domain.name == "robot_status":
        out["status"][rng.choice(("current", "previous"))] = rng.choice(_BAD_ROBOT_STATES)
    elif domain.name == "device_status":
        out["device_type"] = rng.choice(_BAD_DEVICE_TYPES)
    elif domain.name == "equipment_metrics":
        rng.choice(out["metrics"])["quality"] = rng.choice(_BAD_QUALITIES)
    else:
        raise ValueError(f"bad_enum does not apply to {domain.name}")
    return out


# Plausible wrong units: (unit, factor applied to the value so the number still looks real).
_QC_WRONG_UNITS: dict[str, tuple[tuple[str, float], ...]] = {
    "mm": (("cm", 0.1), ("inch", 1 / 25.4), ("m", 0.001)),
    "g": (("kg", 0.001), ("lb", 1 / 453.6), ("oz", 1 / 28.35)),
    "count": (("pcs", 1.0), ("%", 1.0)),
    "dE": (("%", 1.0),),
    "um": (("mm", 0.001), ("nm", 1000.0)),
}
_ENV_WRONG_UNITS: dict[str, tuple[str, Any]] = {
    "temperature": ("F", lambda c: c * 9 / 5 + 32),
    "humidity": ("ratio", lambda v: v / 100),
    "co2": ("ppb", lambda v: v * 1000),
    "pm25": ("mg/m3", lambda v: v / 1000),
    "noise": ("B", lambda v: v / 10),
    "pressure": ("kPa", lambda v: v / 10),
}
assert set(_ENV_WRONG_UNITS) == set(SENSOR_UNITS)
assert {u for units in ITEM_UNITS.values() for u in units} <= set(_QC_WRONG_UNITS)


def wrong_unit(domain: Domain, record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of ``record`` with a unit its kind is never reported in, or a battery beyond 0-100 %."""
    out = copy.deepcopy(record)
    if domain.name == "qc_result":
        item = rng.choice(out["inspection_items"])
        unit, factor = rng.choice(_QC_WRONG_UNITS[item["unit"]])
        item["unit"], item["value"] = unit, round(item["value"] * factor, 4)
        assert unit not in ITEM_UNITS.get(item["item_id"], ())
    elif domain.name == "energy_usage":
        allowed = ENERGY_UNITS[out["energy_type"]]
        others = sorted({u for units in ENERGY_UNITS.values() for u in units} - set(allowed))
        out["unit"] = rng.choice(others)
    elif domain.name == "environmental_readings":
        reading = rng.choice(out["readings"])
        if rng.random() < 0.5:  # the seed's example: a temperature in Fahrenheit
            temperatures = [r for r in out["readings"] if r["sensor_type"] == "temperature"]
            reading = temperatures[0] if temperatures else reading
        unit, convert = _ENV_WRONG_UNITS[reading["sensor_type"]]
        reading["unit"], reading["value"] = unit, round(convert(reading["value"]), 4)
    elif domain.name == "robot_status":
        high = rng.random() < 0.5
        out["battery_level"] = round(rng.uniform(100.5, 180.0) if high else rng.uniform(-25.0, -0.5), 1)
    else:
        raise ValueError(f"wrong_unit does not apply to {domain.name}")
    return out


def late_arrival(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of ``record`` ingested 11-60 minutes after its event time."""
    out = copy.deepcopy(record)
    delay = LATE_MIN + rng.random() * (LATE_MAX - LATE_MIN - timedelta(milliseconds=1))
    out["ingestion_timestamp"] = iso(parse_iso(out["timestamp"]) + delay + timedelta(milliseconds=1))
    return out


def mutate(kind: str, domain: Domain, record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Apply record fault ``kind`` to a copy of ``record``."""
    if kind == MISSING_FIELD:
        return drop_required_field(domain, record, rng)
    if kind == WRONG_TYPE:
        return wrong_type(domain, record, rng)
    if kind == BAD_ENUM:
        return bad_enum(domain, record, rng)
    if kind == WRONG_UNIT:
        return wrong_unit(domain, record, rng)
    if kind == LATE_ARRIVAL:
        return late_arrival(record, rng)
    raise ValueError(f"{kind} is not a record fault")


RECORD_FAULTS = frozenset({MISSING_FIELD, WRONG_TYPE, BAD_ENUM, WRONG_UNIT, LATE_ARRIVAL})

# -- byte faults ----------------------------------------------------------------------------------


def _decodes(domain: Domain, value: bytes) -> bool:
    """True if ``value`` reads as a message of ``domain`` in any wire format."""
    try:
        if isinstance(orjson.loads(value), dict):
            return True
    except orjson.JSONDecodeError:
        pass
    for payload in (value, value[5:] if value[:1] == b"\x00" else None):
        if payload is None:
            continue
        try:
            decode_one(payload, domain.parsed_schema)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not decodable", which is the point
            continue
    return False


def garbage_bytes(domain: Domain, rng: random.Random) -> bytes:
    """1-200 random bytes that do not decode as a message of ``domain`` in any format."""
    while True:
        value = rng.randbytes(rng.randint(1, 200))
        if not _decodes(domain, value):
            return value


def truncate(domain: Domain, value: bytes, rng: random.Random, header: int = 0) -> bytes:
    """``value`` (a valid Avro encoding after ``header`` bytes) cut short by 1..len-1 bytes."""
    while True:
        cut = rng.randint(1, len(value) - 1)
        short = value[: len(value) - cut]
        if len(short) <= header:
            return short
        try:
            decode_one(short[header:], domain.parsed_schema)
        except Exception:  # noqa: BLE001 - truncated as intended
            return short
