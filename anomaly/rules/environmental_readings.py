"""environmental_readings: point-in-time threshold per sensor_type + location (blank location = all).

unit must equal the threshold's expected_unit (°C vs °F → unit_mismatch, rejected); no threshold →
threshold_missing (flagged). Alarm on every anomaly, except CO2, which alarms at the 3rd consecutive
exceedance of the same sensor (once per run).
"""

from __future__ import annotations

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import THRESHOLD_MISSING, EngineConfig
from anomaly.rules.base import RUN, AlarmSpec, Consecutive, Reason, RuleSet, band_flags, best_match
from domains.base import UNIT_MISMATCH

_LOW, _HIGH = pl.col("threshold_min"), pl.col("threshold_max")


def enrich(rows: pl.DataFrame, dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """Join the valid threshold and flag anomalies."""
    rows = best_match(rows, dims["dim_env_threshold"], exact=["sensor_type"], wildcards=["location"], at="timestamp",
                      take=["min_threshold", "max_threshold", "expected_unit"])  # fmt: skip
    rows = rows.rename({"_t_min_threshold": "threshold_min", "_t_max_threshold": "threshold_max"})
    return rows.with_columns(**band_flags("_t_expected_unit"))


def reasons(config: EngineConfig) -> list[Reason]:
    """unit_mismatch (rejected), threshold_missing (flagged)."""
    return [
        Reason(UNIT_MISMATCH, pl.col("_unit_mismatch"),
               pl.format("sensor {} unit '{}' differs from the expected unit '{}'", pl.col("sensor_id"),
                         pl.col("unit"), pl.col("_t_expected_unit"))),
        Reason(THRESHOLD_MISSING, pl.col("_missing"),
               pl.format("no dim_env_threshold row for {} in {} valid at {}", pl.col("sensor_type"),
                         pl.col("location"), pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))),
    ]  # fmt: skip


CONSECUTIVE = Consecutive(key=pl.col("sensor_id"), exceeds=pl.col("anomaly"))


def alarm(config: EngineConfig) -> AlarmSpec:
    """Every anomaly; CO2 only at its 3rd consecutive exceedance."""
    co2 = pl.col("sensor_type") == config.co2_sensor_type
    third = pl.col(RUN) == config.consecutive_alarm_count
    return AlarmSpec(
        fires=pl.col("anomaly") & (~co2 | third),
        entity=pl.col("sensor_id"),
        rule=pl.when(co2).then(pl.lit("consecutive_exceedance")).otherwise(pl.col("anomaly_rule")),
        severity=pl.lit("warning"),
        value=pl.col("value"),
        unit=pl.col("unit"),
        location=pl.col("location"),
        description=pl.format("{} {} {}", pl.col("sensor_type"), pl.col("value"), pl.col("unit")),
    )


RULES = RuleSet(enrich=enrich, reasons=reasons, alarm=alarm, consecutive=CONSECUTIVE)
