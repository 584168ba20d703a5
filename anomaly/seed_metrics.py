"""The seed-named Prometheus metrics (SPEC §2.4), updated from every evaluated batch.

The collector (``collector.metrics.SEED``) calls :meth:`SeedMetrics.observe` once per evaluated batch
(one polars aggregation per batch and domain, then a loop over the few aggregated groups; robots and
QC add one step over a small per-entity state), :meth:`SeedMetrics.observe_rejects` with the
decoder's rejects, and :meth:`SeedMetrics.observe_sweep` with the offline sweep's alarms.
What is counted is what the engine keeps: the stored fact rows (``Evaluation.rows``) and the
engine's rejections, so every count can be recomputed from the Parquet files (and the DLQ files).

Conventions (what a Prometheus user expects):

- Counts are **counters**; Prometheus adds the ``_total`` suffix to the exposed samples
  (``late_arrival_count`` is scraped as ``late_arrival_count_total``). Use ``rate()``/``increase()``.
- A **rate or ratio** the seeds name is a **gauge** holding the ratio of two running counters over
  the life of the process (per label set), updated after each batch — the value the seed dashboards
  show. The two counters are exported too, so a windowed ratio is one PromQL division away, e.g.
  ``sum(rate(equipment_anomalous_measurements_total[5m])) / sum(rate(equipment_measurements_total[5m]))``;
  aggregate across replicas with the counters, never by averaging the gauges. Ratios are 0..1.
- Labels are low-cardinality dimensions the seeds group by (location, sensor_type, energy_type,
  device_type, error_code, ...); never per-message values. Each label keeps at most
  :data:`MAX_LABEL_VALUES` distinct values per metric; further values are reported as ``_other``
  (missing values as ``none``).
- A replayed batch (after a crash before the commit) is counted again, like every ``fms_*`` counter.

The metrics and their definitions (``stage`` is ``decode`` for the decoder's unit catalogue check,
``engine`` for a unit that differs from the dimension table's):

equipment_metrics
    ``equipment_anomaly_rate{location,sensor_type}`` gauge: stored readings outside their threshold band
    / stored readings (companions ``equipment_anomalous_measurements_total``, ``equipment_measurements_total``).
    ``late_arrival_count{domain}`` counter: stored messages with ingestion_timestamp − timestamp > 10 min
    (``EngineConfig.late_after``), whatever DLQ reason won; every domain whose DLQ has late_arrival.
qc_result
    ``qc_defect_rate{location,product_code}`` gauge: defective inspection items / stored items
    (``qc_defective_items_total``, ``qc_inspected_items_total``).
    ``qc_threshold_miss_rate{location,product_code}`` gauge: stored items with no dim_qc_threshold row
    (both thresholds null) / stored items (``qc_threshold_missing_items_total``).
    ``qc_unit_mismatch_count{stage}`` counter: messages rejected as unit_mismatch.
    ``qc_operator_repeat_defect{operator_id}`` counter: defective inspections (messages with at least
    one defective item) that are the operator's ``repeat_defects``-th (3) or later within the trailing
    ``repeat_window`` (1 h, event time). Alert on ``increase(qc_operator_repeat_defect_total[1h]) > 0``.
energy_usage
    ``iot_energy_usage_total{energy_type,unit,location}`` counter: usage summed in the standard unit
    (here and below, negative readings such as meter corrections are left out: counters only go up).
    ``iot_energy_cost_prediction{energy_type,location}`` counter: predicted cost (usage × cost_per_unit of
    dim_energy_type, in its currency), to compare with the utility's bill.
    ``iot_energy_peak_over_count{energy_type,location,window}`` counter: readings over max_threshold;
    ``window`` is ``peak`` inside the configured peak hours (those alarm at once), else ``off_peak``.
    ``iot_energy_unit_mismatch{stage}`` counter: messages rejected as unit_mismatch.
    ``iot_energy_carbon_emission{energy_type,location}`` counter: estimated emissions, gCO2
    (usage × carbon_factor).
robot_status
    ``robot_state_error_count{location}`` counter: reports with status.current = error.
    ``robot_battery_low_alerts{location}`` counter: reports with battery_level < 20
    (``EngineConfig.robot_battery_low``; each such report raises an alarm).
    ``robot_state_transition_rate`` gauge: status changes per robot-hour: changes between a robot's
    consecutive reports (by event time) / hours between consecutive reports
    (``robot_state_transitions_total{from,to}``, ``robot_observed_seconds_total``).
    ``robot_offline_timeout_count{location}`` counter: offline alarms of the periodic sweep.
    ``robot_avg_battery_drain_per_hour`` gauge, % per hour: battery drop between consecutive reports of a
    robot that is not charging and whose level did not rise / the hours between them
    (``robot_battery_drained_percent_total``, ``robot_discharging_seconds_total``). Both are
    approximate: two reports further apart than the offline timeout (10 min) still count a status
    change but add no time or drain (a silence is not observed time); the last report per robot is
    kept in memory only, so after a restart or a partition move a robot's first report is not paired.
    ``robot_status_enum_violation`` counter: messages rejected as invalid_enum (status outside
    idle|moving|charging|error).
environmental_readings
    ``env_anomaly_count_by_location{location,sensor_type}`` counter: readings outside their band.
    ``env_co2_over_1000_ppm_count{location}`` counter: CO2 readings above 1000 ppm (fixed, as named).
    ``env_temperature_range_breach{location,bound}`` counter: temperature readings below (``min``) or
    above (``max``) their band.
    ``env_unit_mismatch_count{stage}`` counter: messages rejected as unit_mismatch.
    ``env_missing_threshold_ratio{location}`` gauge: readings with no dim_env_threshold row valid at
    their time (both thresholds null) / readings (``env_threshold_missing_readings_total``,
    ``env_readings_total``).
device_status
    ``device_status_success_ratio{device_type}`` gauge: reports with ping_success / reports
    (``device_status_reports_total``; failures are ``device_ping_failure_count``).
    ``device_offline_timeout_count{location,source}`` counter: ``report``: timestamp − last_success_at
    beyond the device's timeout; ``sweep``: a silent device found by the periodic sweep.
    ``device_latency_p95{device_type}`` gauge, seconds: the 95th percentile of latency_ms over the last
    5 minutes, interpolated from ``device_latency_seconds{device_type}`` histogram buckets exactly as
    ``histogram_quantile(0.95, sum by (le, device_type) (rate(device_latency_seconds_bucket[5m])))``
    does — the histogram is the Prometheus way; the gauge is for dashboards without that query. It is
    refreshed when device reports arrive (minutes by the collector's clock) and keeps its last value
    while none do.
    ``device_ping_failure_count{device_type}`` counter: reports with ping_success = false.
    ``device_error_code_distribution{error_code,severity}`` counter: reports per error code, with the
    severity of dim_device_error_code (``none`` for an unknown code).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from anomaly.records import LATE_ARRIVAL_DOMAINS, OFFLINE_TIMEOUT, EngineConfig, Evaluation
from domains.base import INVALID_ENUM, UNIT_MISMATCH
from domains.decode import Rejected

log = logging.getLogger("anomaly.seed_metrics")

MAX_LABEL_VALUES = 200
OTHER = "_other"
NONE = "none"
# device_latency_seconds buckets (device limits are 100–380 ms).
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
                                      1.0, 2.5, 5.0)  # fmt: skip
LATENCY_WINDOW = timedelta(minutes=5)

_NO_THRESHOLD = pl.col("threshold_min").is_null() & pl.col("threshold_max").is_null()
_ANOMALY = pl.col("anomaly").fill_null(False)


def _positive(column: str) -> pl.Expr:
    """Sum of the positive values (a counter cannot go down: negative meter corrections are left out)."""
    return pl.col(column).filter(pl.col(column) > 0).sum()


class _Labels:
    """Bounded label values: at most ``limit`` distinct values per (metric, label), then ``_other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[tuple[str, str], set[str]] = {}

    def __call__(self, metric: str, label: str, value: object) -> str:
        text = NONE if value is None else str(value)
        seen = self.seen.setdefault((metric, label), set())
        if text in seen:
            return text
        if len(seen) >= self.limit:
            return OTHER
        seen.add(text)
        return text


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts (the last one is ``+Inf``)."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i == len(bounds):  # in the +Inf bucket: the highest finite bound, as Prometheus answers
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            below = cumulative[i - 1] if i > 0 else 0
            inside = count - below
            return lower + (bounds[i] - lower) * ((rank - below) / inside if inside else 1.0)
    return bounds[-1]


