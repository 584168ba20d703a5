"""Decode benchmark: the domain layer next to a naive per-message baseline and the raw decode ceiling.

For robot_status and equipment_metrics, in Avro and JSON, on the same batch of generated messages:

- ``layer``: :class:`domains.decode.BatchDecoder` (decode + validate + flatten + provenance);
- ``naive``: per message ``fastavro.schemaless_reader`` / ``json.loads`` → list of dicts → flatten in
  Python → ``polars.DataFrame`` (what a straightforward consumer does);
- ``ceiling``: ``polars.read_avro`` over the batch as one container block / ``polars.read_ndjson``,
  no validation, no flattening; wrapping the batch (container / lines) is part of it;
- ``read only`` (last columns, for reference): the ceiling's reader alone, on a container or NDJSON
  blob built beforehand -- the native decode without any Python around it.

Run: ``python -m bench.bench_decode [--messages 300000] [--repeat 5]``. Best of ``repeat`` runs (the
naive baseline: of half as many), the runs of the three cases alternating.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import fastavro
import polars as pl

from domains import DOMAINS
from domains.avro import zigzag_varint
from domains.base import Domain
from domains.decode import BatchDecoder, MessageBatch
from trafficgen import TrafficGenerator


def _messages(domain: str, n: int, fmt: str) -> list[bytes]:
    generator = TrafficGenerator(seed=7, domains=[domain], formats=[fmt])
    return [m.value for m in generator.generate(n)]


def _plain_container(domain: Domain, values: list[bytes]) -> bytes:
    """An Avro container with the records as they are (no numbering): the ceiling's input."""
    header = bytearray(b"Obj\x01")
    meta = {b"avro.schema": domain.schema_json.encode(), b"avro.codec": b"null"}

    header += zigzag_varint(len(meta))
    for k, v in meta.items():
        header += zigzag_varint(len(k)) + k + zigzag_varint(len(v)) + v
    sync = b"0123456789abcdef"
    header += zigzag_varint(0) + sync
    size = sum(map(len, values))
    return b"".join([header, zigzag_varint(len(values)), zigzag_varint(size), *values, sync])  # one copy


def _flatten_dict(domain: Domain, record: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: v for k, v in record.items() if k != domain.explode and k not in domain.flatten}
    for name in domain.flatten:
        for sub, value in (record.get(name) or {}).items():
            base[f"{name}_{sub}"] = value
    if not domain.explode:
        return [base]
    return [{**base, **item} for item in record.get(domain.explode) or []]


def naive(domain: Domain, values: list[bytes], fmt: str) -> pl.DataFrame:
    rows: list[dict[str, Any]] = []
    for value in values:
        if fmt == "json":
            record = json.loads(value)
        else:
            record = fastavro.schemaless_reader(io.BytesIO(value), domain.parsed_schema, None)
        rows.extend(_flatten_dict(domain, record))  # type: ignore[arg-type]
    return pl.DataFrame(rows, infer_schema_length=None)


def ceiling(domain: Domain, values: list[bytes], fmt: str) -> pl.DataFrame:
    if fmt == "json":
        return pl.read_ndjson(io.BytesIO(b"\n".join(values)), schema=domain.nested_schema)
    return pl.read_avro(io.BytesIO(_plain_container(domain, values)))


def wrapped(domain: Domain, values: list[bytes], fmt: str) -> bytes:
    """The batch as the ceiling's reader takes it: one Avro container, or NDJSON lines."""
    return b"\n".join(values) if fmt == "json" else _plain_container(domain, values)


def read_only(domain: Domain, blob: bytes, fmt: str) -> pl.DataFrame:
    if fmt == "json":
        return pl.read_ndjson(io.BytesIO(blob), schema=domain.nested_schema)
    return pl.read_avro(io.BytesIO(blob))


def layer(domain: Domain, values: list[bytes], fmt: str) -> pl.DataFrame:
    n = len(values)
    batch = MessageBatch(domain.topic.name, values, [0] * n, list(range(n)), [0] * n)
    result = BatchDecoder(domain).decode(batch, datetime.now(UTC))
    assert not result.rejected
    return result.rows


def best_rates(cases: dict[str, tuple[Callable[[], object], int]], n: int) -> dict[str, float]:
    """Messages per second of each case's best run (case: function, number of runs).

    The runs of the cases alternate, so that a change of load on the machine weighs on every case
    alike instead of on whichever case was running then (the ratios are what the goals are about).
    """
    best = dict.fromkeys(cases, float("inf"))
    for round_ in range(max(runs for _, runs in cases.values())):
        for name, (fn, runs) in cases.items():
            if round_ < runs:
                started = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - started)
    return {name: n / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="split into batches of this size (0: one batch)")
    args = parser.parse_args()
    print(f"decode benchmark: {args.messages:,} messages per case, best of {args.repeat}")
    print(f"{'domain':<20} {'format':<6} {'layer msg/s':>12} {'naive msg/s':>12} {'ceiling msg/s':>14}"
          f" {'layer/ceiling':>14} {'layer/naive':>12} {'read only msg/s':>16} {'layer/read only':>16}")
    for name in ("robot_status", "equipment_metrics"):
        domain = DOMAINS[name]
        for fmt in ("avro", "json"):
            values = _messages(name, args.messages, fmt)
            layer(domain, values[:1000], fmt)  # warm caches
            step = args.batch or len(values)
            chunks = [values[i : i + step] for i in range(0, len(values), step)]

            blobs = [wrapped(domain, chunk, fmt) for chunk in chunks]

            def run(fn: Callable[[Domain, Any, str], object], chunks: list[Any] = chunks) -> None:
                for chunk in chunks:
                    fn(domain, chunk, fmt)  # noqa: B023 - evaluated immediately

            rates = best_rates(
                {
                    "layer": (lambda: run(layer), args.repeat),
                    "naive": (lambda: run(naive), max(1, args.repeat // 2)),
                    "ceiling": (lambda: run(ceiling), args.repeat),
                    "read only": (lambda: run(read_only, blobs), args.repeat),  # noqa: B023 - called at once
                },
                len(values),
            )
            rate_layer, rate_naive, rate_ceiling = rates["layer"], rates["naive"], rates["ceiling"]
            print(
                f"{name:<20} {fmt:<6} {rate_layer:>12,.0f} {rate_naive:>12,.0f} {rate_ceiling:>14,.0f}"
                f" {rate_layer / rate_ceiling:>13.0%} {rate_layer / rate_naive:>11.1f}x"
                f" {rates['read only']:>16,.0f} {rate_layer / rates['read only']:>15.0%}"
            )


if __name__ == "__main__":
    main()
