"""Statistics per period, written beside each merged file: ``<domain>/stats/<grain>/<name>.parquet``.

One tall table per period (seed 004's hourly AVG/MIN/MAX/COUNT, plus p95), computed with DuckDB
from the period's merged fact file and its merged DLQ file:

``section``   ``measure``: count/min/max/mean/p95/total of a measured value per entity, type, location, unit;
              ``anomaly``: flagged rows per entity and rule (``name``);
              ``dlq``: DLQ records per entity (when known) and reason (``name``);
              ``energy``: energy in the standard unit per equipment and energy type, with carbon and cost.

Day and week statistics are computed the same way from the day and week files (not from hourly
statistics: a p95 does not roll up), so every level equals a direct query over its facts.
A small manifest (``<domain>/_manifests/stats/<grain>/<name>.json``) names the merged files it was
computed from; statistics are recomputed when either changes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

from merger.catalog import DomainCatalog
from merger.merge import scratch_prefix
from merger.periods import Period, file_key
from storage.base import ObjectNotFound, ObjectStore

log = logging.getLogger("merger")


@dataclass(frozen=True)
class StatsSpec:
    """How a domain's rows are grouped and which columns are measured."""

    entity: str
    kind: str  # sensor / item / equipment type column
    measures: tuple[str, ...]
    unit: str | None = "unit"


STATS_SPECS: dict[str, StatsSpec] = {
    "equipment_metrics": StatsSpec("equipment_id", "sensor_type", ("value",)),
    "qc_result": StatsSpec("equipment_id", "inspection_type", ("value",)),
    "energy_usage": StatsSpec("equipment_id", "energy_type", ("usage",)),
    "environmental_readings": StatsSpec("sensor_id", "sensor_type", ("value",)),
    "robot_status": StatsSpec("robot_id", "model", ("battery_level",), unit=None),
    "device_status": StatsSpec("device_id", "device_type", ("status_latency_ms",), unit=None),
}

STATS_COLUMNS = (
    "period", "grain", "period_start", "period_end", "section", "entity_id", "kind", "location", "unit", "name",
    "count", "min", "max", "mean", "p95", "total", "carbon_g", "cost",
)  # fmt: skip


def stats_key(domain: str, period: Period) -> str:
    """Object key of a period's statistics."""
    return f"{domain}/stats/{period.grain.folder}/{period.name}.parquet"


def stats_manifest_key(domain: str, period: Period) -> str:
    """Object key of the note saying which merged files a period's statistics were computed from."""
    return f"{domain}/_manifests/stats/{period.grain.folder}/{period.name}.json"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _numbers(value: str) -> str:
    v = f"CAST({value} AS DOUBLE)"
    return (f"count({value}) AS count, min({v}) AS min, max({v}) AS max, avg({v}) AS mean, "
            f"quantile_cont({v}, 0.95) AS p95, sum({v}) AS total")  # fmt: skip


_NO_NUMBERS = ("NULL::DOUBLE AS min, NULL::DOUBLE AS max, NULL::DOUBLE AS mean, NULL::DOUBLE AS p95, "
               "NULL::DOUBLE AS total")  # fmt: skip


