"""Per-domain rules: flags, DLQ reasons (one per message), alarms and the quiet cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from anomaly import Dimensions, EngineState, flag_schema
from domains import DOMAINS
from tests.anomaly.helpers import NOW, engine, message, reasons, rows_of

T0 = datetime(2025, 5, 24, 14, 15, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- equipment_metrics --------------------------------------------------------------------------

EQUIPMENT_DIMS = Dimensions.from_rows(
    dim_batch=[{"batch_id": "BATCH_20250524_001", "product_code": "P1"}],
    dim_operator=[{"operator_id": "OP001", "shift": "day"}],
    dim_thresholds=[
        {"sensor_type": "temperature", "min_threshold": 0.0, "max_threshold": 100.0},
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "temperature", "min_threshold": 0.0, "max_threshold": 90.0},
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "temperature", "season": "spring", "product_code": "P1",
         "min_threshold": 10.0, "max_threshold": 60.0},
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "temperature", "season": "spring", "shift": "night",
         "min_threshold": 0.0, "max_threshold": 20.0},
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "vibration", "min_threshold": 0.0, "max_threshold": 1.0},
    ],
)


def test_equipment_most_specific_threshold_and_anomaly() -> None:
    rows = rows_of("equipment_metrics", [message("equipment_metrics")])
    ev = engine(EQUIPMENT_DIMS).evaluate("equipment_metrics", rows, NOW)
    temp = ev.rows.filter(sensor_type="temperature").row(0, named=True)
    # season spring (May) + product P1 (2 specific columns) beats equipment-only; night shift does not match.
    assert (temp["threshold_min"], temp["threshold_max"]) == (10.0, 60.0)
    assert temp["anomaly"] is True and temp["anomaly_rule"] == "max_threshold"  # 68.2 > 60
    vib = ev.rows.filter(sensor_type="vibration").row(0, named=True)
    assert vib["anomaly"] is False and vib["threshold_max"] == 1.0
    assert ev.alarms.height == 1
    alarm = ev.alarms.row(0, named=True)
    assert (alarm["entity_id"], alarm["rule"], alarm["value"], alarm["threshold_max"]) == (
        "LINE_A_PRESS_001", "max_threshold", 68.2, 60.0)
    assert alarm["source_offset"] == 0 and alarm["detected_at"] == NOW and alarm["unit"] == "celsius"
    assert ev.dlq.height == 0
    assert list(ev.rows.columns) == [*DOMAINS["equipment_metrics"].flat_schema, *flag_schema("equipment_metrics")]


def test_equipment_business_rule_violation_and_late_arrival_priority() -> None:
    bad = message("equipment_metrics")
    bad["metrics"][1]["quality"] = "bad"
    fault = message("equipment_metrics", timestamp="2025-05-24T13:00:01Z")
    fault["metrics"][1]["value"] = 3.0  # band [0, 1]: 2.0 beyond = 200 % of the width
    late = message("equipment_metrics", timestamp="2025-05-24T13:00:02Z", ingestion_timestamp="2025-05-24T13:10:03Z")
    late_and_bad = message("equipment_metrics", timestamp="2025-05-24T13:00:03Z",
                           ingestion_timestamp="2025-05-24T13:30:00Z")
    late_and_bad["metrics"][0]["quality"] = "bad"
    ev = engine(EQUIPMENT_DIMS).evaluate("equipment_metrics", rows_of("equipment_metrics", [bad, fault, late,
                                                                                              late_and_bad]), NOW)
    assert reasons(ev) == {0: ("business_rule_violation", False), 1: ("business_rule_violation", False),
                           2: ("late_arrival", False), 3: ("business_rule_violation", False)}
    assert ev.rows.height == 8  # flagged messages are stored
    assert set(ev.rows.filter(kafka_offset=3)["dlq_reason"]) == {"business_rule_violation"}
    sev = ev.alarms.filter(source_offset=1, source_item_index=1)["severity"].to_list()
    assert sev == ["critical"]


def test_equipment_duplicate_across_batches_but_not_on_replay() -> None:
    eng = engine(EQUIPMENT_DIMS)
    first = eng.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")]), NOW)
    assert first.dlq.height == 0
    again = eng.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")], 5), NOW)
    assert reasons(again) == {5: ("duplicate", True)}
    assert again.rows.height == 0 and again.alarms.height == 0
    replay = eng.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")], 0), NOW)
    assert replay.dlq.height == 0 and replay.rows.height == 2  # same position: a replay, not a duplicate


def test_duplicate_expires_after_the_watermark() -> None:
    eng = engine(EQUIPMENT_DIMS)
    eng.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")]), NOW)
    later = message("equipment_metrics", timestamp="2025-05-24T13:16:00Z", ingestion_timestamp="2025-05-24T13:16:01Z")
    eng.evaluate("equipment_metrics", rows_of("equipment_metrics", [later], 1), NOW)
    old = eng.evaluate("equipment_metrics", rows_of("equipment_metrics", [message("equipment_metrics")], 2), NOW)
    assert "duplicate" not in {r for r, _ in reasons(old).values()}


# -- qc_result ----------------------------------------------------------------------------------

QC_DIMS = Dimensions.from_rows(dim_qc_threshold=[
    {"item_id": "WIDTH", "product_code": "P12345678", "inspection_type": "vision", "min_threshold": 15.0,
     "max_threshold": 15.2, "unit": "mm"},
    {"item_id": "SCRATCH", "product_code": "P12345678", "inspection_type": "vision", "min_threshold": 0.0,
     "max_threshold": 3.0, "unit": "count"},
    {"item_id": "DENT", "product_code": "P12345678", "inspection_type": "vision", "min_threshold": 0.0,
     "max_threshold": 3.0, "unit": "cm"},
])


def test_qc_defect_missing_and_unit_mismatch() -> None:
    defect = message("qc_result")
    missing = message("qc_result", product_code="P999")
    mismatch = message("qc_result", inspection_items=[{"item_id": "DENT", "value": 1.0, "unit": "count"}])
    ev = engine(QC_DIMS).evaluate("qc_result", rows_of("qc_result", [defect, missing, mismatch]), NOW)
    assert reasons(ev) == {1: ("threshold_missing", False), 2: ("unit_mismatch", True)}
    assert ev.rows["kafka_offset"].unique().sort().to_list() == [0, 1]
    width = ev.rows.filter(kafka_offset=0, item_id="WIDTH").row(0, named=True)
    assert width["anomaly"] is True and width["threshold_max"] == 15.2
    assert ev.alarms["rule"].to_list() == ["defect_max_threshold"]


# -- energy_usage -------------------------------------------------------------------------------

ENERGY_DIMS = Dimensions.from_rows(
    dim_energy_type=[
        {"energy_type": "electricity", "unit": "kWh", "standard_unit": "kWh", "conversion_rate": 1.0,
         "carbon_factor": 400.0, "cost_per_unit": 0.2},
        {"energy_type": "electricity", "unit": "Wh", "standard_unit": "kWh", "conversion_rate": 0.001,
         "carbon_factor": 400.0, "cost_per_unit": 0.2},
    ],
    dim_energy_threshold=[
        {"equipment_id": "LINE_C_PRESS_003", "energy_type": "electricity", "max_threshold": 10.0,
         "expected_unit": "kWh", "valid_from": "2025-01-01T00:00:00Z", "valid_to": "2025-05-24T14:15:00Z"},
        {"equipment_id": "LINE_C_PRESS_003", "energy_type": "electricity", "max_threshold": 20.0,
         "expected_unit": "kWh", "valid_from": "2025-05-24T14:15:00Z", "valid_to": None},
    ],
)


def energy(at: datetime, usage: float, unit: str = "kWh") -> dict:
    return message("energy_usage", timestamp=iso(at), ingestion_timestamp=iso(at + timedelta(seconds=2)),
                   usage=usage, unit=unit)


def test_energy_conversion_carbon_cost_and_point_in_time_boundary() -> None:
    before = energy(T0 - timedelta(seconds=1), 12700.0, "Wh")  # old threshold 10 → exceeds
    at_boundary = energy(T0, 12700.0, "Wh")  # new threshold (valid_from inclusive) 20 → normal
    ev = engine(ENERGY_DIMS).evaluate("energy_usage", rows_of("energy_usage", [before, at_boundary]), NOW)
    rows = ev.rows.sort("kafka_offset").to_dicts()
    assert rows[0]["usage_std"] == pytest.approx(12.7) and rows[0]["standard_unit"] == "kWh"
    assert rows[0]["carbon_g"] == pytest.approx(12.7 * 400) and rows[0]["cost"] == pytest.approx(12.7 * 0.2)
    assert [r["threshold_max"] for r in rows] == [10.0, 20.0]
    assert [r["anomaly"] for r in rows] == [True, False]
    assert ev.alarms.height == 0  # one exceedance outside peak hours: quiet


def test_energy_unit_mismatch_and_threshold_missing() -> None:
    odd = energy(T0, 5.0, "MWh")  # no conversion row
    other = message("energy_usage", equipment_id="LINE_Z_X_001")
    ev = engine(ENERGY_DIMS).evaluate("energy_usage", rows_of("energy_usage", [odd, other]), NOW)
    assert reasons(ev) == {0: ("unit_mismatch", True), 1: ("threshold_missing", False)}
    assert ev.rows.height == 1 and ev.rows["anomaly"].to_list() == [False]


def test_energy_three_consecutive_alarm_once_and_reset() -> None:
    eng = engine(ENERGY_DIMS)
    usages = [30.0, 30.0, 5.0, 30.0, 30.0, 30.0, 30.0]
    recs = [energy(T0 + timedelta(minutes=5 * i), u) for i, u in enumerate(usages)]
    ev = eng.evaluate("energy_usage", rows_of("energy_usage", recs), NOW)
    assert ev.alarms["source_offset"].to_list() == [5]
    assert ev.alarms["rule"].to_list() == ["consecutive_exceedance"]


def test_energy_peak_hours_alarm_on_a_single_exceedance() -> None:
    peak = datetime(2025, 5, 24, 10, 0, tzinfo=UTC)
    ev = engine(ENERGY_DIMS).evaluate("energy_usage", rows_of("energy_usage", [energy(peak, 30.0)]), NOW)
    assert ev.alarms["rule"].to_list() == ["peak_hours_exceedance"]


def test_consecutive_count_survives_snapshot_restore() -> None:
    eng = engine(ENERGY_DIMS)
    recs = [energy(T0 + timedelta(minutes=5 * i), 30.0) for i in range(3)]
    assert eng.evaluate("energy_usage", rows_of("energy_usage", recs[:2]), NOW).alarms.height == 0
    restored = engine(ENERGY_DIMS, EngineState.restore(eng.state.snapshot()))
    ev = restored.evaluate("energy_usage", rows_of("energy_usage", recs[2:], 2), NOW)
    assert ev.alarms["source_offset"].to_list() == [2]
    assert restored.state.snapshot() == EngineState.restore(restored.state.snapshot()).snapshot()


def test_alarm_ids_are_deterministic() -> None:
    recs = [energy(datetime(2025, 5, 24, 10, i, tzinfo=UTC), 30.0) for i in range(3)]
    a = engine(ENERGY_DIMS).evaluate("energy_usage", rows_of("energy_usage", recs), NOW).alarms
    b = engine(ENERGY_DIMS).evaluate("energy_usage", rows_of("energy_usage", recs), NOW + timedelta(hours=1)).alarms
    assert a.height == 3 and a["alarm_id"].to_list() == b["alarm_id"].to_list()
    assert a["alarm_id"].n_unique() == 3


# -- robot_status -------------------------------------------------------------------------------

ROBOT_DIMS = Dimensions.from_rows(
    dim_robot_error_code=[{"error_code": "E405", "description": "Servo motor overheating", "severity": "critical"}],
    dim_robot=[{"robot_id": "ROBOT_005", "heartbeat_cycle": 30.0}],
)


def test_robot_anomalies_and_missing_error_code() -> None:
    seed = message("robot_status")  # error + E405
    low = message("robot_status", timestamp="2025-05-24T14:20:05Z", status__current="moving", error_code=None,
                  battery_level=12.0)
    no_code = message("robot_status", timestamp="2025-05-24T14:20:10Z", error_code=None)
    fine = message("robot_status", timestamp="2025-05-24T14:20:15Z", status__current="idle", error_code=None)
    ev = engine(ROBOT_DIMS).evaluate("robot_status", rows_of("robot_status", [seed, low, no_code, fine]), NOW)
    assert ev.rows["anomaly_rule"].to_list() == ["error_status", "low_battery", "error_status", None]
    assert ev.rows["error_description"].to_list()[0] == "Servo motor overheating"
    assert reasons(ev) == {2: ("missing_error_code", False)}
    first = ev.alarms.row(0, named=True)
    assert (first["severity"], first["description"]) == ("critical", "E405: Servo motor overheating")
    assert ev.alarms.height == 3


def test_offline_sweep_once_per_silence() -> None:
    eng = engine(ROBOT_DIMS)
    last = datetime(2025, 5, 24, 14, 20, tzinfo=UTC)
    eng.evaluate("robot_status", rows_of("robot_status", [message("robot_status", status__current="idle",
                                                                   error_code=None)]), NOW)
    timeout = timedelta(seconds=30 * 20)  # heartbeat_cycle × robot_missed_heartbeats
    assert eng.state.sweep(last + timeout, ROBOT_DIMS)[0].height == 0
    alarms, dlq = eng.state.sweep(last + timeout + timedelta(seconds=1), ROBOT_DIMS)
    assert alarms["rule"].to_list() == ["offline_timeout"] and dlq["reason"].to_list() == ["offline_timeout"]
    assert eng.state.sweep(last + timeout * 3, ROBOT_DIMS)[0].height == 0  # once per silence
    back = message("robot_status", timestamp="2025-05-24T14:40:00Z", status__current="idle", error_code=None)
    eng.evaluate("robot_status", rows_of("robot_status", [back], 1), NOW)
    again = eng.state.sweep(datetime(2025, 5, 24, 14, 50, 1, tzinfo=UTC), ROBOT_DIMS)[0]
    assert again["source_offset"].to_list() == [1]
    assert again["alarm_id"][0] != alarms["alarm_id"][0]


# -- environmental_readings ---------------------------------------------------------------------

ENV_DIMS = Dimensions.from_rows(dim_env_threshold=[
    {"sensor_type": "co2", "max_threshold": 1000.0, "expected_unit": "ppm"},
    {"sensor_type": "temperature", "location": "line_d_zone_1", "min_threshold": 16.0, "max_threshold": 28.0,
     "expected_unit": "C", "valid_to": "2025-05-24T14:30:00Z"},
    {"sensor_type": "temperature", "location": "line_d_zone_1", "min_threshold": 16.0, "max_threshold": 30.0,
     "expected_unit": "C", "valid_from": "2025-05-24T14:30:00Z"},
    {"sensor_type": "humidity", "max_threshold": 70.0, "expected_unit": "%"},
])


def env(at: datetime, co2: float, temp: float = 20.0, temp_unit: str = "C") -> dict:
    return message("environmental_readings", timestamp=iso(at), ingestion_timestamp=iso(at),
                   readings=[{"sensor_id": "ENV_TEMP_01", "sensor_type": "temperature", "value": temp,
                              "unit": temp_unit},
                             {"sensor_id": "ENV_CO2_01", "sensor_type": "co2", "value": co2, "unit": "ppm"}])


def test_co2_alarms_only_after_three_consecutive() -> None:
    t = datetime(2025, 5, 24, 14, 30, tzinfo=UTC)
    eng = engine(ENV_DIMS)
    quiet = eng.evaluate("environmental_readings",
                         rows_of("environmental_readings", [env(t, 1100), env(t + timedelta(minutes=1), 1100),
                                                            env(t + timedelta(minutes=2), 900)]), NOW)
    assert quiet.rows["anomaly"].sum() == 2 and quiet.alarms.height == 0
    loud = eng.evaluate("environmental_readings",
                        rows_of("environmental_readings", [env(t + timedelta(minutes=i), 1100) for i in (3, 4, 5)], 3),
                        NOW)
    assert loud.alarms["source_offset"].to_list() == [5]
    assert loud.alarms["entity_id"].to_list() == ["ENV_CO2_01"]


def test_env_temperature_alarm_boundary_unit_mismatch_and_missing() -> None:
    t = datetime(2025, 5, 24, 14, 30, tzinfo=UTC)
    hot_before = env(t - timedelta(seconds=1), 500, temp=29.0)  # max 28 before 14:30 → anomaly
    hot_at = env(t, 500, temp=29.0)  # max 30 from 14:30 → normal
    fahrenheit = env(t + timedelta(minutes=1), 500, temp=80.0, temp_unit="F")
    fahrenheit["readings"][0]["sensor_type"] = "temperature"
    ev = engine(ENV_DIMS).evaluate("environmental_readings",
                                   rows_of("environmental_readings", [hot_before, hot_at]), NOW)
    temps = ev.rows.filter(sensor_type="temperature").sort("kafka_offset")
    assert temps["threshold_max"].to_list() == [28.0, 30.0] and temps["anomaly"].to_list() == [True, False]
    assert ev.alarms["rule"].to_list() == ["max_threshold"]
    other = message("environmental_readings", location="zone_x")  # temperature has no row for zone_x
    ev2 = engine(ENV_DIMS).evaluate("environmental_readings", rows_of("environmental_readings", [other]), NOW)
    assert reasons(ev2) == {0: ("threshold_missing", False)}


def test_env_unit_mismatch_rejects_the_message() -> None:
    dims = Dimensions.from_rows(dim_env_threshold=[
        {"sensor_type": "co2", "max_threshold": 1000.0, "expected_unit": "ppm"},
        {"sensor_type": "temperature", "max_threshold": 30.0, "expected_unit": "F"},
    ])
    ev = engine(dims).evaluate("environmental_readings", rows_of("environmental_readings", [env(T0, 500)]), NOW)
    assert reasons(ev) == {0: ("unit_mismatch", True)} and ev.rows.height == 0


# -- device_status ------------------------------------------------------------------------------

DEVICE_DIMS = Dimensions.from_rows(
    dim_device=[{"device_id": "SENSOR_ENV_001", "device_type": "env_sensor", "heartbeat_cycle": 30.0}],
    dim_device_threshold=[{"device_type": "env_sensor", "max_latency": 100.0}],
    dim_device_error_code=[{"error_code": "NET_TIMEOUT", "description": "Network timeout", "severity": "warning"}],
)


def device(seconds: int, **changes) -> dict:
    at = datetime(2025, 5, 24, 14, 35, tzinfo=UTC) + timedelta(seconds=seconds)
    return message("device_status", timestamp=iso(at), ingestion_timestamp=iso(at), **changes)


def test_device_reasons_and_normalised_error_code() -> None:
    recs = [
        device(0),  # seed: fine (latency 43, last success 30 s ago)
        device(30, status__ping_success=False, error_code="NET_TIMEOUT",
               status__last_success_at="2025-05-24T14:35:00Z"),
        device(60, status__ping_success=False, status__last_success_at="2025-05-24T14:35:00Z"),
        device(90, status__latency_ms=250, status__last_success_at="2025-05-24T14:35:30Z"),
        device(200, status__last_success_at="2025-05-24T14:35:00Z"),  # 200 s > 30 × 2.5
    ]
    ev = engine(DEVICE_DIMS).evaluate("device_status", rows_of("device_status", recs), NOW)
    assert reasons(ev) == {1: ("ping_failure", False), 2: ("missing_error_code", False),
                           3: ("latency_violation", False), 4: ("offline_timeout", False)}
    assert ev.rows["anomaly"].to_list() == [False, True, True, True, True]
    assert ev.rows["error_description"].to_list()[1] == "Network timeout"
    assert ev.alarms.height == 4


def test_device_sweep_uses_heartbeat_times_multiplier() -> None:
    eng = engine(DEVICE_DIMS)
    eng.evaluate("device_status", rows_of("device_status", [device(0)]), NOW)
    start = datetime(2025, 5, 24, 14, 35, tzinfo=UTC)
    assert eng.state.sweep(start + timedelta(seconds=75), DEVICE_DIMS)[0].height == 0
    alarms, dlq = eng.state.sweep(start + timedelta(seconds=76), DEVICE_DIMS)
    assert alarms["entity_id"].to_list() == ["SENSOR_ENV_001"] and dlq["rejected"].to_list() == [False]
    assert eng.state.sweep(start + timedelta(seconds=500), DEVICE_DIMS)[0].height == 0


def test_state_is_partitioned_and_droppable() -> None:
    eng = engine(DEVICE_DIMS)
    eng.evaluate("device_status", rows_of("device_status", [device(0)], partition=2), NOW)
    assert set(eng.state.partitions) == {("iot.device_status", 2)}
    only = EngineState.restore(eng.state.snapshot(only={("iot.device_status", 2)}))
    assert set(only.partitions) == {("iot.device_status", 2)}
    eng.state.drop("iot.device_status", 2)
    assert eng.state.sweep(NOW + timedelta(days=1), DEVICE_DIMS)[0].height == 0
