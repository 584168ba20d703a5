"""The seed-named metrics (SPEC §2.4): values against counts computed independently with DuckDB from
the rows the engine keeps, hand-made cases for the stateful ones, and a running collector's
``/metrics`` against its Parquet files (real broker)."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from anomaly import AnomalyEngine, Dimensions, EngineConfig, EngineState, Evaluation
from anomaly.samples import build_samples
from anomaly.seed_metrics import LATENCY_BUCKETS, SeedMetrics
from domains import DOMAINS
from domains.decode import BatchDecoder, MessageBatch, Rejected
from tests.anomaly.helpers import NOW, message, rows_of
from trafficgen import TrafficGenerator
from trafficgen.messages import product_code

SEED_NAMES = (
    "equipment_anomaly_rate", "late_arrival_count", "qc_defect_rate", "qc_threshold_miss_rate",
    "qc_unit_mismatch_count", "qc_operator_repeat_defect", "iot_energy_usage_total", "iot_energy_cost_prediction",
    "iot_energy_peak_over_count", "iot_energy_unit_mismatch", "iot_energy_carbon_emission", "robot_state_error_count",
    "robot_battery_low_alerts", "robot_state_transition_rate", "robot_offline_timeout_count",
    "robot_avg_battery_drain_per_hour", "robot_status_enum_violation", "env_anomaly_count_by_location",
    "env_co2_over_1000_ppm_count", "env_temperature_range_breach", "env_unit_mismatch_count",
    "env_missing_threshold_ratio", "device_status_success_ratio", "device_offline_timeout_count",
    "device_latency_p95", "device_ping_failure_count", "device_error_code_distribution",
)  # fmt: skip
LATE_DOMAINS = ("equipment_metrics", "qc_result", "energy_usage", "environmental_readings")
UNIT_METRICS = {"qc_result": "qc_unit_mismatch_count_total", "energy_usage": "iot_energy_unit_mismatch_total",
                "environmental_readings": "env_unit_mismatch_count_total"}  # fmt: skip


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name``: sorted label items → value."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect() for s in family.samples if s.name == name
    }  # fmt: skip


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist: a counter never incremented)."""
    return registry.get_sample_value(name, labels) or 0.0


