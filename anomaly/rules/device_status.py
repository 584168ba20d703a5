"""device_status: ping failure, latency over the type's max, in-message timeout, error-code normalisation.

timeout = timestamp − last_success_at > heartbeat_cycle (``dim_device``) × timeout_multiplier
(``dim_device_threshold`` by device_type, default 2.5). Devices are also tracked for the offline
sweep. DLQ (flagged): offline_timeout, missing_error_code (ping failed, no code), ping_failure,
latency_violation; one per message by :data:`anomaly.records.REASON_PRIORITY`.
"""

from __future__ import annotations

import polars as pl

from anomaly.dims import Dimensions
from anomaly.heartbeat import device_timeout_frame
from anomaly.records import LATENCY_VIOLATION, MISSING_ERROR_CODE, OFFLINE_TIMEOUT, PING_FAILURE, EngineConfig
from anomaly.rules.base import AlarmSpec, Reason, RuleSet, fmt_num, lookup


def enrich(rows: pl.DataFrame, dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """Join device limits and error codes; flag anomalies."""
    rows = lookup(rows, dims["dim_device"], ["device_id"], {"heartbeat_cycle": "_cycle"})
    rows = lookup(rows, device_timeout_frame(dims, config), ["device_type"],
                  {"max_latency": "threshold_max", "timeout_multiplier": "_multiplier"})
    rows = lookup(rows, dims["dim_device_error_code"], ["error_code"],
                  {"description": "error_description", "severity": "error_severity"})  # fmt: skip
    timeout_s = pl.col("_cycle").fill_null(config.device_default_heartbeat.total_seconds()) * pl.col(
        "_multiplier"
    ).fill_null(config.device_timeout_multiplier)
    gap_s = (pl.col("timestamp") - pl.col("status_last_success_at")).dt.total_microseconds() / 1e6
    failed = ~pl.col("status_ping_success")
    slow = (pl.col("status_latency_ms") > pl.col("threshold_max")).fill_null(False)
    timed_out = (gap_s > timeout_s).fill_null(False)
    return rows.with_columns(
        _timeout_s=timeout_s,
        _gap_s=gap_s,
        _failed=failed,
        _slow=slow,
        _timed_out=timed_out,
        anomaly=failed | slow | timed_out,
        anomaly_rule=pl.when(timed_out).then(pl.lit(OFFLINE_TIMEOUT)).when(failed).then(pl.lit(PING_FAILURE))
        .when(slow).then(pl.lit(LATENCY_VIOLATION)),
        threshold_min=pl.lit(None, pl.Float64),
    )


def reasons(config: EngineConfig) -> list[Reason]:
    """offline_timeout, missing_error_code, ping_failure, latency_violation (all flagged)."""
    return [
        Reason(OFFLINE_TIMEOUT, pl.col("_timed_out"),
               pl.format("last success {} s before this report (timeout {} s)", fmt_num(pl.col("_gap_s")),
                         fmt_num(pl.col("_timeout_s")))),
        Reason(MISSING_ERROR_CODE, pl.col("_failed") & pl.col("error_code").is_null(),
               pl.format("device {} ping failed without an error_code", pl.col("device_id"))),
        Reason(PING_FAILURE, pl.col("_failed"),
               pl.format("device {} ping failed ({})", pl.col("device_id"), pl.col("error_code"))),
        Reason(LATENCY_VIOLATION, pl.col("_slow"),
               pl.format("latency {} ms > max {} ms for {}", pl.col("status_latency_ms"),
                         fmt_num(pl.col("threshold_max")), pl.col("device_type"))),
    ]  # fmt: skip


def alarm(config: EngineConfig) -> AlarmSpec:
    """An alarm on every anomalous heartbeat."""
    fallback = pl.when(pl.col("_timed_out")).then(pl.lit("critical")).otherwise(pl.lit("warning"))
    return AlarmSpec(
        fires=pl.col("anomaly"),
        entity=pl.col("device_id"),
        rule=pl.col("anomaly_rule"),
        severity=pl.coalesce(pl.col("error_severity"), fallback),
        value=pl.when(pl.col("_timed_out")).then(pl.col("_gap_s")).otherwise(pl.col("status_latency_ms")),
        unit=pl.when(pl.col("_timed_out")).then(pl.lit("s")).otherwise(pl.lit("ms")),
        location=pl.col("location"),
        description=pl.coalesce(pl.format("{}: {}", pl.col("error_code"), pl.col("error_description")),
                                pl.col("error_code"), pl.col("anomaly_rule")),
    )  # fmt: skip


RULES = RuleSet(enrich=enrich, reasons=reasons, alarm=alarm, heartbeat_entity="device_id")
