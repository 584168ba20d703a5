"""energy_usage: unit conversion, carbon and cost, point-in-time max threshold, 3-in-a-row / peak alarms.

The reported unit converts to the energy type's standard unit through ``dim_energy_type``
(one row per (energy_type, unit), see :mod:`anomaly.dims`). The threshold valid at the record's
timestamp (``valid_from <= t < valid_to``) is converted from its ``expected_unit`` to the standard
unit too, so ``threshold_max`` and ``usage_std`` are comparable. A unit with no conversion row for a
known energy type is unit_mismatch (rejected); an energy type with no conversion rows at all is
compared only when its unit equals the threshold's expected unit (else unit_mismatch).
Alarm: at the 3rd consecutive exceedance of one equipment_id + energy_type (once per run), or on any
exceedance inside the configured peak hours.
"""

from __future__ import annotations

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import THRESHOLD_MISSING, EngineConfig
from anomaly.rules.base import RUN, AlarmSpec, Consecutive, Reason, RuleSet, best_match, fmt_num, lookup
from domains.base import UNIT_MISMATCH


def enrich(rows: pl.DataFrame, dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """Convert, price and compare with the valid threshold."""
    types = dims["dim_energy_type"]
    known = types["energy_type"].unique().to_list()
    rows = lookup(rows, types, ["energy_type", "unit"],
                  {"conversion_rate": "_rate", "standard_unit": "_std", "carbon_factor": "_carbon",
                   "cost_per_unit": "_cost"})  # fmt: skip
    rows = best_match(rows, dims["dim_energy_threshold"], exact=["equipment_id", "energy_type"], at="timestamp",
                      take=["max_threshold", "expected_unit"])  # fmt: skip
    expected = types.select(
        pl.col("energy_type"), pl.col("unit").alias("_t_expected_unit"), pl.col("conversion_rate").alias("_exp_rate")
    ).unique(["energy_type", "_t_expected_unit"], keep="first", maintain_order=True)
    rows = rows.join(expected, on=["energy_type", "_t_expected_unit"], how="left")
    type_known = pl.col("energy_type").is_in(known)
    same_unit = (pl.col("unit") == pl.col("_t_expected_unit")).fill_null(False)
    has_threshold = pl.col("_t_max_threshold").is_not_null()
    rate = pl.when(type_known).then(pl.col("_rate")).when(same_unit).then(pl.lit(1.0))
    rows = rows.with_columns(
        usage_std=pl.col("usage") * rate,
        standard_unit=pl.when(type_known).then(pl.col("_std")).when(same_unit).then(pl.col("unit")),
        threshold_min=pl.lit(None, pl.Float64),
        threshold_max=pl.when(type_known).then(pl.col("_t_max_threshold") * pl.col("_exp_rate"))
        .otherwise(pl.col("_t_max_threshold")),
        _unit_mismatch=(type_known & pl.col("_rate").is_null()) | (~type_known & has_threshold & ~same_unit),
        _missing=~has_threshold | (type_known & has_threshold & pl.col("_exp_rate").is_null()),
    )
    hour = pl.col("timestamp").dt.hour()
    peak = pl.lit(False)
    for start, end in config.peak_hours:
        peak = peak | ((hour >= start) & (hour < end))
    exceeds = (pl.col("usage_std") > pl.col("threshold_max")).fill_null(False)
    return rows.with_columns(
        carbon_g=pl.col("usage_std") * pl.col("_carbon"),
        cost=pl.col("usage_std") * pl.col("_cost"),
        anomaly=exceeds,
        anomaly_rule=pl.when(exceeds).then(pl.lit("max_threshold")),
        _peak=peak,
    )


def reasons(config: EngineConfig) -> list[Reason]:
    """unit_mismatch (rejected), threshold_missing (flagged)."""
    return [
        Reason(UNIT_MISMATCH, pl.col("_unit_mismatch"),
               pl.format("unit '{}' of {} does not convert to the expected unit '{}'", pl.col("unit"),
                         pl.col("energy_type"), pl.coalesce(pl.col("_t_expected_unit"), pl.col("_std")))),
        Reason(THRESHOLD_MISSING, pl.col("_missing"),
               pl.format("no dim_energy_threshold row for {} {} valid at {}", pl.col("equipment_id"),
                         pl.col("energy_type"), pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))),
    ]  # fmt: skip


CONSECUTIVE = Consecutive(key=pl.concat_str(pl.col("equipment_id"), pl.lit("|"), pl.col("energy_type")),
                          exceeds=pl.col("anomaly"))  # fmt: skip


def alarm(config: EngineConfig) -> AlarmSpec:
    """3rd consecutive exceedance, or any exceedance in peak hours."""
    third = pl.col(RUN) == config.consecutive_alarm_count
    return AlarmSpec(
        fires=pl.col("anomaly") & (third | pl.col("_peak")),
        entity=pl.col("equipment_id"),
        rule=pl.when(third).then(pl.lit("consecutive_exceedance")).otherwise(pl.lit("peak_hours_exceedance")),
        severity=pl.lit("warning"),
        value=pl.col("usage_std"),
        unit=pl.col("standard_unit"),
        location=pl.col("location"),
        description=pl.format("{} usage {} {} > {} ({} in a row)", pl.col("energy_type"), fmt_num(pl.col("usage_std")),
                              pl.col("standard_unit"), fmt_num(pl.col("threshold_max")), pl.col(RUN)),
    )  # fmt: skip


RULES = RuleSet(enrich=enrich, reasons=reasons, alarm=alarm, consecutive=CONSECUTIVE)
