"""The shipped sample dimension tables (``anomaly/sample_dims/*.csv``) and how they are made.

They name the traffic generator's plant (:mod:`trafficgen.messages`): its machines, stations,
products, robots, zones and devices, with thresholds set around the generator's value ranges so that
most traffic is normal, the generator's rare peaks and out-of-tolerance parts exceed, and a few
entities deliberately have no threshold row (ROUGHNESS of P67812346, pressure in line_e_zone_2,
the current sensor of LINE_F_CONV_001, compressed air of LINE_F_PRESS_001, error code E510).
:func:`build_samples` is the single source; the CSV files are its output (a test checks they agree)
and :func:`upload_samples` puts them into object storage for the collector and the demo.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from anomaly.dims import TABLE_SCHEMAS
from storage.base import ObjectStore
from trafficgen import messages as tg

SAMPLE_DIR = Path(__file__).parent / "sample_dims"
# Days that dim_batch covers (the tests' and examples' traffic starts 2025-05-24).
BATCH_DAYS = tuple(datetime(2025, 5, 23, tzinfo=UTC) + timedelta(days=i) for i in range(4))
SHIFTS = ("day", "evening", "night")  # trafficgen.shift_of: 06-14, 14-22, 22-06 UTC
_NO_THRESHOLD = {("LINE_F_CONV_001", "current")}
_NO_ENERGY_THRESHOLD = {("LINE_F_PRESS_001", "compressed_air")}
_NO_QC_THRESHOLD = {("P67812346", "ROUGHNESS")}
_NO_ENV_THRESHOLD_ZONE = "line_e_zone_2"  # has a pressure sensor but no pressure row
_NO_ROBOT_ERROR = {"E510"}

_ITEM_NAMES = {
    "WIDTH": ("Width", "caliper"), "LENGTH": ("Length", "caliper"), "HEIGHT": ("Height", "gauge"),
    "THICKNESS": ("Thickness", "micrometer"), "DIAMETER": ("Diameter", "micrometer"),
    "WEIGHT": ("Weight", "scale"), "SCRATCH": ("Scratch count", "vision"), "DENT": ("Dent count", "vision"),
    "COLOR_DELTA_E": ("Colour difference", "spectrophotometer"), "ROUGHNESS": ("Surface roughness Ra", "profilometer"),
}
_ROBOT_ERRORS = {
    "E101": ("Emergency stop pressed", "critical"), "E102": ("Safety scanner triggered", "warning"),
    "E110": ("Path blocked", "warning"), "E201": ("Navigation lost", "warning"),
    "E204": ("Wheel slip detected", "warning"), "E302": ("Gripper fault", "warning"),
    "E305": ("Payload overweight", "warning"), "E401": ("Battery cell imbalance", "critical"),
    "E405": ("Servo motor overheating", "critical"), "E502": ("Controller communication lost", "critical"),
}
_DEVICE_ERRORS = {
    "NET_TIMEOUT": ("Network timeout", "warning"), "NET_UNREACHABLE": ("Host unreachable", "critical"),
    "DHCP_FAIL": ("DHCP lease failed", "warning"), "AUTH_FAIL": ("Authentication failed", "critical"),
    "POWER_LOW": ("Supply voltage low", "warning"), "FW_FAULT": ("Firmware fault", "critical"),
}
# device_type → (max_latency ms, timeout_multiplier, heartbeat_cycle s)
_DEVICE_LIMITS = {
    "gateway": (100.0, 2.5, 30.0), "plc": (150.0, 2.5, 30.0), "env_sensor": (300.0, 2.5, 60.0),
    "equipment_sensor": (250.0, 2.5, 60.0), "camera": (350.0, 3.0, 60.0), "robot": (380.0, 2.5, 60.0),
}
# sensor_type → (min, max) for all zones (environment)
_ENV_LIMITS = {
    "temperature": (16.0, 30.0), "humidity": (25.0, 70.0), "co2": (None, 1000.0),
    "pm25": (None, 50.0), "noise": (None, 90.0), "pressure": (980.0, 1045.0),
}
_ENERGY_STD = {  # energy_type → (standard unit, carbon gCO2 per unit, cost per unit)
    "electricity": ("kWh", 424.0, 0.15), "gas": ("m3", 2016.0, 0.55), "steam": ("kg", 210.0, 0.03),
    "water": ("m3", 344.0, 1.2), "compressed_air": ("Nm3", 50.0, 0.02),
}
_THRESHOLD_SWITCH = datetime(2025, 6, 1, tzinfo=UTC)


def _rows(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TABLE_SCHEMAS[table], orient="row")


def build_samples() -> dict[str, pl.DataFrame]:
    """Every sample table, built from the traffic generator's plant layout."""
    t: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_SCHEMAS}
    install = datetime(2022, 3, 1).date()
    for m in tg.MACHINES:
        t["dim_equipment"].append({"equipment_id": m.equipment_id, "equipment_type": m.equipment_type,
                                   "install_date": install, "location": m.location})
    for index, line in enumerate(tg.LINES):
        for shift in range(3):
            number = index * 3 + shift + 1
            t["dim_operator"].append({"operator_id": f"OP{number:03d}", "name": f"Operator {number}",
                                      "shift": SHIFTS[shift], "qualification": "L2" if number % 3 else "L3"})
        for day in BATCH_DAYS:
            for shift in range(3):
                start = day + timedelta(hours=6 + 8 * shift)
                t["dim_batch"].append({"batch_id": tg.batch_id(line, start),
                                       "product_code": tg.product_code(line, start),
                                       "start_time": start, "end_time": start + timedelta(hours=8)})
    # Equipment thresholds: running level ± about 7 noise steps (the walk's spread is ~1.7 steps).
    for m in tg.MACHINES:
        for code in m.sensors:
            sensor_type = tg.SENSOR_CODES[code][0]
            if (m.equipment_id, sensor_type) in _NO_THRESHOLD:
                continue
            running, _idle, noise = tg._SENSOR_LEVELS[(m.equipment_type, code)]
            t["dim_thresholds"].append({"equipment_id": m.equipment_id, "sensor_type": sensor_type,
                                        "min_threshold": 0.0, "max_threshold": round(running + 7 * noise, 2)})
    # More specific rows: a summer limit, a night-shift limit, a product-specific limit.
    t["dim_thresholds"] += [
        {"equipment_id": "LINE_D_FURN_001", "sensor_type": "temperature", "season": "summer",
         "min_threshold": 0.0, "max_threshold": 880.0},
        {"equipment_id": "LINE_A_PRESS_001", "sensor_type": "temperature", "shift": "night",
         "min_threshold": 0.0, "max_threshold": 68.0},
        {"equipment_id": "LINE_B_MOLD_001", "sensor_type": "temperature", "product_code": "P23456781",
         "min_threshold": 0.0, "max_threshold": 218.0},
    ]
    for line in ["line_" + x for x in tg.LINES]:
        t["dim_location"].append({"location": line, "zone": None, "site": "PLANT_1", "area_type": "production_line"})
    for zone in tg.ENV_ZONES:
        t["dim_location"].append({"location": zone, "zone": zone.split("_", 2)[2], "site": "PLANT_1",
                                  "area_type": "production_area"})
    for i in range(1, 11):
        area = "work_area" if i <= 8 else ("charging_station" if i == 9 else "standby_area")
        t["dim_location"].append({"location": f"zone_{i}", "zone": f"zone_{i}", "site": "PLANT_1", "area_type": area})
    for item, (name, method) in _ITEM_NAMES.items():
        t["dim_inspection_item"].append({"item_id": item, "item_name": name, "unit": tg.ITEM_UNITS[item][0],
                                         "method": method})
    for line in tg.LINES:
        for product in tg.PRODUCT_CODES[line]:
            for kind, items in tg.QC_STATIONS.values():
                for item in items:
                    if (product, item) in _NO_QC_THRESHOLD:
                        continue
                    low, high = _qc_limits(product, item)
                    t["dim_qc_threshold"].append({"item_id": item, "product_code": product, "inspection_type": kind,
                                                  "min_threshold": low, "max_threshold": high,
                                                  "unit": tg.ITEM_UNITS[item][0]})
    for energy_type, units in tg.METER_UNITS.items():
        std, carbon, cost = _ENERGY_STD[energy_type]
        for unit, factor in units:
            t["dim_energy_type"].append({"energy_type": energy_type, "unit": unit, "standard_unit": std,
                                         "conversion_rate": round(1.0 / factor, 9), "carbon_factor": carbon,
                                         "cost_per_unit": cost})
    for m in tg.MACHINES:
        for energy_type, (_low, high) in tg.ENERGY_PROFILE[m.equipment_type].items():
            if (m.equipment_id, energy_type) in _NO_ENERGY_THRESHOLD:
                continue
            std = _ENERGY_STD[energy_type][0]
            # Until June a slightly tighter limit; from June on the current one (a point-in-time change).
            t["dim_energy_threshold"] += [
                {"equipment_id": m.equipment_id, "energy_type": energy_type, "max_threshold": round(high * 1.3, 3),
                 "expected_unit": std, "valid_from": datetime(2024, 1, 1, tzinfo=UTC), "valid_to": _THRESHOLD_SWITCH},
                {"equipment_id": m.equipment_id, "energy_type": energy_type, "max_threshold": round(high * 1.4, 3),
                 "expected_unit": std, "valid_from": _THRESHOLD_SWITCH, "valid_to": None},
            ]
    for robot_id, model in tg.ROBOTS:
        t["dim_robot"].append({"robot_id": robot_id, "model": model, "install_date": install, "heartbeat_cycle": 30.0,
                               "team": "intralogistics" if model.startswith("agv") else "assembly"})
    for code, (description, severity) in _ROBOT_ERRORS.items():
        if code not in _NO_ROBOT_ERROR:
            t["dim_robot_error_code"].append({"error_code": code, "description": description, "severity": severity})
    for index, zone in enumerate(tg.ENV_ZONES):
        for sensor_type in tg.env_sensor_types(index):
            code = tg._ENV_SENSORS[sensor_type][0]
            t["dim_env_sensor"].append({"sensor_id": f"ENV_{code}_{index + 1:02d}", "sensor_type": sensor_type,
                                        "unit": tg.SENSOR_UNITS[sensor_type][0], "accuracy": 0.5,
                                        "install_date": install, "location": zone})
    for sensor_type, (low, high) in _ENV_LIMITS.items():  # type: ignore[assignment]
        unit = tg.SENSOR_UNITS[sensor_type][0]
        if sensor_type == "pressure":  # pressure only where installed, and deliberately not in one zone
            for index, zone in enumerate(tg.ENV_ZONES):
                if "pressure" in tg.env_sensor_types(index) and zone != _NO_ENV_THRESHOLD_ZONE:
                    t["dim_env_threshold"].append({"sensor_type": sensor_type, "location": zone, "min_threshold": low,
                                                   "max_threshold": high, "expected_unit": unit})
            continue
        t["dim_env_threshold"].append({"sensor_type": sensor_type, "location": None, "min_threshold": low,
                                       "max_threshold": high, "expected_unit": unit})
    # A stricter summer temperature limit for the hottest line (point in time).
    t["dim_env_threshold"].append({"sensor_type": "temperature", "location": "line_d_zone_1", "min_threshold": 16.0,
                                   "max_threshold": 29.0, "expected_unit": "C",
                                   "valid_from": datetime(2025, 6, 1, tzinfo=UTC),
                                   "valid_to": datetime(2025, 9, 1, tzinfo=UTC)})
    for device_id, device_type, location in tg.DEVICES:
        t["dim_device"].append({"device_id": device_id, "device_type": device_type, "location": location,
                                "install_date": install, "heartbeat_cycle": _DEVICE_LIMITS[device_type][2]})
    for device_type, (latency, multiplier, _) in _DEVICE_LIMITS.items():
        t["dim_device_threshold"].append({"device_type": device_type, "max_latency": latency,
                                          "timeout_multiplier": multiplier})
    for code, (description, severity) in _DEVICE_ERRORS.items():
        t["dim_device_error_code"].append({"error_code": code, "description": description, "severity": severity})
    return {name: _rows(name, rows) for name, rows in t.items()}