def p95_from_buckets(bounds: list[float], cumulative: list[int]) -> float:
    """Prometheus' histogram_quantile(0.95) written out again for the check."""
    rank = 0.95 * cumulative[-1]
    prev_bound, prev_count = 0.0, 0
    for bound, count in zip([*bounds, float("inf")], cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return bounds[-1]
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    raise AssertionError("unreachable")


# -- generated traffic through decoder, engine and metrics --------------------------------------


def trapped_dims() -> Dimensions:
    """The sample tables plus units that the engine (not the decoder) rejects in some traffic, and
    tighter vibration, electricity and zone temperature limits so that more readings exceed them."""
    t = build_samples()
    t["dim_thresholds"] = t["dim_thresholds"].with_columns(
        max_threshold=pl.when(pl.col("sensor_type") == "vibration").then(pl.col("max_threshold") * 0.75)
        .otherwise(pl.col("max_threshold"))
    )  # fmt: skip
    qc = t["dim_qc_threshold"]
    t["dim_qc_threshold"] = qc.with_columns(
        unit=pl.when((pl.col("item_id") == "WEIGHT") & pl.col("product_code").str.starts_with("P1"))
        .then(pl.lit("kg")).otherwise(pl.col("unit"))
    )  # fmt: skip
    t["dim_energy_threshold"] = t["dim_energy_threshold"].with_columns(
        max_threshold=pl.when(pl.col("energy_type") == "electricity").then(pl.col("max_threshold") * 0.6)
        .otherwise(pl.col("max_threshold"))
    )  # fmt: skip
    t["dim_energy_type"] = t["dim_energy_type"].filter(~((pl.col("energy_type") == "water") & (pl.col("unit") == "L")))
    humid = t["dim_env_threshold"].filter(pl.col("sensor_type") == "humidity").with_columns(
        location=pl.lit("line_a_zone_1"), expected_unit=pl.lit("%RH"))
    temperature = t["dim_env_threshold"].filter(pl.col("sensor_type") == "temperature", pl.col("location").is_null())
    tight = pl.concat([temperature.with_columns(location=pl.lit("line_a_zone_2"), max_threshold=pl.lit(24.0)),
                       temperature.with_columns(location=pl.lit("line_b_zone_1"), min_threshold=pl.lit(24.0))])
    t["dim_env_threshold"] = pl.concat([t["dim_env_threshold"], humid, tight])
    return Dimensions(t)


@dataclass
class Run:
    registry: CollectorRegistry
    config: EngineConfig
    dims: Dimensions
    rows: dict[str, pl.DataFrame]
    dlq: dict[str, pl.DataFrame]
    expected_rejects: dict[tuple[str, str], int]  # (domain, reason) the generator says the decoder must give
    decoder_rejects: dict[tuple[str, str], int] = field(default_factory=dict)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for name, frame in self.rows.items():
            con.register(name, frame.to_arrow())
        for name in ("dim_qc_threshold", "dim_env_threshold", "dim_device_error_code"):
            con.register(name, self.dims[name].to_arrow())
        return con.sql(query).fetchall()


@pytest.fixture(scope="module")
def run() -> Run:
    # 6,000 messages, 1/6 s apart: 08:52 → 09:09 UTC, across the start of the 09-12 peak window.
    generator = TrafficGenerator(
        seed=5, start=datetime(2025, 5, 24, 8, 52, tzinfo=UTC),
        fault_rates={"wrong_unit": 0.02, "bad_enum": 0.02, "late_arrival": 0.03, "missing_field": 0.01},
    )  # fmt: skip
    messages = generator.generate(6000)
    dims, config = trapped_dims(), EngineConfig()
    engine = AnomalyEngine(dims, EngineState(), config)
    registry = CollectorRegistry()
    seed = SeedMetrics(registry)
    rows: dict[str, list[pl.DataFrame]] = defaultdict(list)
    dlq: dict[str, list[pl.DataFrame]] = defaultdict(list)
    expected: dict[tuple[str, str], int] = defaultdict(int)
    decoded_rejects: dict[tuple[str, str], int] = defaultdict(int)
    for start in range(0, len(messages), 500):  # batches like the collector's: per topic, Kafka order
        by_domain: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        for offset, m in enumerate(messages[start:start + 500], start):
            by_domain[m.domain].append((offset, m))
            if m.expected_reason:
                expected[(m.domain, m.expected_reason)] += 1
        for name, batch_messages in by_domain.items():
            d, n = DOMAINS[name], len(batch_messages)
            batch = MessageBatch(d.topic.name, [m.value for _, m in batch_messages], [0] * n,
                                 [o for o, _ in batch_messages], [0] * n)  # fmt: skip
            decoded = BatchDecoder(d).decode(batch, NOW)
            seed.observe_rejects(name, decoded.rejected)
            for r in decoded.rejected:
                decoded_rejects[(name, r.reason)] += 1
            evaluation = engine.evaluate(name, decoded.rows, NOW)
            seed.observe(evaluation, config, NOW)
            rows[name].append(evaluation.rows)
            dlq[name].append(evaluation.dlq)
    return Run(registry, config, dims, {k: pl.concat(v) for k, v in rows.items()},
               {k: pl.concat(v) for k, v in dlq.items()}, dict(expected), dict(decoded_rejects))  # fmt: skip


def test_every_seed_name_is_registered_in_the_collector_registry() -> None:
    from collector.metrics import REGISTRY

    names = {family.name for family in REGISTRY.collect()}  # a counter's family name has no _total
    assert {n.removesuffix("_total") for n in SEED_NAMES} - names == set()
    assert "device_latency_seconds" in names


def test_equipment_anomaly_rate_and_late_arrivals(run: Run) -> None:
    expected = run.sql("SELECT location, sensor_type, count(*), count(*) FILTER (WHERE anomaly) "
                       "FROM equipment_metrics GROUP BY ALL")
    assert 0 < sum(a for *_, a in expected) < sum(n for *_, n, _ in expected), "some anomalies, not all"
    for location, sensor_type, n, anomalous in expected:
        labels = {"location": location, "sensor_type": sensor_type}
        assert value(run.registry, "equipment_measurements_total", **labels) == n
        assert value(run.registry, "equipment_anomalous_measurements_total", **labels) == anomalous
        assert value(run.registry, "equipment_anomaly_rate", **labels) == pytest.approx(anomalous / n)
    assert len(samples(run.registry, "equipment_anomaly_rate")) == len(expected)
    for domain in LATE_DOMAINS:
        [(late,)] = run.sql(f"SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {domain} "
                            "WHERE ingestion_timestamp - \"timestamp\" > INTERVAL 10 MINUTE")
        assert late > 0 and value(run.registry, "late_arrival_count_total", domain=domain) == late, domain


def test_qc_rates_unit_mismatch_and_repeat_defects(run: Run) -> None:
    expected = run.sql("""
        SELECT location, product_code, count(*), count(*) FILTER (WHERE value < threshold_min OR value > threshold_max),
               count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM dim_qc_threshold t WHERE t.item_id = q.item_id
                                AND t.product_code = q.product_code AND t.inspection_type = q.inspection_type))
        FROM qc_result q GROUP BY ALL""")
    assert sum(e[4] for e in expected) > 0
    for location, product, n, defects, missing in expected:
        labels = {"location": location, "product_code": product}
        assert value(run.registry, "qc_inspected_items_total", **labels) == n
        assert value(run.registry, "qc_defective_items_total", **labels) == defects
        assert value(run.registry, "qc_defect_rate", **labels) == pytest.approx(defects / n)
        assert value(run.registry, "qc_threshold_missing_items_total", **labels) == missing
        assert value(run.registry, "qc_threshold_miss_rate", **labels) == pytest.approx(missing / n)
    # A defective inspection that is its operator's 3rd or later within the hour (messages in event-time order).
    repeats = dict(run.sql("""
        WITH d AS (SELECT DISTINCT operator_id, "timestamp" AS ts, kafka_offset FROM qc_result WHERE anomaly)
        SELECT a.operator_id, count(*) FROM d a
        WHERE (SELECT count(*) FROM d b WHERE b.operator_id = a.operator_id AND b.ts <= a.ts
               AND b.ts > a.ts - INTERVAL 1 HOUR) >= 3
        GROUP BY ALL"""))
    assert repeats, "the traffic should hold repeated defects"
    got = {dict(k)["operator_id"]: v for k, v in samples(run.registry, "qc_operator_repeat_defect_total").items()}
    assert got == repeats


def test_unit_mismatch_and_enum_violation_by_stage(run: Run) -> None:
    for domain, metric in UNIT_METRICS.items():
        decode = run.expected_rejects.get((domain, "unit_mismatch"), 0)
        engine = run.dlq[domain].filter(pl.col("rejected") & (pl.col("reason") == "unit_mismatch")).height
        assert decode > 0 and engine > 0, domain
        assert value(run.registry, metric, stage="decode") == decode
        assert value(run.registry, metric, stage="engine") == engine
    violations = run.expected_rejects[("robot_status", "invalid_enum")]
    assert violations > 0 and value(run.registry, "robot_status_enum_violation_total") == violations


def test_energy_usage_cost_carbon_and_exceedances(run: Run) -> None:
    expected = run.sql("""
        SELECT energy_type, standard_unit, location, sum(usage_std) FILTER (WHERE usage_std > 0),
               sum(cost) FILTER (WHERE cost > 0), sum(carbon_g) FILTER (WHERE carbon_g > 0),
               count(*) FILTER (WHERE usage_std > threshold_max AND (hour("timestamp") BETWEEN 9 AND 11
                                                                     OR hour("timestamp") BETWEEN 17 AND 19)),
               count(*) FILTER (WHERE usage_std > threshold_max)
        FROM energy_usage GROUP BY ALL""")
    for energy_type, unit, location, usage, cost, carbon, peak, over in expected:
        where = {"energy_type": energy_type, "location": location}
        assert value(run.registry, "iot_energy_usage_total", unit=unit or "none", **where) == pytest.approx(usage or 0)
        assert value(run.registry, "iot_energy_cost_prediction_total", **where) == pytest.approx(cost or 0)
        assert value(run.registry, "iot_energy_carbon_emission_total", **where) == pytest.approx(carbon or 0)
        assert value(run.registry, "iot_energy_peak_over_count_total", window="peak", **where) == peak
        assert value(run.registry, "iot_energy_peak_over_count_total", window="off_peak", **where) == over - peak
    assert sum(e[-2] for e in expected) > 0 and sum(e[-1] - e[-2] for e in expected) > 0, "both windows"


def test_robot_counts_transitions_and_battery_drain(run: Run) -> None:
    for location, errors, low in run.sql("SELECT location, count(*) FILTER (WHERE status_current = 'error'), "
                                         "count(*) FILTER (WHERE battery_level < 20) FROM robot_status GROUP BY 1"):
        assert value(run.registry, "robot_state_error_count_total", location=location) == errors
        assert value(run.registry, "robot_battery_low_alerts_total", location=location) == low
    pairs = """
        WITH r AS (SELECT status_current AS s, battery_level AS b, epoch_us("timestamp") AS ts,
                          lag(status_current) OVER w AS ps, lag(battery_level) OVER w AS pb,
                          lag(epoch_us("timestamp")) OVER w AS pts
                   FROM robot_status WINDOW w AS (PARTITION BY robot_id ORDER BY "timestamp", kafka_offset))
        SELECT * FROM r WHERE ts > pts"""
    transitions = run.sql(f"SELECT ps, s, count(*) FROM ({pairs}) WHERE s <> ps GROUP BY ALL")
    got = {tuple(v for _, v in k): n for k, n in samples(run.registry, "robot_state_transitions_total").items()}
    assert got == {(a, b): n for a, b, n in transitions} and got
    [(observed, drained, discharging)] = run.sql(f"""
        SELECT sum(ts - pts) / 1e6, sum(pb - b) FILTER (WHERE s <> 'charging' AND b <= pb),
               sum(ts - pts) FILTER (WHERE s <> 'charging' AND b <= pb) / 1e6
        FROM ({pairs}) WHERE ts - pts <= 600e6""")
    assert value(run.registry, "robot_observed_seconds_total") == pytest.approx(observed)
    assert value(run.registry, "robot_state_transition_rate") == pytest.approx(
        sum(n for *_, n in transitions) / (observed / 3600))
    assert value(run.registry, "robot_battery_drained_percent_total") == pytest.approx(drained)
    assert value(run.registry, "robot_avg_battery_drain_per_hour") == pytest.approx(drained / (discharging / 3600))


def test_environment_counts_and_missing_threshold_ratio(run: Run) -> None:
    expected = run.sql("""
        SELECT location, sensor_type, count(*) FILTER (WHERE anomaly),
               count(*) FILTER (WHERE sensor_type = 'co2' AND value > 1000),
               count(*) FILTER (WHERE sensor_type = 'temperature' AND value > threshold_max),
               count(*) FILTER (WHERE sensor_type = 'temperature' AND value < threshold_min)
        FROM environmental_readings GROUP BY ALL""")
    co2: dict[str, int] = defaultdict(int)
    hot: dict[str, int] = defaultdict(int)
    cold: dict[str, int] = defaultdict(int)
    for location, sensor_type, anomalies, over, too_hot, too_cold in expected:
        assert value(run.registry, "env_anomaly_count_by_location_total", location=location,
                     sensor_type=sensor_type) == anomalies  # fmt: skip
        co2[location] += over
        hot[location] += too_hot
        cold[location] += too_cold
    assert sum(co2.values()) > 0 and sum(hot.values()) > 0 and sum(cold.values()) > 0
    breach = "env_temperature_range_breach_total"
    for location in co2:
        assert value(run.registry, "env_co2_over_1000_ppm_count_total", location=location) == co2[location]
        assert value(run.registry, breach, location=location, bound="max") == hot[location]
        assert value(run.registry, breach, location=location, bound="min") == cold[location]
    missing = run.sql("""
        SELECT location, count(*), count(*) FILTER (WHERE NOT EXISTS (
            SELECT 1 FROM dim_env_threshold t WHERE t.sensor_type = e.sensor_type
            AND (t.location IS NULL OR t.location = e.location)
            AND (t.valid_from IS NULL OR t.valid_from <= e."timestamp")
            AND (t.valid_to IS NULL OR e."timestamp" < t.valid_to)))
        FROM environmental_readings e GROUP BY 1""")
    assert any(m for _, _, m in missing)
    for location, n, m in missing:
        assert value(run.registry, "env_readings_total", location=location) == n
        assert value(run.registry, "env_missing_threshold_ratio", location=location) == pytest.approx(m / n)


def test_device_ratio_failures_timeouts_error_codes_and_latency(run: Run) -> None:
    for device_type, n, failed in run.sql("SELECT device_type, count(*), count(*) FILTER "
                                          "(WHERE NOT status_ping_success) FROM device_status GROUP BY 1"):
        assert value(run.registry, "device_status_reports_total", device_type=device_type) == n
        assert value(run.registry, "device_ping_failure_count_total", device_type=device_type) == failed
        assert value(run.registry, "device_status_success_ratio", device_type=device_type) == pytest.approx(
            1 - failed / n)
    timeouts = dict(run.sql("SELECT location, count(*) FROM device_status WHERE anomaly_rule = 'offline_timeout' "
                            "GROUP BY 1"))  # fmt: skip
    got = {dict(k)["location"]: v for k, v in samples(run.registry, "device_offline_timeout_count_total").items()}
    assert got == timeouts and timeouts
    codes = run.sql("SELECT error_code, coalesce(c.severity, 'none'), count(*) FROM device_status d "
                    "LEFT JOIN dim_device_error_code c USING (error_code) WHERE error_code IS NOT NULL GROUP BY ALL")
    distribution = samples(run.registry, "device_error_code_distribution_total")
    got_codes = {tuple(v for _, v in k): n for k, n in distribution.items()}
    assert got_codes == {(code, severity): n for code, severity, n in codes} and codes
    bounds = list(LATENCY_BUCKETS)
    columns = ", ".join(f"count(*) FILTER (WHERE status_latency_ms <= {b * 1000})" for b in bounds)
    for device_type, *cumulative in run.sql(f"SELECT device_type, {columns}, count(*) FROM device_status GROUP BY 1"):
        for bound, count in zip([*bounds, float("inf")], cumulative, strict=True):
            le = "+Inf" if bound == float("inf") else repr(bound)
            assert value(run.registry, "device_latency_seconds_bucket", device_type=device_type, le=le) == count
        assert value(run.registry, "device_latency_p95", device_type=device_type) == pytest.approx(
            p95_from_buckets(bounds, cumulative))


# -- hand-made cases -----------------------------------------------------------------------------

T0 = datetime(2025, 5, 24, 14, 0, tzinfo=UTC)
QC_DIMS = Dimensions.from_rows(dim_qc_threshold=[
    {"item_id": "WIDTH", "product_code": "P12345678", "inspection_type": "vision", "min_threshold": 10.0,
     "max_threshold": 20.0, "unit": "mm"},
])


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluate(dims: Dimensions, domain: str, records: list[dict[str, Any]], first_offset: int = 0,
             engine: AnomalyEngine | None = None) -> Evaluation:  # fmt: skip
    engine = engine or AnomalyEngine(dims, EngineState())
    return engine.evaluate(domain, rows_of(domain, records, first_offset), NOW)


def inspection(minutes: float, operator: str, width: float) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minutes)
    return message("qc_result", timestamp=iso(at), ingestion_timestamp=iso(at), operator_id=operator,
                   inspection_items=[{"item_id": "WIDTH", "value": width, "unit": "mm"},
                                     {"item_id": "WIDTH", "value": width, "unit": "mm"}])  # fmt: skip


