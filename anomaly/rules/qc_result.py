"""qc_result: threshold per item_id + product_code + inspection_type; defect = outside it.

No threshold row → threshold_missing (flagged, not a defect); a unit different from the
threshold's unit (mm vs cm) → unit_mismatch (rejected).
"""

from __future__ import annotations

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import THRESHOLD_MISSING, EngineConfig
from anomaly.rules.base import AlarmSpec, Reason, RuleSet, band_flags, lookup
from domains.base import UNIT_MISMATCH

_LOW, _HIGH = pl.col("threshold_min"), pl.col("threshold_max")


def enrich(rows: pl.DataFrame, dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """Join dim_qc_threshold and flag defects."""
    rows = lookup(rows, dims["dim_qc_threshold"], ["item_id", "product_code", "inspection_type"],
                  {"min_threshold": "threshold_min", "max_threshold": "threshold_max",
                   "unit": "_expected_unit"})
    return rows.with_columns(**band_flags("_expected_unit"))


def reasons(config: EngineConfig) -> list[Reason]:
    """unit_mismatch (rejected), threshold_missing (flagged)."""
    return [
        Reason(UNIT_MISMATCH, pl.col("_unit_mismatch"),
               pl.format("item {} unit '{}' differs from the threshold unit '{}'", pl.col("item_id"),
                         pl.col("unit"), pl.col("_expected_unit"))),
        Reason(THRESHOLD_MISSING, pl.col("_missing"),
               pl.format("no dim_qc_threshold row for item {} product {} inspection {}", pl.col("item_id"),
                         pl.col("product_code"), pl.col("inspection_type"))),
    ]  # fmt: skip


def alarm(config: EngineConfig) -> AlarmSpec:
    """An alarm on every defect."""
    return AlarmSpec(
        fires=pl.col("anomaly"),
        entity=pl.col("equipment_id"),
        rule=pl.concat_str(pl.lit("defect_"), pl.col("anomaly_rule")),
        severity=pl.lit("warning"),
        value=pl.col("value"),
        unit=pl.col("unit"),
        location=pl.col("location"),
        description=pl.format("{} of {} (batch {})", pl.col("item_id"), pl.col("product_code"), pl.col("batch_id")),
    )


RULES = RuleSet(enrich=enrich, reasons=reasons, alarm=alarm)
