"""The 16 dimension tables the anomaly rules join with: declared schemas, loading, validation.

Tables live in object storage as ``<prefix><table>.csv`` or ``<prefix><table>.parquet`` (SPEC §2.3).
Every table has a declared polars schema (:data:`TABLE_SCHEMAS`); a file is cast to it strictly, so
a missing column or an unparsable value is a :class:`~common.errors.ConfigError` naming the file and
the problem. An absent file is a logged warning and an empty table: the rules that need it then mark
their records ``threshold_missing`` instead of failing.

Conventions:

- Blank string cells are null. In ``dim_thresholds`` (and ``dim_env_threshold.location``) a null
  key column is a wildcard; the most specific matching row wins.
- ``valid_from``/``valid_to`` are UTC instants (``2025-01-01``, ``2025-01-01T06:00:00Z``); a row is
  valid for ``valid_from <= t < valid_to``; a blank bound is open.
- ``dim_energy_type`` has **one row per (energy_type, unit)** a meter may report in: ``unit`` is the
  reported unit, ``conversion_rate`` multiplies a value in ``unit`` into ``standard_unit``
  (Wh → kWh = 0.001; the standard unit's own row has 1.0); ``carbon_factor`` (g CO2) and
  ``cost_per_unit`` are per **standard** unit and repeat on every row of an energy type. A unit
  with no row for its energy type does not convert: ``unit_mismatch``.
- ``dim_thresholds.season`` is one of spring|summer|autumn|winter (meteorological, northern
  hemisphere, from the event month); ``shift`` matches ``dim_operator.shift``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from common.errors import ConfigError
from storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

UTC_MICROS = pl.Datetime("us", "UTC")
S = pl.String()
F = pl.Float64()
I64 = pl.Int64()

TABLE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "dim_equipment": {"equipment_id": S, "equipment_type": S, "install_date": pl.Date(), "location": S},
    "dim_operator": {"operator_id": S, "name": S, "shift": S, "qualification": S},
    "dim_batch": {"batch_id": S, "product_code": S, "start_time": UTC_MICROS, "end_time": UTC_MICROS},
    "dim_thresholds": {
        "equipment_id": S,
        "sensor_type": S,
        "season": S,
        "product_code": S,
        "shift": S,
        "min_threshold": F,
        "max_threshold": F,
    },
    "dim_location": {"location": S, "zone": S, "site": S, "area_type": S},
    "dim_inspection_item": {"item_id": S, "item_name": S, "unit": S, "method": S},
    "dim_qc_threshold": {
        "item_id": S,
        "product_code": S,
        "inspection_type": S,
        "min_threshold": F,
        "max_threshold": F,
        "unit": S,
    },
    "dim_energy_type": {
        "energy_type": S,
        "unit": S,
        "standard_unit": S,
        "conversion_rate": F,
        "carbon_factor": F,
        "cost_per_unit": F,
    },
    "dim_energy_threshold": {
        "equipment_id": S,
        "energy_type": S,
        "max_threshold": F,
        "expected_unit": S,
        "valid_from": UTC_MICROS,
        "valid_to": UTC_MICROS,
    },
    "dim_robot": {"robot_id": S, "model": S, "install_date": pl.Date(), "heartbeat_cycle": F, "team": S},
    "dim_robot_error_code": {"error_code": S, "description": S, "severity": S},
    "dim_env_sensor": {
        "sensor_id": S,
        "sensor_type": S,
        "unit": S,
        "accuracy": F,
        "install_date": pl.Date(),
        "location": S,
    },
    "dim_env_threshold": {
        "sensor_type": S,
        "location": S,
        "min_threshold": F,
        "max_threshold": F,
        "expected_unit": S,
        "valid_from": UTC_MICROS,
        "valid_to": UTC_MICROS,
    },
    "dim_device": {"device_id": S, "device_type": S, "location": S, "install_date": pl.Date(), "heartbeat_cycle": F},
    "dim_device_threshold": {"device_type": S, "max_latency": F, "timeout_multiplier": F},
    "dim_device_error_code": {"error_code": S, "description": S, "severity": S},
}
TABLES: tuple[str, ...] = tuple(TABLE_SCHEMAS)

# Columns that may be blank (wildcards, open bounds, optional attributes); all others are required.
NULLABLE: dict[str, frozenset[str]] = {
    "dim_equipment": frozenset({"install_date", "location"}),
    "dim_operator": frozenset({"name", "qualification"}),
    "dim_batch": frozenset({"start_time", "end_time"}),
    "dim_thresholds": frozenset({"equipment_id", "season", "product_code", "shift", "min_threshold", "max_threshold"}),
    "dim_location": frozenset({"zone", "site", "area_type"}),
    "dim_inspection_item": frozenset({"item_name", "method"}),
    "dim_qc_threshold": frozenset({"min_threshold", "max_threshold"}),
    "dim_energy_type": frozenset({"carbon_factor", "cost_per_unit"}),
    "dim_energy_threshold": frozenset({"valid_from", "valid_to"}),
    "dim_robot": frozenset({"model", "install_date", "heartbeat_cycle", "team"}),
    "dim_robot_error_code": frozenset({"description"}),
    "dim_env_sensor": frozenset({"unit", "accuracy", "install_date", "location"}),
    "dim_env_threshold": frozenset({"location", "min_threshold", "max_threshold", "valid_from", "valid_to"}),
    "dim_device": frozenset({"location", "install_date", "heartbeat_cycle"}),
    "dim_device_threshold": frozenset({"max_latency", "timeout_multiplier"}),
    "dim_device_error_code": frozenset({"description"}),
}
SEASONS = ("spring", "summer", "autumn", "winter")
SEVERITIES = ("info", "warning", "critical")


def empty(table: str) -> pl.DataFrame:
    """An empty frame with ``table``'s declared schema."""
    return pl.DataFrame(schema=TABLE_SCHEMAS[table])