def test_operator_repeat_defect_counts_the_third_and_later_within_the_hour_across_batches() -> None:
    registry = CollectorRegistry()
    seed = SeedMetrics(registry)
    engine = AnomalyEngine(QC_DIMS, EngineState())
    first = [inspection(0, "OP001", 25.0), inspection(10, "OP001", 15.0), inspection(20, "OP001", 25.0),
             inspection(5, "OP002", 25.0), inspection(6, "OP002", 25.0)]  # fmt: skip
    seed.observe(evaluate(QC_DIMS, "qc_result", first, engine=engine), EngineConfig(), NOW)
    assert samples(registry, "qc_operator_repeat_defect_total") == {}  # two defects each (two items count once)
    second = [inspection(30, "OP001", 25.0), inspection(45, "OP001", 5.0), inspection(95, "OP001", 25.0)]
    seed.observe(evaluate(QC_DIMS, "qc_result", second, 5, engine=engine), EngineConfig(), NOW)
    # 00:30 is the 3rd within the hour, 00:45 the 4th; at 01:35 only 00:45 is within the hour (2 defects).
    assert value(registry, "qc_operator_repeat_defect_total", operator_id="OP001") == 2
    assert value(registry, "qc_defective_items_total", location="line_b", product_code="P12345678") == 14


