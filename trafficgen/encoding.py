"""Wire encodings of generated messages: JSON, schemaless Avro and Confluent-framed Avro.

``"json"`` is the record as compact JSON (orjson); ``"avro"`` is the record as schemaless Avro with
the domain's schema; ``"avro-confluent"`` is magic byte 0, the 4-byte big-endian schema id
(``Domain.schema_id``) and the schemaless Avro. The Kafka key is the entity id as UTF-8.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from domains import Domain
from domains.avro import decode_one, encode_one

JSON = "json"
AVRO = "avro"
AVRO_CONFLUENT = "avro-confluent"
FORMATS = (JSON, AVRO, AVRO_CONFLUENT)
AVRO_FORMATS = (AVRO, AVRO_CONFLUENT)

_MAGIC = 0
_HEADER = struct.Struct(">bI")


def confluent_frame(schema_id: int, payload: bytes) -> bytes:
    """Prefix ``payload`` with the Confluent wire header (magic byte 0 + schema id)."""
    return _HEADER.pack(_MAGIC, schema_id) + payload


def encode_value(domain: Domain, record: dict[str, Any], fmt: str) -> bytes:
    """Encode ``record`` of ``domain`` in wire format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == JSON:
        return orjson.dumps(record)
    if fmt == AVRO:
        return encode_one(record, domain.parsed_schema)
    if fmt == AVRO_CONFLUENT:
        return confluent_frame(domain.schema_id, encode_one(record, domain.parsed_schema))
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def decode_value(domain: Domain, value: bytes, fmt: str) -> dict[str, Any]:
    """Decode a value written by :func:`encode_value` (strict: every byte must be used)."""
    if fmt == JSON:
        record = orjson.loads(value)
        if not isinstance(record, dict):
            raise ValueError("JSON value is not an object")
        return record
    if fmt == AVRO:
        return decode_one(value, domain.parsed_schema)
    if fmt == AVRO_CONFLUENT:
        if len(value) < _HEADER.size:
            raise ValueError("Confluent frame shorter than 5 bytes")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != _MAGIC or schema_id != domain.schema_id:
            raise ValueError(f"unexpected Confluent header: magic {magic}, schema id {schema_id}")
        return decode_one(value[_HEADER.size :], domain.parsed_schema)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def encode_key(domain: Domain, record: dict[str, Any]) -> bytes:
    """The Kafka key of ``record``: its entity id (``Domain.entity_key`` field) as UTF-8."""
    return str(record[domain.entity_key]).encode()