class _LatencyHistogram(Collector):
    """``device_latency_seconds{device_type}``, fed with per-batch bucket counts (no per-row observe).

    Also keeps the counts per wall-clock minute for the last :data:`LATENCY_WINDOW`, for the p95 gauge.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.lock = threading.Lock()
        self.totals: dict[str, tuple[list[float], float]] = {}  # device_type → (cumulative counts, sum)
        self.minutes: dict[str, dict[int, list[float]]] = {}  # device_type → minute → cumulative counts

    def add(self, device_type: str, cumulative: list[float], total: float, minute: int) -> None:
        """Add one batch's cumulative counts (``len(bounds) + 1``, the last is +Inf) and value sum."""
        with self.lock:
            counts, value_sum = self.totals.get(device_type, ([0.0] * len(cumulative), 0.0))
            self.totals[device_type] = ([a + b for a, b in zip(counts, cumulative, strict=True)], value_sum + total)
            slots = self.minutes.setdefault(device_type, {})
            slot = slots.get(minute, [0.0] * len(cumulative))
            slots[minute] = [a + b for a, b in zip(slot, cumulative, strict=True)]

    def recent_quantile(self, q: float, device_type: str, minute: int, window_minutes: int) -> float | None:
        """The ``q`` quantile of the minutes ``(minute − window_minutes, minute]``; drops older minutes."""
        with self.lock:
            slots = self.minutes.get(device_type, {})
            for old in [m for m in slots if m <= minute - window_minutes]:
                del slots[old]
            if not slots:
                return None
            summed = [sum(column) for column in zip(*slots.values(), strict=True)]
        return histogram_quantile(q, self.bounds, summed)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily("device_latency_seconds", _LATENCY_DOC, labels=["device_type"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("device_latency_seconds", _LATENCY_DOC, labels=["device_type"])
        with self.lock:
            for device_type, (counts, value_sum) in sorted(self.totals.items()):
                les = [*(repr(float(b)) for b in self.bounds), "+Inf"]
                family.add_metric([device_type], list(zip(les, counts, strict=True)), value_sum)
        yield family


_LATENCY_DOC = "Latency reported by devices (status.latency_ms), seconds"


class _Ratio:
    """A gauge = numerator / denominator of two counters, per label set, since the process started.

    ``owns_denominator=False`` when another ratio already counts the (shared) denominator counter.
    """

    def __init__(self, gauge: Gauge, numerator: Counter, denominator: Counter, owns_denominator: bool = True) -> None:
        self.gauge, self.numerator, self.denominator = gauge, numerator, denominator
        self.owns_denominator = owns_denominator
        self.sums: dict[tuple[str, ...], list[float]] = {}

    def add(self, labels: tuple[str, ...], numerator: float, denominator: float) -> None:
        """Add one batch's counts of a label set and refresh its gauge."""
        if denominator <= 0:
            return
        sums = self.sums.setdefault(labels, [0.0, 0.0])
        sums[0] += numerator
        sums[1] += denominator
        if numerator:
            self.numerator.labels(*labels).inc(numerator)
        if self.owns_denominator:
            self.denominator.labels(*labels).inc(denominator)
        self.gauge.labels(*labels).set(sums[0] / sums[1])


class SeedMetrics:
    """The seed-named metrics, registered in ``registry``; see the module docstring for definitions."""

    def __init__(
        self,
        registry: CollectorRegistry,
        repeat_defects: int = 3,
        repeat_window: timedelta = timedelta(hours=1),
        max_label_values: int = MAX_LABEL_VALUES,
    ) -> None:
        self.repeat_defects = repeat_defects
        self.repeat_window = repeat_window
        self.label = _Labels(max_label_values)
        r = registry

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=r)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r)

        eq = ("location", "sensor_type")
        self.equipment_anomaly_rate = _Ratio(
            gauge("equipment_anomaly_rate", "Share of stored equipment readings outside their threshold band", eq),
            counter("equipment_anomalous_measurements", "Stored equipment readings outside their band", eq),
            counter("equipment_measurements", "Stored equipment readings", eq),
        )
        self.late_arrival_count = counter(
            "late_arrival_count", "Stored messages ingested more than 10 min after their timestamp", ["domain"])
        qc = ("location", "product_code")
        qc_items = counter("qc_inspected_items", "Stored QC inspection items", qc)
        self.qc_defect_rate = _Ratio(
            gauge("qc_defect_rate", "Share of QC items outside their threshold (defects)", qc),
            counter("qc_defective_items", "QC items outside their threshold", qc), qc_items,
        )
        self.qc_threshold_miss_rate = _Ratio(
            gauge("qc_threshold_miss_rate", "Share of QC items with no dim_qc_threshold row", qc),
            counter("qc_threshold_missing_items", "QC items with no dim_qc_threshold row", qc), qc_items,
            owns_denominator=False,
        )
        self.qc_unit_mismatch_count = counter(
            "qc_unit_mismatch_count", "QC messages rejected as unit_mismatch", ["stage"])
        self.qc_operator_repeat_defect = counter(
            "qc_operator_repeat_defect",
            f"Defective inspections that are the operator's {repeat_defects}th or later within "
            f"{repeat_window.total_seconds() / 3600:g} h", ["operator_id"],
        )  # fmt: skip
        en = ("energy_type", "location")
        self.iot_energy_usage_total = counter(
            "iot_energy_usage_total", "Energy used, in the energy type's standard unit", ["energy_type", "unit",
                                                                                           "location"])
        self.iot_energy_cost_prediction = counter(
            "iot_energy_cost_prediction", "Predicted energy cost (usage x cost_per_unit)", en)
        self.iot_energy_peak_over_count = counter(
            "iot_energy_peak_over_count", "Energy readings over max_threshold (window: peak hours or not)",
            [*en, "window"])
        self.iot_energy_unit_mismatch = counter(
            "iot_energy_unit_mismatch", "Energy messages rejected as unit_mismatch", ["stage"])
        self.iot_energy_carbon_emission = counter(
            "iot_energy_carbon_emission", "Estimated carbon emissions, gCO2 (usage x carbon_factor)", en)
        self.robot_state_error_count = counter(
            "robot_state_error_count", "Robot reports with status error", ["location"])
        self.robot_battery_low_alerts = counter(
            "robot_battery_low_alerts", "Robot reports with battery_level below the low limit", ["location"])
        self.robot_state_transitions = counter(
            "robot_state_transitions", "Status changes between consecutive reports of a robot", ["from", "to"])
        self.robot_observed_seconds = counter(
            "robot_observed_seconds", "Seconds between consecutive reports of a robot (silences excluded)")
        self.robot_state_transition_rate = gauge(
            "robot_state_transition_rate", "Robot status changes per robot-hour")
        self.robot_offline_timeout_count = counter(
            "robot_offline_timeout_count", "Robots found offline by the sweep", ["location"])
        self.robot_battery_drained = counter(
            "robot_battery_drained_percent", "Battery percentage points drained while not charging")
        self.robot_discharging_seconds = counter(
            "robot_discharging_seconds", "Seconds between consecutive discharging reports of a robot")
        self.robot_avg_battery_drain_per_hour = gauge(
            "robot_avg_battery_drain_per_hour", "Average robot battery drain while not charging, % per hour")
        self.robot_status_enum_violation = counter(
            "robot_status_enum_violation", "Robot messages rejected as invalid_enum")
        self.env_anomaly_count_by_location = counter(
            "env_anomaly_count_by_location", "Environment readings outside their band", ["location", "sensor_type"])
        self.env_co2_over_1000_ppm_count = counter(
            "env_co2_over_1000_ppm_count", "CO2 readings above 1000 ppm", ["location"])
        self.env_temperature_range_breach = counter(
            "env_temperature_range_breach", "Temperature readings outside their band", ["location", "bound"])
        self.env_unit_mismatch_count = counter(
            "env_unit_mismatch_count", "Environment messages rejected as unit_mismatch", ["stage"])
        self.env_missing_threshold_ratio = _Ratio(
            gauge("env_missing_threshold_ratio", "Share of environment readings with no valid threshold",
                  ["location"]),
            counter("env_threshold_missing_readings", "Environment readings with no valid threshold", ["location"]),
            counter("env_readings", "Stored environment readings", ["location"]),
        )
        self.device_ping_failure_count = counter(
            "device_ping_failure_count", "Device reports with ping_success false", ["device_type"])
        self.device_status_reports = counter("device_status_reports", "Stored device reports", ["device_type"])
        self.device_status_success_ratio = gauge(
            "device_status_success_ratio", "Share of device reports with ping_success", ["device_type"])
        self._device_sums: dict[str, list[float]] = {}
        self.device_offline_timeout_count = counter(
            "device_offline_timeout_count", "Device timeouts (source: report or sweep)", ["location", "source"])
        self.device_latency = _LatencyHistogram(LATENCY_BUCKETS)
        r.register(self.device_latency)
        self.device_latency_p95 = gauge(
            "device_latency_p95", "95th percentile of device latency over the last 5 minutes, seconds",
            ["device_type"])
        self.device_error_code_distribution = counter(
            "device_error_code_distribution", "Device reports per error code", ["error_code", "severity"])
        # Small state: last report per robot, recent defective inspections per operator.
        self._robots = pl.DataFrame(schema=_ROBOT_STATE)
        self._robot_sums = {"transitions": 0.0, "observed_s": 0.0, "discharging_s": 0.0, "drained": 0.0}
        self._defects = pl.DataFrame(schema=_DEFECT_STATE)
        self._unit_mismatch = {
            "qc_result": self.qc_unit_mismatch_count,
            "energy_usage": self.iot_energy_unit_mismatch,
            "environmental_readings": self.env_unit_mismatch_count,
        }
        self._observers = {
            "equipment_metrics": self._equipment, "qc_result": self._qc, "energy_usage": self._energy,
            "robot_status": self._robot, "environmental_readings": self._environment, "device_status": self._device,
        }  # fmt: skip

    # -- entry points ---------------------------------------------------------------------------

    def observe(self, evaluation: Evaluation, config: EngineConfig, now: datetime) -> None:
        """Update the metrics of ``evaluation.domain`` from one evaluated batch."""
        try:
            rows = evaluation.rows
            if rows.height:
                self._observers[evaluation.domain](rows, config, now)
            counter = self._unit_mismatch.get(evaluation.domain)
            if counter is not None and evaluation.dlq.height:
                rejected = evaluation.dlq.filter(pl.col("rejected") & (pl.col("reason") == UNIT_MISMATCH)).height
                if rejected:
                    counter.labels("engine").inc(rejected)
        except Exception:  # metrics must never stop the pipeline
            log.exception("seed metrics not updated", extra={"domain": evaluation.domain})

    def observe_rejects(self, domain: str, rejected: Sequence[Rejected]) -> None:
        """Count the decoder's rejects (unit_mismatch from the unit catalogue, invalid_enum)."""
        if not rejected:
            return
        reasons = Tally(r.reason for r in rejected)
        counter = self._unit_mismatch.get(domain)
        if counter is not None and reasons[UNIT_MISMATCH]:
            counter.labels("decode").inc(reasons[UNIT_MISMATCH])
        if domain == "robot_status" and reasons[INVALID_ENUM]:
            self.robot_status_enum_violation.inc(reasons[INVALID_ENUM])

    def observe_sweep(self, alarms: pl.DataFrame) -> None:
        """Count the offline sweep's alarms (robots and devices that stopped reporting)."""
        try:
            if not alarms.height:
                return
            found = alarms.filter(pl.col("rule") == OFFLINE_TIMEOUT).group_by("domain", "location").len()
            for domain, location, n in found.iter_rows():
                if domain == "robot_status":
                    self.robot_offline_timeout_count.labels(self._l("robot_offline", "location", location)).inc(n)
                elif domain == "device_status":
                    place = self._l("device_offline", "location", location)
                    self.device_offline_timeout_count.labels(place, "sweep").inc(n)
        except Exception:
            log.exception("seed metrics not updated from the sweep")

    def _l(self, metric: str, label: str, value: object) -> str:
        return self.label(metric, label, value)

    # -- per domain -----------------------------------------------------------------------------

    @staticmethod
    def _late(config: EngineConfig) -> pl.Expr:
        """Late messages, counted once each: on their item 0 (the decoder rejects empty arrays and the
        engine keeps or rejects whole messages, so every kept message has exactly one row with item 0)."""
        late = ((pl.col("ingestion_timestamp") - pl.col("timestamp")) > config.late_after).fill_null(False)
        return (late & (pl.col("item_index") == 0)).sum()

    def _count_late(self, domain: str, total: int) -> None:
        if domain in LATE_ARRIVAL_DOMAINS and total:
            self.late_arrival_count.labels(domain).inc(total)

    def _equipment(self, rows: pl.DataFrame, config: EngineConfig, now: datetime) -> None:
        agg = rows.group_by("location", "sensor_type").agg(n=pl.len(), anomalous=_ANOMALY.sum(),
                                                           late=self._late(config))  # fmt: skip
        for location, sensor_type, n, anomalous, _late in agg.iter_rows():
            labels = (self._l("equipment", "location", location), self._l("equipment", "sensor_type", sensor_type))
            self.equipment_anomaly_rate.add(labels, anomalous, n)
        self._count_late("equipment_metrics", int(agg["late"].sum()))

    def _qc(self, rows: pl.DataFrame, config: EngineConfig, now: datetime) -> None:
        agg = (
            rows.group_by("location", "product_code")
            .agg(n=pl.len(), defects=_ANOMALY.sum(), missing=_NO_THRESHOLD.sum(), late=self._late(config))
        )
        for location, product, n, defects, missing, _late in agg.iter_rows():
            labels = (self._l("qc", "location", location), self._l("qc", "product_code", product))
            self.qc_defect_rate.add(labels, defects, n)
            self.qc_threshold_miss_rate.add(labels, missing, n)
        self._count_late("qc_result", int(agg["late"].sum()))
        if int(agg["defects"].sum()):
            self._repeat_defects(rows)

    def _repeat_defects(self, rows: pl.DataFrame) -> None:
        """Defective inspections that are their operator's N-th or later within the trailing window."""
        events = (
            rows.filter(_ANOMALY)
            .unique(["kafka_partition", "kafka_offset"])
            .select(pl.col("operator_id").fill_null(NONE), "timestamp", _new=pl.lit(True))
        )
        both = (
            pl.concat([self._defects.with_columns(_new=pl.lit(False)), events])
            .sort("operator_id", "timestamp")
            .with_columns(_one=pl.lit(1, pl.Int64))
            .with_columns(_n=pl.col("_one").rolling_sum_by("timestamp", self.repeat_window).over("operator_id"))
        )
        repeats = both.filter(pl.col("_new") & (pl.col("_n") >= self.repeat_defects)).group_by("operator_id").len()
        for operator, n in repeats.iter_rows():
            self.qc_operator_repeat_defect.labels(self._l("qc_operator", "operator_id", operator)).inc(n)
        recent = pl.col("timestamp") > pl.col("timestamp").max() - self.repeat_window
        self._defects = both.filter(recent).select(list(_DEFECT_STATE))

    def _energy(self, rows: pl.DataFrame, config: EngineConfig, now: datetime) -> None:
        hour = pl.col("timestamp").dt.hour()
        peak = pl.lit(False)
        for start, end in config.peak_hours:
            peak = peak | ((hour >= start) & (hour < end))
        agg = rows.group_by("energy_type", "standard_unit", "location").agg(
            usage=_positive("usage_std"), cost=_positive("cost"), carbon=_positive("carbon_g"),
            peak_over=(_ANOMALY & peak).sum(), off_peak_over=(_ANOMALY & ~peak).sum(), late=self._late(config),
        )  # fmt: skip
        for energy_type, unit, location, usage, cost, carbon, peak_over, off_peak_over, _late in agg.iter_rows():
            kind, place = self._l("energy", "energy_type", energy_type), self._l("energy", "location", location)
            if usage:
                self.iot_energy_usage_total.labels(kind, self._l("energy", "unit", unit), place).inc(usage)
            if cost:
                self.iot_energy_cost_prediction.labels(kind, place).inc(cost)
            if carbon:
                self.iot_energy_carbon_emission.labels(kind, place).inc(carbon)
            if peak_over:
                self.iot_energy_peak_over_count.labels(kind, place, "peak").inc(peak_over)
            if off_peak_over:
                self.iot_energy_peak_over_count.labels(kind, place, "off_peak").inc(off_peak_over)
        self._count_late("energy_usage", int(agg["late"].sum()))

    def _robot(self, rows: pl.DataFrame, config: EngineConfig, now: datetime) -> None:
        agg = rows.group_by("location").agg(
            errors=(pl.col("status_current") == "error").sum(),
            low=(pl.col("battery_level") < config.robot_battery_low).sum(),
        )
        for location, errors, low in agg.iter_rows():
            place = self._l("robot", "location", location)
            if errors:
                self.robot_state_error_count.labels(place).inc(errors)
            if low:
                self.robot_battery_low_alerts.labels(place).inc(low)
        self._robot_pairs(rows, config)

    def _robot_pairs(self, rows: pl.DataFrame, config: EngineConfig) -> None:
        """Transitions, observed time and battery drain between consecutive reports of each robot."""
        reports = rows.select(
            "robot_id", pl.col("timestamp").dt.epoch("us").alias("ts"), pl.col("status_current").alias("status"),
            pl.col("battery_level").alias("battery"), _new=pl.lit(True),
        )  # fmt: skip
        max_gap_us = config.robot_offline_timeout // timedelta(microseconds=1)
        prev = pl.col("ts").shift().over("robot_id")
        both = (
            pl.concat([self._robots.with_columns(_new=pl.lit(False)), reports])
            .sort("robot_id", "ts", maintain_order=True)
            .with_columns(_gap=pl.col("ts") - prev, _prev_status=pl.col("status").shift().over("robot_id"),
                          _prev_battery=pl.col("battery").shift().over("robot_id"))
        )  # fmt: skip
        paired = both.filter(pl.col("_new") & (pl.col("_gap") > 0))
        observed = pl.col("_gap") <= max_gap_us
        discharging = observed & (pl.col("status") != "charging") & (pl.col("battery") <= pl.col("_prev_battery"))
        totals = paired.select(
            observed_us=pl.col("_gap").filter(observed).sum(),
            drained=(pl.col("_prev_battery") - pl.col("battery")).filter(discharging).sum(),
            discharging_us=pl.col("_gap").filter(discharging).sum(),
        )
        observed_us, drained, discharging_us = totals.row(0)
        changes = paired.filter(pl.col("status") != pl.col("_prev_status")).group_by("_prev_status", "status").len()
        for before, after, n in changes.iter_rows():
            self.robot_state_transitions.labels(before, after).inc(n)
        sums = self._robot_sums
        sums["transitions"] += int(changes["len"].sum())
        if observed_us:
            sums["observed_s"] += observed_us / 1e6
            self.robot_observed_seconds.inc(observed_us / 1e6)
        if discharging_us:
            sums["discharging_s"] += discharging_us / 1e6
            sums["drained"] += drained
            self.robot_discharging_seconds.inc(discharging_us / 1e6)
            if drained:
                self.robot_battery_drained.inc(drained)
        if sums["observed_s"] > 0:
            self.robot_state_transition_rate.set(sums["transitions"] / (sums["observed_s"] / 3600))
        if sums["discharging_s"] > 0:
            self.robot_avg_battery_drain_per_hour.set(sums["drained"] / (sums["discharging_s"] / 3600))
        # ``both`` is sorted by robot and time: the last row of each robot is its newest report.
        self._robots = both.unique("robot_id", keep="last", maintain_order=True).select(list(_ROBOT_STATE))

    def _environment(self, rows: pl.DataFrame, config: EngineConfig, now: datetime) -> None:
        temperature = pl.col("sensor_type") == "temperature"
        agg = rows.group_by("location", "sensor_type").agg(
            n=pl.len(), anomalies=_ANOMALY.sum(), missing=_NO_THRESHOLD.sum(),
            co2_over=((pl.col("sensor_type") == config.co2_sensor_type) & (pl.col("value") > 1000.0)).sum(),
            too_hot=(temperature & _ANOMALY & (pl.col("anomaly_rule") == "max_threshold")).sum(),
            too_cold=(temperature & _ANOMALY & (pl.col("anomaly_rule") == "min_threshold")).sum(),
            late=self._late(config),
        )  # fmt: skip
        per_location: dict[str, list[int]] = {}
        for location, sensor_type, n, anomalies, missing, co2_over, too_hot, too_cold, _late in agg.iter_rows():
            place = self._l("env", "location", location)
            if anomalies:
                self.env_anomaly_count_by_location.labels(place, self._l("env", "sensor_type", sensor_type)).inc(
                    anomalies)
            if co2_over:
                self.env_co2_over_1000_ppm_count.labels(place).inc(co2_over)
            if too_hot:
                self.env_temperature_range_breach.labels(place, "max").inc(too_hot)
            if too_cold:
                self.env_temperature_range_breach.labels(place, "min").inc(too_cold)
            sums = per_location.setdefault(place, [0, 0])
            sums[0] += missing
            sums[1] += n
        for place, (missing, n) in per_location.items():
            self.env_missing_threshold_ratio.add((place,), missing, n)
        self._count_late("environmental_readings", int(agg["late"].sum()))

    def _device(self, rows: pl.DataFrame, config: EngineConfig, now: datetime) -> None:
        latency_s = pl.col("status_latency_ms").cast(pl.Float64) / 1000.0
        buckets = [(latency_s <= b).sum().alias(f"_le{i}") for i, b in enumerate(LATENCY_BUCKETS)]
        agg = rows.group_by("device_type", "location", "error_code", "error_severity").agg(
            *buckets, n=pl.len(), failures=(~pl.col("status_ping_success")).fill_null(False).sum(),
            timeouts=(pl.col("anomaly_rule") == OFFLINE_TIMEOUT).fill_null(False).sum(),
            latency_n=latency_s.count(), latency_sum=latency_s.sum(),
        )  # fmt: skip
        by_location = agg.group_by("location").agg(pl.col("timeouts").sum())
        codes = agg.filter(pl.col("error_code").is_not_null()).group_by("error_code", "error_severity").agg(
            pl.col("n").sum())
        per_type = agg.group_by("device_type").agg(pl.exclude("location", "error_code", "error_severity").sum())
        for location, timeouts in by_location.iter_rows():
            if timeouts:
                self.device_offline_timeout_count.labels(self._l("device_offline", "location", location),
                                                         "report").inc(timeouts)  # fmt: skip
        for code, severity, n in codes.iter_rows():
            self.device_error_code_distribution.labels(self._l("device", "error_code", code),
                                                       self._l("device", "severity", severity)).inc(n)  # fmt: skip
        minute = int(now.timestamp() // 60)
        window = int(LATENCY_WINDOW.total_seconds() // 60)
        for row in per_type.iter_rows(named=True):
            kind = self._l("device", "device_type", row["device_type"])
            sums = self._device_sums.setdefault(kind, [0.0, 0.0])
            sums[0] += row["n"] - row["failures"]
            sums[1] += row["n"]
            self.device_status_reports.labels(kind).inc(row["n"])
            if row["failures"]:
                self.device_ping_failure_count.labels(kind).inc(row["failures"])
            self.device_status_success_ratio.labels(kind).set(sums[0] / sums[1])
            if row["latency_n"]:
                cumulative = [float(row[f"_le{i}"]) for i in range(len(LATENCY_BUCKETS))] + [float(row["latency_n"])]
                self.device_latency.add(kind, cumulative, float(row["latency_sum"]), minute)
                p95 = self.device_latency.recent_quantile(0.95, kind, minute, window)
                if p95 is not None:
                    self.device_latency_p95.labels(kind).set(p95)


_ROBOT_STATE: dict[str, pl.DataType] = {
    "robot_id": pl.String(), "ts": pl.Int64(), "status": pl.String(), "battery": pl.Float64(),
}  # fmt: skip
_DEFECT_STATE: dict[str, pl.DataType] = {"operator_id": pl.String(), "timestamp": pl.Datetime("us", "UTC")}