def robot(minutes: float, status: str, battery: float, robot_id: str = "ROBOT_005") -> dict[str, Any]:
    at = T0 + timedelta(minutes=minutes)
    return message("robot_status", timestamp=iso(at), ingestion_timestamp=iso(at), robot_id=robot_id,
                   status__current=status, battery_level=battery, error_code=None)


def test_robot_transitions_and_drain_pair_reports_across_batches_but_not_across_silences() -> None:
    registry = CollectorRegistry()
    seed = SeedMetrics(registry)
    engine = AnomalyEngine(Dimensions({}), EngineState())
    seed.observe(evaluate(Dimensions({}), "robot_status", [robot(0, "moving", 80.0), robot(6, "moving", 78.0)],
                          engine=engine), EngineConfig(), NOW)  # fmt: skip
    later = [robot(12, "charging", 90.0), robot(40, "idle", 89.0), robot(43, "moving", 88.5),
             robot(43, "moving", 88.5), robot(49, "error", 10.0)]  # fmt: skip
    seed.observe(evaluate(Dimensions({}), "robot_status", later, 2, engine=engine), EngineConfig(), NOW)
    transitions = {tuple(v for _, v in k): n for k, n in samples(registry, "robot_state_transitions_total").items()}
    assert transitions == {("moving", "charging"): 1, ("charging", "idle"): 1, ("idle", "moving"): 1,
                           ("moving", "error"): 1}  # fmt: skip
    # Observed: 6 + 6 + 3 + 6 minutes (12 → 40 is a 28-minute silence; the repeated report adds no time).
    assert value(registry, "robot_observed_seconds_total") == 21 * 60
    assert value(registry, "robot_state_transition_rate") == pytest.approx(4 / (21 / 60))
    # Drain: 80 → 78 in 6 min, 89 → 88.5 in 3 min, 88.5 → 10 in 6 min; charging and the silence are left out.
    assert value(registry, "robot_battery_drained_percent_total") == pytest.approx(2 + 0.5 + 78.5)
    assert value(registry, "robot_avg_battery_drain_per_hour") == pytest.approx(81 / (15 / 60))
    assert value(registry, "robot_state_error_count_total", location="zone_4") == 1
    assert value(registry, "robot_battery_low_alerts_total", location="zone_4") == 1


