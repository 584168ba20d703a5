"""robot_status: error status, low battery or an error code is an anomaly; missing_error_code.

The error code's description and severity come from ``dim_robot_error_code``; an unknown code keeps
a null description and the alarm is ``critical`` for the error status, ``warning`` otherwise.
Robots are tracked for the offline sweep (:meth:`anomaly.state.EngineState.sweep`).
"""

from __future__ import annotations

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import MISSING_ERROR_CODE, EngineConfig
from anomaly.rules.base import AlarmSpec, Reason, RuleSet, lookup


def enrich(rows: pl.DataFrame, dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """Normalise the error code and flag anomalies."""
    rows = lookup(rows, dims["dim_robot_error_code"], ["error_code"],
                  {"description": "error_description", "severity": "error_severity"})  # fmt: skip
    error = pl.col("status_current") == "error"
    low = pl.col("battery_level") < config.robot_battery_low
    coded = pl.col("error_code").is_not_null()
    return rows.with_columns(
        anomaly=(error | low | coded).fill_null(False),
        anomaly_rule=pl.when(error).then(pl.lit("error_status")).when(low).then(pl.lit("low_battery"))
        .when(coded).then(pl.lit("error_code")),
        threshold_min=pl.lit(config.robot_battery_low),
        threshold_max=pl.lit(None, pl.Float64),
    )


def reasons(config: EngineConfig) -> list[Reason]:
    """missing_error_code (status error without a code)."""
    return [
        Reason(MISSING_ERROR_CODE, (pl.col("status_current") == "error") & pl.col("error_code").is_null(),
               pl.format("robot {} reports status error without an error_code", pl.col("robot_id"))),
    ]  # fmt: skip


def alarm(config: EngineConfig) -> AlarmSpec:
    """An alarm on every anomalous report."""
    fallback = pl.when(pl.col("status_current") == "error").then(pl.lit("critical")).otherwise(pl.lit("warning"))
    return AlarmSpec(
        fires=pl.col("anomaly"),
        entity=pl.col("robot_id"),
        rule=pl.col("anomaly_rule"),
        severity=pl.coalesce(pl.col("error_severity"), fallback),
        value=pl.col("battery_level"),
        unit=pl.lit("%"),
        location=pl.col("location"),
        description=pl.coalesce(
            pl.format("{}: {}", pl.col("error_code"), pl.col("error_description")),
            pl.col("error_code"),
            pl.format("status {}, battery {} %", pl.col("status_current"), pl.col("battery_level")),
        ),
    )


RULES = RuleSet(enrich=enrich, reasons=reasons, alarm=alarm, heartbeat_entity="robot_id")