def _qc_limits(product: str, item: str) -> tuple[float, float]:
    if item == "SCRATCH":
        return 0.0, 3.0
    if item == "DENT":
        return 0.0, 2.0
    if item == "COLOR_DELTA_E":
        return 0.0, 2.0
    nominal = tg.item_nominal(product, item)
    return round(nominal * 0.97, 3), round(nominal * 1.03, 3)


def to_csv(frame: pl.DataFrame) -> bytes:
    """A sample table as CSV bytes (instants as ``YYYY-MM-DDTHH:MM:SSZ``)."""
    out = frame.with_columns(pl.col(pl.Datetime).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    buffer = io.BytesIO()
    out.write_csv(buffer)
    return buffer.getvalue()


def write_sample_files(directory: Path = SAMPLE_DIR) -> None:
    """(Re)write the CSV files from :func:`build_samples`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in build_samples().items():
        (directory / f"{name}.csv").write_bytes(to_csv(frame))


def upload_samples(store: ObjectStore, prefix: str = "_dims/") -> list[str]:
    """Put the shipped sample CSV files under ``prefix``; returns the keys written."""
    keys = []
    for path in sorted(SAMPLE_DIR.glob("dim_*.csv")):
        key = f"{prefix}{path.name}"
        store.put(key, path.read_bytes())
        keys.append(key)
    return keys


if __name__ == "__main__":
    write_sample_files()