def test_sweep_and_decoder_rejects() -> None:
    registry = CollectorRegistry()
    seed = SeedMetrics(registry)
    dims = Dimensions.from_rows(dim_device=[{"device_id": "SENSOR_ENV_001", "device_type": "env_sensor",
                                             "heartbeat_cycle": 60.0}])  # fmt: skip
    engine = AnomalyEngine(dims, EngineState())
    evaluate(dims, "robot_status", [robot(0, "idle", 80.0)], engine=engine)
    device = message("device_status", timestamp=iso(T0), ingestion_timestamp=iso(T0))
    evaluate(dims, "device_status", [device], engine=engine)
    alarms, _ = engine.state.sweep(T0 + timedelta(hours=1), dims)
    seed.observe_sweep(alarms)
    seed.observe_sweep(engine.state.sweep(T0 + timedelta(hours=2), dims)[0])  # once per silence
    assert value(registry, "robot_offline_timeout_count_total", location="zone_4") == 1
    assert value(registry, "device_offline_timeout_count_total", location="zone_7", source="sweep") == 1
    seed.observe_rejects("robot_status", [Rejected(0, "invalid_enum", "x"), Rejected(1, "unit_violation", "y")])
    seed.observe_rejects("energy_usage", [Rejected(0, "unit_mismatch", "x"), Rejected(1, "schema_error", "y")])
    assert value(registry, "robot_status_enum_violation_total") == 1
    assert value(registry, "iot_energy_unit_mismatch_total", stage="decode") == 1


