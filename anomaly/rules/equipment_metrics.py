"""equipment_metrics: most-specific threshold per equipment + sensor + season + product + shift.

Season comes from the event month, product from ``dim_batch`` (batch_id), shift from
``dim_operator`` (operator_id). A row with no matching threshold is neither anomalous nor a DLQ
record (SPEC lists no threshold_missing reason for this domain). business_rule_violation: sensor
quality "bad", or a value beyond its band by more than 99 % of the band's width (of the bound's
magnitude when one bound is open). Status transitions are compared per equipment
(:meth:`anomaly.engine.AnomalyEngine.status_transitions`).
"""

from __future__ import annotations

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import BUSINESS_RULE_VIOLATION, EngineConfig
from anomaly.rules.base import AlarmSpec, Reason, RuleSet, best_match, fmt_num, lookup, outside

_SEASON_OF_MONTH = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
                    6: "summer", 7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}  # fmt: skip
_LOW, _HIGH = pl.col("threshold_min"), pl.col("threshold_max")


def enrich(rows: pl.DataFrame, dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """Join the threshold and derive anomaly, rule and the sensor-fault test."""
    rows = rows.with_columns(
        season=pl.col("timestamp").dt.month().replace_strict(_SEASON_OF_MONTH, return_dtype=pl.String)
    )
    rows = lookup(rows, dims["dim_batch"], ["batch_id"], {"product_code": "product_code"})
    rows = lookup(rows, dims["dim_operator"], ["operator_id"], {"shift": "shift"})
    rows = best_match(rows, dims["dim_thresholds"], exact=["sensor_type"],
                      wildcards=["equipment_id", "season", "product_code", "shift"],
                      take=["min_threshold", "max_threshold"])  # fmt: skip
    value = pl.col("value")
    rows = rows.rename({"_t_min_threshold": "threshold_min", "_t_max_threshold": "threshold_max"})
    width = (
        pl.when(_LOW.is_not_null() & _HIGH.is_not_null()).then(_HIGH - _LOW)
        .when(_HIGH.is_not_null()).then(_HIGH.abs())
        .otherwise(_LOW.abs())
    )  # fmt: skip
    beyond = pl.max_horizontal((value - _HIGH).fill_null(0.0), (_LOW - value).fill_null(0.0))
    return rows.with_columns(
        anomaly=outside(value, _LOW, _HIGH),
        anomaly_rule=pl.when((value > _HIGH).fill_null(False)).then(pl.lit("max_threshold"))
        .when((value < _LOW).fill_null(False)).then(pl.lit("min_threshold")),
        _sensor_fault=((beyond > config.business_rule_band_fraction * width) & (width > 0)).fill_null(False),
    )


def reasons(config: EngineConfig) -> list[Reason]:
    """business_rule_violation (bad quality or sensor fault)."""
    return [
        Reason(BUSINESS_RULE_VIOLATION, pl.col("quality") == "bad",
               pl.format("sensor {} ({}) reported quality bad", pl.col("sensor_id"), pl.col("sensor_type"))),
        Reason(BUSINESS_RULE_VIOLATION, pl.col("_sensor_fault"),
               pl.format("sensor {} value {} is more than {}% beyond its band [{}, {}]", pl.col("sensor_id"),
                         fmt_num(pl.col("value")), pl.lit(round(config.business_rule_band_fraction * 100)),
                         fmt_num(_LOW), fmt_num(_HIGH))),
    ]  # fmt: skip


def alarm(config: EngineConfig) -> AlarmSpec:
    """An alarm on every anomalous reading; critical when the reading looks like a sensor fault."""
    return AlarmSpec(
        fires=pl.col("anomaly"),
        entity=pl.col("equipment_id"),
        rule=pl.col("anomaly_rule"),
        severity=pl.when(pl.col("_sensor_fault")).then(pl.lit("critical")).otherwise(pl.lit("warning")),
        value=pl.col("value"),
        unit=pl.col("unit"),
        location=pl.col("location"),
        description=pl.format("{} sensor {}", pl.col("sensor_type"), pl.col("sensor_id")),
    )


RULES = RuleSet(enrich=enrich, reasons=reasons, alarm=alarm, status_entity="equipment_id")
