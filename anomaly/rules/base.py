"""The shape of a domain's rules and the join helpers they share.

A domain's :class:`RuleSet` says how to enrich a batch (dimension joins, flag columns), which DLQ
reasons its rows can carry, which consecutive-exceedance counter it keeps, when a row raises an
alarm, and which entity is tracked for the offline sweep. The engine runs them in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import EngineConfig

RID = "_rid"  # row id inside one evaluation
RUN = "_run"  # consecutive exceedances including this row (0 when it does not exceed)


@dataclass(frozen=True)
class Reason:
    """A DLQ reason a row can carry: when it applies and the detail text."""

    reason: str
    when: pl.Expr
    detail: pl.Expr


@dataclass(frozen=True)
class AlarmSpec:
    """When a kept row raises an alarm and what the alarm says (expressions over enriched rows)."""

    fires: pl.Expr
    entity: pl.Expr
    rule: pl.Expr
    severity: pl.Expr
    value: pl.Expr
    unit: pl.Expr
    location: pl.Expr
    description: pl.Expr


@dataclass(frozen=True)
class Consecutive:
    """A consecutive-exceedance counter per entity key (kept in the engine state)."""

    key: pl.Expr
    exceeds: pl.Expr


@dataclass(frozen=True)
class RuleSet:
    """All rules of one domain."""

    enrich: Callable[[pl.DataFrame, Dimensions, EngineConfig], pl.DataFrame]
    reasons: Callable[[EngineConfig], list[Reason]]
    alarm: Callable[[EngineConfig], AlarmSpec]
    consecutive: Consecutive | None = None
    heartbeat_entity: str | None = None  # entity column tracked for the offline sweep
    status_entity: str | None = None  # entity column whose status.current/previous are compared over time


def best_match(
    rows: pl.DataFrame,
    table: pl.DataFrame,
    exact: list[str],
    wildcards: list[str] = (),  # type: ignore[assignment]
    at: str | None = None,
    take: list[str] = (),  # type: ignore[assignment]
    prefix: str = "_t_",
) -> pl.DataFrame:
    """``rows`` plus ``prefix``-named ``take`` columns of the best matching ``table`` row (or nulls).

    A table row matches when its ``exact`` columns equal the row's, each of its ``wildcards`` columns
    is null or equal, and (with ``at``) ``valid_from <= row[at] < valid_to`` (null bounds open).
    The best match has the most non-null wildcard columns, then the latest ``valid_from``, then comes
    first in the table.
    """
    renamed = table.with_row_index("_order").rename({c: f"{prefix}{c}" for c in table.columns})
    keys = [*exact, *wildcards] + ([at] if at else [])
    # Without a validity time the match depends only on the key columns: each distinct combination is
    # resolved once (a batch holds a few hundred of them for tens of thousands of rows) and joined back.
    # With one, nearly every row has its own time, so rows are matched one by one.
    probe = rows.select(pl.col(RID).alias("_key"), *keys) if at else rows.select(keys).unique().with_row_index("_key")
    cand = probe.join(renamed, left_on=exact, right_on=[f"{prefix}{c}" for c in exact], how="inner")
    cond = pl.lit(True)
    for c in wildcards:
        cond = cond & (pl.col(f"{prefix}{c}").is_null() | (pl.col(f"{prefix}{c}") == pl.col(c)))
    if at:
        vf, vt = pl.col(f"{prefix}valid_from"), pl.col(f"{prefix}valid_to")
        cond = cond & (vf.is_null() | (vf <= pl.col(at))) & (vt.is_null() | (pl.col(at) < vt))
    cand = cand.filter(cond)
    specificity = pl.sum_horizontal([pl.col(f"{prefix}{c}").is_not_null().cast(pl.Int32) for c in wildcards]) \
        if wildcards else pl.lit(0)  # fmt: skip
    sort_cols = ["_key", "_spec"] + ([f"{prefix}valid_from"] if at else []) + ["_order"]
    descending = [False, True] + ([True] if at else []) + [False]
    best = (
        cand.with_columns(_spec=specificity)
        .sort(sort_cols, descending=descending, nulls_last=True)
        .unique("_key", keep="first", maintain_order=True)
        .select("_key", *[pl.col(f"{prefix}{c}") for c in take])
    )
    if at:
        return rows.join(best.rename({"_key": RID}), on=RID, how="left", maintain_order="left")
    resolved = probe.join(best, on="_key", how="left").drop("_key")
    return rows.join(resolved, on=keys, how="left", nulls_equal=True, maintain_order="left")


def lookup(rows: pl.DataFrame, table: pl.DataFrame, on: list[str], take: dict[str, str]) -> pl.DataFrame:
    """Left-join the first ``table`` row per ``on`` key, taking columns renamed by ``take``."""
    right = table.unique(on, keep="first", maintain_order=True)
    right = right.select(*on, *[pl.col(s).alias(d) for s, d in take.items()])
    return rows.join(right, on=on, how="left", nulls_equal=False)


def outside(value: pl.Expr, low: pl.Expr, high: pl.Expr) -> pl.Expr:
    """value < low or value > high, false where a bound is null."""
    return ((value < low).fill_null(False)) | ((value > high).fill_null(False))


def fmt_num(expr: pl.Expr) -> pl.Expr:
    """A number as text for details ("null" when missing)."""
    return expr.round(6).cast(pl.String).fill_null("none")


def band_flags(expected_unit: str) -> dict[str, pl.Expr]:
    """Flags of a min/max threshold rule on ``value``: no threshold row, unit differing from the
    threshold's, outside the band, and which bound it crossed."""
    value, low, high = pl.col("value"), pl.col("threshold_min"), pl.col("threshold_max")
    matched = pl.col(expected_unit).is_not_null()
    return {
        "_missing": ~matched,
        "_unit_mismatch": matched & (pl.col("unit") != pl.col(expected_unit)),
        "anomaly": outside(value, low, high),
        "anomaly_rule": pl.when((value > high).fill_null(False)).then(pl.lit("max_threshold"))
        .when((value < low).fill_null(False)).then(pl.lit("min_threshold")),
    }