@dataclass(frozen=True)
class Dimensions:
    """The dimension tables, each a polars DataFrame with exactly its declared schema."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in TABLES:
            if name not in self.tables:
                self.tables[name] = empty(name)
        unknown = set(self.tables) - set(TABLES)
        if unknown:
            raise ConfigError(f"unknown dimension table(s): {', '.join(sorted(unknown))}")

    def __getitem__(self, table: str) -> pl.DataFrame:
        return self.tables[table]

    @classmethod
    def from_rows(cls, **tables: list[dict[str, Any]] | pl.DataFrame) -> Dimensions:
        """Build from python rows or frames per table (tests, demos); validated like a loaded file."""
        out: dict[str, pl.DataFrame] = {}
        for name, rows in tables.items():
            if name not in TABLE_SCHEMAS:
                raise ConfigError(f"unknown dimension table {name!r}")
            frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, infer_schema_length=None)
            # Optional columns may be left out here (not in files, where the header is the contract).
            absent = [c for c in NULLABLE[name] if c not in frame.columns]
            frame = frame.with_columns([pl.lit(None, pl.String).alias(c) for c in absent])
            out[name] = conform(name, frame, f"<{name}>")
        return cls(out)

    @classmethod
    def load(cls, store: ObjectStore, prefix: str = "_dims/") -> Dimensions:
        """Read every table from ``<prefix><table>.parquet`` or ``.csv`` (Parquet wins if both exist).

        A malformed file raises :class:`ConfigError` (one line: the key and the problem); an absent
        table is logged as a warning and loaded empty.
        """
        present = {info.key for info in store.list(prefix)}
        out: dict[str, pl.DataFrame] = {}
        for name in TABLES:
            key = next((f"{prefix}{name}.{ext}" for ext in ("parquet", "csv") if f"{prefix}{name}.{ext}" in present),
                       None)  # fmt: skip
            if key is None:
                log.warning("dimension table %s absent under %r: its rules mark threshold_missing", name, prefix)
                out[name] = empty(name)
                continue
            try:
                data = store.get(key)
            except ObjectNotFound:
                log.warning("dimension table %s vanished while loading (%s)", name, key)
                out[name] = empty(name)
                continue
            out[name] = parse(name, key, data)
        return cls(out)

    @staticmethod
    def fingerprint(store: ObjectStore, prefix: str = "_dims/") -> str:
        """A digest of the dimension objects' keys, sizes, etags and update times: reload when it changes."""
        wanted = {f"{prefix}{t}.{ext}" for t in TABLES for ext in ("csv", "parquet")}
        parts = [
            f"{o.key}|{o.size}|{o.etag or ''}|{o.generation or ''}|{o.updated.isoformat()}"
            for o in store.list(prefix)
            if o.key in wanted
        ]
        return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


