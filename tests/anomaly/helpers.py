"""Building decoded rows from dict messages and tiny dimension sets for the anomaly tests."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from anomaly import AnomalyEngine, Dimensions, EngineConfig, EngineState
from domains import DOMAINS
from domains.decode import BatchDecoder, MessageBatch
from trafficgen.examples import canonical_example

NOW = datetime(2025, 5, 24, 15, 0, tzinfo=UTC)


def message(domain: str, **changes: Any) -> dict[str, Any]:
    """The seed example of ``domain`` with top-level fields replaced (``status__x`` sets status.x)."""
    record = copy.deepcopy(canonical_example(domain))
    for key, value in changes.items():
        if "__" in key:
            outer, inner = key.split("__")
            record[outer][inner] = value
        else:
            record[key] = value
    return record


def rows_of(domain: str, records: list[dict[str, Any]], first_offset: int = 0, partition: int = 0) -> pl.DataFrame:
    """Decoded rows of JSON ``records`` at consecutive offsets of one partition."""
    d = DOMAINS[domain]
    n = len(records)
    batch = MessageBatch(d.topic.name, [orjson.dumps(r) for r in records], [partition] * n,
                         list(range(first_offset, first_offset + n)), [0] * n)  # fmt: skip
    decoded = BatchDecoder(d).decode(batch, NOW)
    assert decoded.rejected == [], decoded.rejected
    return decoded.rows


def engine(dims: Dimensions, state: EngineState | None = None, **config: Any) -> AnomalyEngine:
    """An engine over ``dims`` with a fresh (or given) state."""
    return AnomalyEngine(dims, state or EngineState(), EngineConfig(**config))


def reasons(evaluation: Any) -> dict[int, tuple[str, bool]]:
    """offset → (reason, rejected) of an evaluation's DLQ records."""
    return {o: (r, j) for o, r, j in evaluation.dlq.select("kafka_offset", "reason", "rejected").iter_rows()}