def test_label_values_are_bounded_and_a_bad_batch_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    seed = SeedMetrics(registry, max_label_values=2)
    readings = [robot(i, "idle", 80.0) | {"location": f"zone_{i}"} for i in range(4)]
    seed.observe(evaluate(Dimensions({}), "robot_status", [r | {"robot_id": f"R{i}"} for i, r in enumerate(readings)]
                          ), EngineConfig(), NOW)  # fmt: skip
    seed.observe(evaluate(Dimensions({}), "robot_status", [robot(0, "error", 5.0) | {"location": "zone_9"}], 4),
                 EngineConfig(), NOW)
    assert samples(registry, "robot_state_error_count_total") == {(("location", "_other"),): 1}
    broken = Evaluation("qc_result", pl.DataFrame({"location": ["x"]}), pl.DataFrame(), pl.DataFrame())
    seed.observe(broken, EngineConfig(), NOW)
    assert "seed metrics not updated" in caplog.text


# -- the running collector -----------------------------------------------------------------------


def start_with_missing_qc_threshold(latest: datetime) -> datetime:
    """The latest time at or before ``latest`` from which line f makes P67812346 for the next 15 minutes.

    The sample dimensions have no ROUGHNESS threshold for that product, and the product running on a
    line changes by shift: a run starting at any other time would have no threshold-missing items.
    """
    at = latest
    while not product_code("f", at) == product_code("f", at + timedelta(minutes=15)) == "P67812346":
        at -= timedelta(minutes=15)
    return at


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


