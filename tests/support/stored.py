"""Reading back what the collector stored: minute files as one table per domain."""

from __future__ import annotations

import re

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from storage.base import ObjectStore

MINUTE_KEY = re.compile(r"^(?P<domain>[a-z_]+)/minute/(?P<stamp>\d{8}_\d{4})_(?P<suffix>[A-Za-z0-9-]+)\.parquet$")


def minute_keys(store: ObjectStore, domain: str | None = None) -> list[str]:
    """Keys of stored minute files (of one domain or all)."""
    keys = [o.key for o in store.list(f"{domain}/minute/" if domain else "")]
    return [k for k in keys if k.split("/")[1:2] == ["minute"]]


def read_minutes(store: ObjectStore, domain: str) -> pl.DataFrame:
    """All rows of a domain's minute files, with the file's key in column ``_key``."""
    frames = []
    for key in minute_keys(store, domain):
        table = pq.read_table(pa.BufferReader(store.get(key)))
        frames.append(pl.from_arrow(table).with_columns(pl.lit(key).alias("_key")))  # type: ignore[union-attr]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def read_dlq_minutes(store: ObjectStore, domain: str) -> pl.DataFrame:
    """All rows of a domain's DLQ minute files (``<domain>/_dlq/minute/``)."""
    frames = [
        pl.from_arrow(pq.read_table(pa.BufferReader(store.get(o.key))))
        for o in store.list(f"{domain}/_dlq/minute/")
        if o.key.endswith(".parquet")
    ]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()  # type: ignore[arg-type]