def parse(table: str, key: str, data: bytes) -> pl.DataFrame:
    """Decode one dimension file (CSV or Parquet by extension) into ``table``'s schema."""
    try:
        if key.endswith(".parquet"):
            frame = pl.read_parquet(io.BytesIO(data))
        else:
            frame = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:  # polars raises several kinds; all mean "not a readable file"
        raise ConfigError(f"dimension file {key}: unreadable: {' '.join(str(exc).split())[:200]}") from exc
    return conform(table, frame, key)


def conform(table: str, frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Cast ``frame`` to ``table``'s declared schema; ConfigError naming ``source`` if it does not fit."""
    schema = TABLE_SCHEMAS[table]
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise ConfigError(f"dimension file {source}: missing column(s) {', '.join(missing)}")
    columns = []
    for name, dtype in schema.items():
        col = frame.get_column(name)
        try:
            columns.append(_cast(col, dtype))
        except (pl.exceptions.PolarsError, ValueError) as exc:
            bad = _first_bad(col, dtype)
            raise ConfigError(f"dimension file {source}: column {name}: cannot read {bad!r} as {dtype}") from exc
    out = pl.DataFrame(columns)
    for name in schema:
        if name not in NULLABLE[table] and out.get_column(name).null_count():
            row = out.get_column(name).is_null().arg_true()[0]
            raise ConfigError(f"dimension file {source}: column {name} is blank in data row {row + 1}")
    for name in ("severity",):
        if name in out.columns:
            bad_sev = out.filter(~pl.col(name).is_in(list(SEVERITIES)))
            if bad_sev.height:
                raise ConfigError(
                    f"dimension file {source}: severity {bad_sev[name][0]!r} is not one of {'|'.join(SEVERITIES)}"
                )
    if "season" in out.columns:
        bad_season = out.filter(pl.col("season").is_not_null() & ~pl.col("season").is_in(list(SEASONS)))
        if bad_season.height:
            raise ConfigError(
                f"dimension file {source}: season {bad_season['season'][0]!r} is not one of {'|'.join(SEASONS)}"
            )
    return out


def _cast(col: pl.Series, dtype: pl.DataType) -> pl.Series:
    if col.dtype == pl.String:
        col = col.str.strip_chars()
        col = pl.Series(col.name, col).replace("", None)
        if dtype == UTC_MICROS:
            return _parse_instant(col)
        if dtype == pl.Date():
            return col.str.to_date("%Y-%m-%d", strict=True)
        if dtype == pl.String():
            return col
        if dtype == pl.Boolean():
            return col.str.to_lowercase().replace_strict({"true": True, "false": False}, return_dtype=pl.Boolean)
        return col.cast(dtype, strict=True)
    if dtype == UTC_MICROS and isinstance(col.dtype, pl.Datetime):
        if col.dtype.time_zone is None:  # type: ignore[union-attr]
            return col.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    return col.cast(dtype, strict=True)


def _parse_instant(col: pl.Series) -> pl.Series:
    text = col.str.replace(r"Z$", "+00:00").str.replace(r"^(\d{4}-\d{2}-\d{2})$", "${1}T00:00:00+00:00")
    text = text.str.replace(" ", "T", literal=True)
    text = text.str.replace(r"(T\d{2}:\d{2}:\d{2}(\.\d+)?)$", "${1}+00:00")  # naive instants are UTC
    parsed = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", time_zone="UTC", time_unit="us", strict=False)
    if parsed.null_count() != col.null_count():
        raise ValueError("unparsable instant")
    return parsed


def _first_bad(col: pl.Series, dtype: pl.DataType) -> Any:
    for value in col.to_list():
        if value is None or value == "":
            continue
        try:
            _cast(pl.Series(col.name, [value]), dtype)
        except (pl.exceptions.PolarsError, ValueError):
            return value
    return None