@pytest.mark.slow
def test_running_collector_exposes_seed_metrics_that_match_its_parquet_files(kafka: Any, tmp_path: Path) -> None:
    from anomaly import upload_samples
    from storage.factory import StorageConfig, open_store
    from tests.support.collector_process import CollectorProcess
    from tests.support.kafka import committed_offsets, end_offsets, produce_tracked
    from tests.support.stored import read_dlq_minutes, read_minutes

    config = StorageConfig(backend="local", local_dir=str(tmp_path / "data"), bucket="fms-data")
    store = open_store(config, create_bucket=True)
    upload_samples(store)
    env = {"KAFKA_BROKERS": kafka.bootstrap, "STORAGE_BACKEND": "local", "LOCAL_STORAGE_DIR": config.local_dir,
           "ANOMALY_ENABLED": "true", "SWEEP_INTERVAL_SECONDS": "1"}  # fmt: skip
    start = start_with_missing_qc_threshold((datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0))
    produced = produce_tracked(kafka.bootstrap, TrafficGenerator(
        seed=9, start=start, fault_rates={"wrong_unit": 0.03, "bad_enum": 0.03, "late_arrival": 0.05},
    ).generate(3000))  # fmt: skip
    collector = CollectorProcess(env, tmp_path).start()
    try:
        collector.wait_until(lambda: committed_offsets(kafka.bootstrap, "fms-realtime-collector", end_offsets(produced))
                             == end_offsets(produced), 120, "everything stored and committed")  # fmt: skip
        rows = {d: read_minutes(store, d).drop("_key") for d in DOMAINS}
        dlq = pl.concat([read_dlq_minutes(store, d) for d in DOMAINS], how="diagonal_relaxed")
        robots, devices = rows["robot_status"]["robot_id"].n_unique(), rows["device_status"]["device_id"].n_unique()

        def offline_found() -> bool:  # every robot and device is silent for 2 h: one sweep alarm each
            m = scrape(collector.port)
            found = [v for (n, _), v in m.items() if n == "robot_offline_timeout_count_total"]
            swept = [v for (n, labels), v in m.items()
                     if n == "device_offline_timeout_count_total" and ("source", "sweep") in labels]  # fmt: skip
            return sum(found) == robots and sum(swept) == devices

        collector.wait_until(offline_found, 30, "offline sweep counted")
        metrics = scrape(collector.port)
        assert collector.terminate() == 0
    finally:
        collector.kill()

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls))

    con = duckdb.connect()
    for name, frame in rows.items():
        con.register(name, frame.to_arrow())
    con.register("dlq", dlq.to_arrow())
    for domain in LATE_DOMAINS:
        [(late,)] = con.sql(f"SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM {domain} "
                            "WHERE ingestion_timestamp - \"timestamp\" > INTERVAL 10 MINUTE").fetchall()
        assert late > 0 and total("late_arrival_count_total", domain=domain) == late, domain
    [(n, anomalous)] = con.sql("SELECT count(*), count(*) FILTER (WHERE anomaly) FROM equipment_metrics").fetchall()
    assert total("equipment_measurements_total") == n and total("equipment_anomalous_measurements_total") == anomalous
    [(items, defects, missing)] = con.sql(
        "SELECT count(*), count(*) FILTER (WHERE anomaly), "
        "count(*) FILTER (WHERE threshold_min IS NULL AND threshold_max IS NULL) FROM qc_result").fetchall()
    assert total("qc_inspected_items_total") == items and total("qc_defective_items_total") == defects
    assert total("qc_threshold_missing_items_total") == missing > 0
    for energy_type, usage in con.sql("SELECT energy_type, sum(usage_std) FILTER (WHERE usage_std > 0) "
                                      "FROM energy_usage GROUP BY 1").fetchall():  # fmt: skip
        assert total("iot_energy_usage_total", energy_type=energy_type) == pytest.approx(usage)
    for location, co2 in con.sql("SELECT location, count(*) FILTER (WHERE sensor_type = 'co2' AND value > 1000) "
                                 "FROM environmental_readings GROUP BY 1").fetchall():  # fmt: skip
        assert total("env_co2_over_1000_ppm_count_total", location=location) == co2
    for device_type, reports, failed in con.sql(
            "SELECT device_type, count(*), count(*) FILTER (WHERE NOT status_ping_success) FROM device_status "
            "GROUP BY 1").fetchall():  # fmt: skip
        assert total("device_status_reports_total", device_type=device_type) == reports
        assert total("device_ping_failure_count_total", device_type=device_type) == failed
    rejected = dict(con.sql("SELECT domain || '/' || reason, count(*) FROM dlq WHERE rejected GROUP BY 1").fetchall())
    assert total("robot_status_enum_violation_total") == rejected["robot_status/invalid_enum"] > 0
    for domain, metric in UNIT_METRICS.items():
        assert total(metric) == rejected[f"{domain}/unit_mismatch"] > 0, domain