def stats_sql(domain: str, period: Period, facts: str | None, facts_columns: set[str], dlq: str | None) -> str:
    """The statistics query over a period's merged fact file and DLQ file (local paths, either may be None)."""
    spec = STATS_SPECS[domain]
    group = (f"CAST({_q(spec.entity)} AS VARCHAR) AS entity_id, CAST({_q(spec.kind)} AS VARCHAR) AS kind, "
             "CAST(location AS VARCHAR) AS location")  # fmt: skip
    unit = f"CAST({_q(spec.unit)} AS VARCHAR)" if spec.unit else "NULL::VARCHAR"
    parts: list[str] = []
    if facts is not None:
        source = f"read_parquet({_lit(facts)})"
        for measure in spec.measures:
            parts.append(
                f"SELECT 'measure' AS section, {group}, {unit} AS unit, {_lit(measure)} AS name, "
                f"{_numbers(_q(measure))}, NULL::DOUBLE AS carbon_g, NULL::DOUBLE AS cost FROM {source} GROUP BY ALL"
            )
        if {"anomaly", "anomaly_rule"} <= facts_columns:
            parts.append(
                f"SELECT 'anomaly' AS section, {group}, NULL::VARCHAR AS unit, CAST(anomaly_rule AS VARCHAR) AS name, "
                f"count(*) AS count, {_NO_NUMBERS}, NULL::DOUBLE AS carbon_g, NULL::DOUBLE AS cost "
                f"FROM {source} WHERE anomaly GROUP BY ALL"
            )
        if {"usage_std", "standard_unit", "carbon_g", "cost"} <= facts_columns:
            parts.append(
                f"SELECT 'energy' AS section, {group}, CAST(standard_unit AS VARCHAR) AS unit, 'usage_std' AS name, "
                f"{_numbers('usage_std')}, sum(carbon_g) AS carbon_g, sum(cost) AS cost "
                f"FROM {source} WHERE usage_std IS NOT NULL GROUP BY ALL"
            )
    if dlq is not None:
        parts.append(
            "SELECT 'dlq' AS section, entity_id, NULL::VARCHAR AS kind, NULL::VARCHAR AS location, "
            f"NULL::VARCHAR AS unit, reason AS name, count(*) AS count, {_NO_NUMBERS}, "
            f"NULL::DOUBLE AS carbon_g, NULL::DOUBLE AS cost FROM read_parquet({_lit(dlq)}) GROUP BY ALL"
        )
    if not parts:
        raise ValueError(f"{domain} {period.name}: no merged facts or DLQ file to compute statistics from")
    body = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
    return f"""
        SELECT {_lit(period.name)} AS period, {_lit(period.grain.folder)} AS grain,
               TIMESTAMPTZ {_lit(period.start.isoformat())} AS period_start,
               TIMESTAMPTZ {_lit(period.end.isoformat())} AS period_end,
               section, entity_id, kind, location, unit, name,
               CAST(count AS BIGINT) AS count, min, max, mean, p95, total, carbon_g, cost
        FROM ({body})
        ORDER BY section, entity_id, kind, location, unit, name
    """


@dataclass(frozen=True)
class StatsSources:
    """The merged files a period's statistics come from (key and manifest timestamp, or None)."""

    facts: tuple[str, str] | None
    dlq: tuple[str, str] | None

    def to_json(self) -> bytes:
        """Serialized form (what the stats manifest holds)."""
        return json.dumps({"facts": self.facts, "dlq": self.dlq}, sort_keys=True).encode()


def sources_of(facts: DomainCatalog, dlq: DomainCatalog, period: Period) -> StatsSources:
    """Which merged files of ``period`` exist now, with their manifests' creation times."""

    def one(catalog: DomainCatalog) -> tuple[str, str] | None:
        manifest = catalog.manifest(period)
        return (file_key(catalog.root, period), manifest.created_at) if manifest is not None else None

    return StatsSources(one(facts), one(dlq))


def stats_current(store: ObjectStore, domain: str, period: Period, sources: StatsSources) -> bool:
    """Whether the stored statistics were computed from exactly ``sources``."""
    try:
        return store.get(stats_manifest_key(domain, period)) == sources.to_json()
    except ObjectNotFound:
        return False


def write_stats(store: ObjectStore, domain: str, period: Period, sources: StatsSources) -> int:
    """Compute and store a period's statistics from its merged files; returns the number of stats rows."""
    with tempfile.TemporaryDirectory(prefix=scratch_prefix()) as tmp:
        local: dict[str, str | None] = {"facts": None, "dlq": None}
        for name, source in (("facts", sources.facts), ("dlq", sources.dlq)):
            if source is not None:
                path = Path(tmp) / f"{name}.parquet"
                store.get_file(source[0], str(path))
                local[name] = str(path)
        out = Path(tmp) / "stats.parquet"
        con = duckdb.connect(config={"threads": 2})
        try:
            columns: set[str] = set()
            if local["facts"] is not None:
                columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_lit(local['facts'])})")
                           .fetchall()}  # fmt: skip
            sql = stats_sql(domain, period, local["facts"], columns, local["dlq"])
            con.execute(f"COPY ({sql}) TO {_lit(str(out))} (FORMAT parquet, COMPRESSION zstd)")
            rows = int(con.execute(f"SELECT count(*) FROM read_parquet({_lit(str(out))})").fetchall()[0][0])
        finally:
            con.close()
        store.put_file(stats_key(domain, period), str(out))
    store.put(stats_manifest_key(domain, period), sources.to_json())
    log.info("statistics", extra={"key": stats_key(domain, period), "rows": rows})
    return rows
