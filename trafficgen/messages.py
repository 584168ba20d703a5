"""Realistic messages for the six domains, modelled on the seed examples.

The plant layout (lines, machines, inspection stations, robots, zones, devices, products) is fixed
module data, independent of any seed, so that sample dimension tables can name the same entities.
Only the dynamics are random: each domain has a :class:`MessageFactory` that keeps a small state
object per entity (sensor values, machine and robot states, battery, heartbeats) so that successive
messages of one entity are consistent. A factory draws from the ``random.Random`` it is given and
never from the global generator, so a seed reproduces the same messages.

Every message is a plain dict that matches its domain's Avro schema exactly; timestamps are
ISO-8601 UTC strings with millisecond precision (``"2025-05-24T13:00:00Z"`` when the milliseconds
are zero, ``"2025-05-24T13:00:00.123Z"`` otherwise).
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from domains import DOMAINS, Domain
from domains.device_status import DEVICE_TYPES
from domains.energy_usage import ENERGY_UNITS
from domains.environmental_readings import SENSOR_UNITS
from domains.qc_result import ITEM_UNITS
from domains.robot_status import ROBOT_STATES

MS = timedelta(milliseconds=1)
MAX_INGESTION_DELAY = timedelta(seconds=5)

# -- time -----------------------------------------------------------------------------------------


def iso(at: datetime) -> str:
    """``at`` as an ISO-8601 UTC string, milliseconds only when they are not zero."""
    at = at.astimezone(UTC)
    millis = at.microsecond // 1000
    base = at.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{millis:03d}Z" if millis else f"{base}Z"


def parse_iso(text: str) -> datetime:
    """Parse a timestamp written by :func:`iso` (or any ISO-8601 string with a zone)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def floor_ms(at: datetime) -> datetime:
    """``at`` truncated to whole milliseconds (what a message timestamp can carry)."""
    return at.replace(microsecond=at.microsecond - at.microsecond % 1000)


def _ingestion(rng: random.Random, at: datetime) -> str:
    """Gateway ingestion time: 0-5 s after the event."""
    return iso(at + timedelta(milliseconds=rng.randint(0, 5000)))


# -- fixed plant layout ---------------------------------------------------------------------------

LINES = ("a", "b", "c", "d", "e", "f")

# equipment code → (equipment_type, sensor codes)
EQUIPMENT_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "PRESS": ("hydraulic_press", ("TEMP", "VIB", "PRESS")),
    "CNC": ("cnc_mill", ("TEMP", "VIB", "CURRENT")),
    "MOLD": ("injection_molder", ("TEMP", "PRESS", "CURRENT")),
    "CONV": ("conveyor", ("VIB", "CURRENT")),
    "COMP": ("air_compressor", ("TEMP", "PRESS", "CURRENT")),
    "FURN": ("heat_treatment_furnace", ("TEMP", "CURRENT")),
}

# sensor code → (sensor_type, unit)
SENSOR_CODES: dict[str, tuple[str, str]] = {
    "TEMP": ("temperature", "celsius"),
    "VIB": ("vibration", "mm/s"),
    "PRESS": ("pressure", "bar"),
    "CURRENT": ("current", "A"),
}

# Machines per line: (equipment code, how many). Numbers restart at 001 on every line.
LINE_LAYOUT: dict[str, tuple[tuple[str, int], ...]] = {
    "a": (("PRESS", 2), ("CNC", 2), ("CONV", 1)),
    "b": (("MOLD", 2), ("CONV", 1), ("COMP", 1)),
    "c": (("PRESS", 3), ("CNC", 1), ("CONV", 1)),
    "d": (("MOLD", 2), ("FURN", 1), ("CONV", 1)),
    "e": (("CNC", 3), ("COMP", 1), ("CONV", 1)),
    "f": (("PRESS", 1), ("FURN", 1), ("MOLD", 1), ("CONV", 1)),
}


@dataclass(frozen=True)
class Machine:
    """One production machine of the fixed layout."""

    equipment_id: str
    equipment_type: str
    line: str
    number: int  # 1-based over the whole plant; names the machine's sensors
    sensors: tuple[str, ...]

    @property
    def location(self) -> str:
        """The machine's line, e.g. ``line_a``."""
        return f"line_{self.line}"

    def sensor_id(self, code: str) -> str:
        """Id of the machine's sensor of kind ``code``, e.g. ``TEMP_SENSOR_001``."""
        return f"{code}_SENSOR_{self.number:03d}"


def _machines() -> tuple[Machine, ...]:
    out: list[Machine] = []
    for line in LINES:
        for code, count in LINE_LAYOUT[line]:
            equipment_type, sensors = EQUIPMENT_TYPES[code]
            for i in range(1, count + 1):
                out.append(Machine(f"LINE_{line.upper()}_{code}_{i:03d}", equipment_type, line, len(out) + 1, sensors))
    return tuple(out)


MACHINES = _machines()

# Energy each machine type draws (metered separately), with nominal use per 5-minute report in the
# type's standard unit: (low, high).
ENERGY_PROFILE: dict[str, dict[str, tuple[float, float]]] = {
    "hydraulic_press": {"electricity": (8.0, 15.0), "compressed_air": (2.0, 6.0)},
    "cnc_mill": {"electricity": (3.0, 6.0), "water": (0.05, 0.2)},
    "injection_molder": {"electricity": (6.0, 12.0), "water": (0.2, 0.6), "steam": (20.0, 60.0)},
    "conveyor": {"electricity": (0.3, 1.0)},
    "air_compressor": {"electricity": (4.0, 9.0)},
    "heat_treatment_furnace": {"electricity": (10.0, 20.0), "gas": (5.0, 15.0)},
}
# Standard unit first, then the other units a meter may report in, with the factor from standard.
METER_UNITS: dict[str, tuple[tuple[str, float], ...]] = {
    "electricity": (("kWh", 1.0), ("Wh", 1000.0), ("MWh", 0.001)),
    "gas": (("m3", 1.0), ("Nm3", 0.95)),
    "steam": (("kg", 1.0), ("t", 0.001)),
    "water": (("m3", 1.0), ("L", 1000.0)),
    "compressed_air": (("Nm3", 1.0), ("m3", 1.05)),
}

# Inspection stations: code → inspection_type and the items it can measure.
QC_STATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "VISION": ("vision", ("WIDTH", "SCRATCH", "DENT", "COLOR_DELTA_E")),
    "GAUGE": ("dimension", ("WIDTH", "LENGTH", "HEIGHT", "THICKNESS", "DIAMETER", "ROUGHNESS")),
    "SCALE": ("weight", ("WEIGHT",)),
}
# Products made on each line; the batch of a shift decides which one.
PRODUCT_CODES: dict[str, tuple[str, ...]] = {
    "a": ("P12345678", "P12345679"),
    "b": ("P23456781", "P23456782"),
    "c": ("P34567812", "P34567813"),
    "d": ("P45678123", "P45678124"),
    "e": ("P56781234", "P56781235"),
    "f": ("P67812345", "P67812346"),
}
# Nominal size of a product's items comes from these ranges (a fixed function of the product code).
_ITEM_NOMINAL_RANGE: dict[str, tuple[float, float]] = {
    "WIDTH": (10.0, 50.0),
    "LENGTH": (50.0, 200.0),
    "HEIGHT": (5.0, 40.0),
    "THICKNESS": (1.0, 5.0),
    "DIAMETER": (4.0, 20.0),
    "WEIGHT": (50.0, 500.0),
    "ROUGHNESS": (0.4, 3.2),
    "COLOR_DELTA_E": (0.3, 1.2),
    "SCRATCH": (0.2, 0.6),  # mean count
    "DENT": (0.05, 0.2),  # mean count
}

ROBOT_MODELS = ("agv_type_a", "agv_type_b", "arm_6axis", "agv_type_a", "agv_type_c", "drone_x",
                "agv_type_b", "arm_6axis", "agv_type_c", "agv_type_a")  # fmt: skip
ROBOTS: tuple[tuple[str, str], ...] = tuple((f"ROBOT_{i:03d}", ROBOT_MODELS[(i - 1) % 10]) for i in range(1, 21))
ROBOT_WORK_ZONES = tuple(f"zone_{i}" for i in range(1, 9))
ROBOT_CHARGING_ZONE = "zone_9"
ROBOT_STANDBY_ZONE = "zone_10"
ROBOT_ERROR_CODES = ("E101", "E102", "E110", "E201", "E204", "E302", "E305", "E401", "E405", "E502", "E510")

ENV_ZONES = tuple(f"line_{line}_zone_{z}" for line in LINES for z in (1, 2))
# sensor_type → (sensor id code, low, high, typical level, step size)
_ENV_SENSORS: dict[str, tuple[str, float, float, float, float]] = {
    "temperature": ("TEMP", 18.0, 32.0, 24.0, 0.3),
    "humidity": ("HUM", 20.0, 80.0, 45.0, 1.0),
    "co2": ("CO2", 400.0, 1400.0, 650.0, 25.0),
    "pm25": ("PM25", 2.0, 150.0, 18.0, 2.0),
    "noise": ("NOISE", 40.0, 100.0, 72.0, 1.5),
    "pressure": ("PRES", 990.0, 1035.0, 1013.0, 0.4),
}


def env_sensor_types(zone_index: int) -> tuple[str, ...]:
    """Sensor types installed in the ``zone_index``-th (0-based) zone of :data:`ENV_ZONES`."""
    types = ["temperature", "humidity", "co2"]
    if zone_index % 2 == 0:
        types += ["pm25", "noise"]
    if zone_index % 3 == 0:
        types.append("pressure")
    return tuple(types)


# Devices: (device_id, device_type, location).
def _devices() -> tuple[tuple[str, str, str], ...]:
    zones = [f"zone_{i}" for i in range(1, 11)]
    out: list[tuple[str, str, str]] = []
    out += [(f"SENSOR_ENV_{i:03d}", "env_sensor", zones[(i + 5) % 10]) for i in range(1, 9)]
    out += [(f"SENSOR_EQ_{i:03d}", "equipment_sensor", f"line_{LINES[(i - 1) % 6]}") for i in range(1, 9)]
    out += [(f"ROBOT_{i:03d}", "robot", zones[(i - 1) % 8]) for i in range(1, 7)]
    out += [(f"GW_{i:03d}", "gateway", zones[(2 * i) % 10]) for i in range(1, 5)]
    out += [(f"PLC_{i:03d}", "plc", f"line_{LINES[i - 1]}") for i in range(1, 7)]
    out += [(f"CAM_{i:03d}", "camera", f"line_{LINES[i - 1]}") for i in range(1, 7)]
    return tuple(out)


DEVICES = _devices()
assert {t for _, t, _ in DEVICES} <= set(DEVICE_TYPES)
DEVICE_ERROR_CODES = ("NET_TIMEOUT", "NET_UNREACHABLE", "DHCP_FAIL", "AUTH_FAIL", "POWER_LOW", "FW_FAULT")
PING_TIMEOUT_MS = 400  # a failed ping reports the time it waited
# Typical round trip per device type (ms).
_DEVICE_LATENCY: dict[str, tuple[float, float]] = {
    "gateway": (5.0, 20.0),
    "plc": (5.0, 30.0),
    "env_sensor": (20.0, 80.0),
    "equipment_sensor": (15.0, 60.0),
    "camera": (30.0, 120.0),
    "robot": (40.0, 150.0),
}


def ip_address_hash(device_id: str) -> str:
    """The device's IP address as the gateway reports it: ``0x`` + 16 hex digits of its SHA-256.

    The address itself is made up from the device id and never leaves this function.
    """
    digest = hashlib.sha256(device_id.encode()).digest()
    address = f"10.{digest[0]}.{digest[1]}.{digest[2] or 1}"
    return "0x" + hashlib.sha256(address.encode()).hexdigest()[:16]


# -- shift context: batches, products, operators ---------------------------------------------------


def shift_of(at: datetime) -> int:
    """Shift number 0-2 (06-14, 14-22, 22-06 UTC)."""
    return ((at.hour - 6) % 24) // 8


def _shift_day(at: datetime) -> datetime:
    """The day a shift started on (the night shift belongs to the day it began)."""
    return at - timedelta(hours=6)


def batch_id(line: str, at: datetime) -> str:
    """Production batch running on ``line`` at ``at``: one per line and shift, ``BATCH_YYYYMMDD_NNN``."""
    day = _shift_day(at)
    number = LINES.index(line) * 3 + shift_of(at) + 1
    return f"BATCH_{day:%Y%m%d}_{number:03d}"


def product_code(line: str, at: datetime) -> str:
    """Product of the batch running on ``line`` at ``at``."""
    products = PRODUCT_CODES[line]
    day = _shift_day(at)
    return products[(day.toordinal() * 3 + shift_of(at)) % len(products)]


def operator_id(line: str, at: datetime) -> str:
    """Operator on duty for ``line`` at ``at``: ``OP001``-``OP018``, one per line and shift."""
    return f"OP{LINES.index(line) * 3 + shift_of(at) + 1:03d}"


def item_nominal(product: str, item_id: str) -> float:
    """Nominal value of ``item_id`` for ``product`` (a fixed function of the two)."""
    low, high = _ITEM_NOMINAL_RANGE[item_id]
    fraction = int.from_bytes(hashlib.sha256(f"{product}|{item_id}".encode()).digest()[:4]) / 2**32
    return round(low + (high - low) * fraction, 2)


# -- factories ------------------------------------------------------------------------------------


@dataclass
class EntityState:
    """Per-entity state common to all domains: when it last reported."""

    last_at: datetime | None = None


class MessageFactory(ABC):
    """Makes the messages of one domain; entities report in turn, each with its own state."""

    domain_name: ClassVar[str]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._turn = 0

    @property
    def domain(self) -> Domain:
        """The domain this factory writes for."""
        return DOMAINS[self.domain_name]

    @property
    @abstractmethod
    def states(self) -> list[Any]:
        """One state object per entity, in reporting order."""

    @abstractmethod
    def _message(self, state: Any, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        """The next message of the entity ``state`` at ``at`` (``elapsed`` since its last one)."""

    def next(self, at: datetime) -> dict[str, Any]:
        """The next entity's message at about ``at`` (strictly after that entity's previous message)."""
        states = self.states
        state = states[self._turn % len(states)]
        self._turn += 1
        at = floor_ms(at)
        if state.last_at is not None and at <= state.last_at:
            at = state.last_at + MS  # keeps (entity, timestamp) unique however fast we go
        elapsed = None if state.last_at is None else at - state.last_at
        state.last_at = at
        return self._message(state, at, elapsed)


def _walk(rng: random.Random, value: float, target: float, pull: float, noise: float) -> float:
    """One mean-reverting random-walk step."""
    return value + pull * (target - value) + rng.gauss(0.0, noise)


# equipment_metrics ----------------------------------------------------------------------------

# (equipment_type, sensor code) → (running level, idle level, noise)
_SENSOR_LEVELS: dict[tuple[str, str], tuple[float, float, float]] = {
    ("hydraulic_press", "TEMP"): (65.0, 30.0, 0.8),
    ("hydraulic_press", "VIB"): (0.9, 0.1, 0.08),
    ("hydraulic_press", "PRESS"): (160.0, 5.0, 4.0),
    ("cnc_mill", "TEMP"): (42.0, 26.0, 0.5),
    ("cnc_mill", "VIB"): (1.8, 0.1, 0.15),
    ("cnc_mill", "CURRENT"): (28.0, 2.0, 1.5),
    ("injection_molder", "TEMP"): (210.0, 60.0, 2.0),
    ("injection_molder", "PRESS"): (120.0, 3.0, 5.0),
    ("injection_molder", "CURRENT"): (45.0, 4.0, 2.0),
    ("conveyor", "VIB"): (0.6, 0.05, 0.05),
    ("conveyor", "CURRENT"): (8.0, 0.5, 0.4),
    ("air_compressor", "TEMP"): (75.0, 30.0, 1.0),
    ("air_compressor", "PRESS"): (7.5, 0.5, 0.2),
    ("air_compressor", "CURRENT"): (35.0, 1.0, 1.5),
    ("heat_treatment_furnace", "TEMP"): (850.0, 120.0, 5.0),
    ("heat_treatment_furnace", "CURRENT"): (60.0, 3.0, 2.5),
}
# Machine state → next states and their weights.
_MACHINE_TRANSITIONS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "running": (("idle", "setup", "maintenance"), (0.6, 0.3, 0.1)),
    "idle": (("running", "setup"), (0.8, 0.2)),
    "setup": (("running",), (1.0,)),
    "maintenance": (("idle",), (1.0,)),
}
_MACHINE_CHANGE_PROB = {"running": 0.02, "idle": 0.2, "setup": 0.3, "maintenance": 0.1}


@dataclass
class MachineState(EntityState):
    """A machine's operating state and its sensors' current values."""

    machine: Machine = field(default_factory=lambda: MACHINES[0])
    current: str = "running"
    previous: str = "idle"
    changed_at: datetime | None = None
    values: dict[str, float] = field(default_factory=dict)


def _transition_time(rng: random.Random, at: datetime, elapsed: timedelta | None) -> datetime:
    """When a change seen at ``at`` happened: some time since the previous report."""
    window = elapsed if elapsed is not None else timedelta(minutes=5)
    return floor_ms(at - rng.random() * window)


def _quality(rng: random.Random) -> str:
    draw = rng.random()
    return "good" if draw < 0.97 else ("uncertain" if draw < 0.99 else "bad")


class EquipmentMetricsFactory(MessageFactory):
    """Sensor readings per machine; values follow the machine's running/idle state."""

    domain_name = "equipment_metrics"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._states: list[MachineState] = []
        for machine in MACHINES:
            state = MachineState(machine=machine)
            state.current = "running" if rng.random() < 0.85 else "idle"
            state.previous = "idle" if state.current == "running" else "running"
            for code in machine.sensors:
                running, idle, _ = _SENSOR_LEVELS[(machine.equipment_type, code)]
                state.values[code] = running if state.current == "running" else idle
            self._states.append(state)

    @property
    def states(self) -> list[MachineState]:
        return self._states

    def _message(self, state: MachineState, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        rng, machine = self.rng, state.machine
        if state.changed_at is None:
            state.changed_at = floor_ms(at - timedelta(seconds=rng.uniform(60, 3600)))
        if rng.random() < _MACHINE_CHANGE_PROB[state.current]:
            choices, weights = _MACHINE_TRANSITIONS[state.current]
            state.previous, state.current = state.current, rng.choices(choices, weights)[0]
            state.changed_at = _transition_time(rng, at, elapsed)
        metrics = []
        for code in machine.sensors:
            running, idle, noise = _SENSOR_LEVELS[(machine.equipment_type, code)]
            target = running if state.current == "running" else idle
            value = max(0.0, _walk(rng, state.values[code], target, 0.2, noise))
            state.values[code] = value
            sensor_type, unit = SENSOR_CODES[code]
            metrics.append(
                {
                    "sensor_id": machine.sensor_id(code),
                    "sensor_type": sensor_type,
                    "value": round(value, 2),
                    "unit": unit,
                    "quality": _quality(rng),
                }
            )
        return {
            "timestamp": iso(at),
            "equipment_id": machine.equipment_id,
            "equipment_type": machine.equipment_type,
            "location": machine.location,
            "schema_version": self.domain.schema_version,
            "metrics": metrics,
            "status": {"current": state.current, "previous": state.previous, "changed_at": iso(state.changed_at)},
            "operator_id": operator_id(machine.line, at),
            "batch_id": batch_id(machine.line, at),
            "ingestion_timestamp": _ingestion(rng, at),
        }


# qc_result ------------------------------------------------------------------------------------


@dataclass
class StationState(EntityState):
    """An inspection station."""

    equipment_id: str = ""
    line: str = "a"
    inspection_type: str = "vision"
    items: tuple[str, ...] = ()


class QcResultFactory(MessageFactory):
    """One inspection result per product; values scatter around the product's nominal sizes."""

    domain_name = "qc_result"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._states = [
            StationState(equipment_id=f"LINE_{line.upper()}_{code}_001", line=line, inspection_type=kind, items=items)
            for line in LINES
            for code, (kind, items) in QC_STATIONS.items()
        ]

    @property
    def states(self) -> list[StationState]:
        return self._states

    def _measure(self, product: str, item_id: str) -> float:
        rng = self.rng
        nominal = item_nominal(product, item_id)
        if item_id in ("SCRATCH", "DENT"):  # defect counts: mostly 0, sometimes a few
            count = 0
            while rng.random() < nominal / (1 + nominal) and count < 9:
                count += 1
            return float(count)
        if item_id == "COLOR_DELTA_E":
            return round(abs(rng.gauss(nominal, 0.3)), 2)
        spread = 0.05 if rng.random() < 0.02 else 0.008  # an occasional out-of-tolerance part
        return round(nominal * (1 + rng.gauss(0.0, spread)), 3)

    def _message(self, state: StationState, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        rng = self.rng
        product = product_code(state.line, at)
        if len(state.items) <= 1:
            items = list(state.items)
        else:
            chosen = set(rng.sample(state.items, rng.randint(2, len(state.items))))
            items = [i for i in state.items if i in chosen]
        return {
            "timestamp": iso(at),
            "equipment_id": state.equipment_id,
            "inspection_type": state.inspection_type,
            "product_code": product,
            "batch_id": batch_id(state.line, at),
            "operator_id": operator_id(state.line, at),
            "location": f"line_{state.line}",
            "inspection_items": [
                {"item_id": i, "value": self._measure(product, i), "unit": ITEM_UNITS[i][0]} for i in items
            ],
            "schema_version": self.domain.schema_version,
            "ingestion_timestamp": _ingestion(rng, at),
        }


# energy_usage ---------------------------------------------------------------------------------


@dataclass
class MeterState(EntityState):
    """One energy meter: a machine and an energy type, reporting in a fixed unit."""

    machine: Machine = field(default_factory=lambda: MACHINES[0])
    energy_type: str = "electricity"
    unit: str = "kWh"
    factor: float = 1.0
    level: float = 1.0  # usage per report in the standard unit


class EnergyUsageFactory(MessageFactory):
    """Consumption per machine and energy type over a nominal 5-minute report window."""

    domain_name = "energy_usage"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._states: list[MeterState] = []
        for machine in MACHINES:
            for energy_type, (low, high) in ENERGY_PROFILE[machine.equipment_type].items():
                units = METER_UNITS[energy_type]
                unit, factor = units[0] if rng.random() < 0.8 else rng.choice(units[1:])
                assert unit in ENERGY_UNITS[energy_type]
                self._states.append(
                    MeterState(
                        machine=machine,
                        energy_type=energy_type,
                        unit=unit,
                        factor=factor,
                        level=rng.uniform(low, high),
                    )
                )

    @property
    def states(self) -> list[MeterState]:
        return self._states

    def _message(self, state: MeterState, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        rng = self.rng
        low, high = ENERGY_PROFILE[state.machine.equipment_type][state.energy_type]
        state.level = min(high * 1.1, max(low * 0.5, _walk(rng, state.level, (low + high) / 2, 0.1, (high - low) / 20)))
        usage = state.level * (rng.uniform(1.6, 2.2) if rng.random() < 0.01 else 1.0)  # rare peak
        return {
            "timestamp": iso(at),
            "equipment_id": state.machine.equipment_id,
            "energy_type": state.energy_type,
            "usage": round(usage * state.factor, 3),
            "unit": state.unit,
            "location": state.machine.location,
            "batch_id": batch_id(state.machine.line, at),
            "schema_version": self.domain.schema_version,
            "ingestion_timestamp": _ingestion(rng, at),
        }


# robot_status ---------------------------------------------------------------------------------

# Battery change in % per minute by state: (low, high); moving drains, charging recovers.
BATTERY_RATE: dict[str, tuple[float, float]] = {
    "moving": (-2.0, -0.5),
    "idle": (-0.1, -0.02),
    "error": (-0.1, -0.02),
    "charging": (1.5, 4.0),
}
assert set(BATTERY_RATE) == set(ROBOT_STATES)


@dataclass
class RobotState(EntityState):
    """A robot: state machine, battery, position, task and error."""

    robot_id: str = ""
    model: str = ""
    current: str = "idle"
    previous: str = "charging"
    changed_at: datetime | None = None
    battery: float = 100.0
    drain: float = 1.0  # this robot's drain while moving, % per minute
    location: str = "zone_1"
    home: str = "zone_1"
    task_id: str | None = None
    error_code: str | None = None


class RobotStatusFactory(MessageFactory):
    """Robot reports; a robot moves on tasks, drains its battery, charges, and sometimes faults."""

    domain_name = "robot_status"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._tasks: dict[str, int] = {}
        self._states: list[RobotState] = []
        for robot_id, model in ROBOTS:
            home = rng.choice(ROBOT_WORK_ZONES)
            current = rng.choices(("idle", "moving", "charging"), (0.4, 0.4, 0.2))[0]
            state = RobotState(
                robot_id=robot_id,
                model=model,
                current=current,
                previous="idle" if current != "idle" else "charging",
                battery=rng.uniform(40.0, 100.0) if current != "charging" else rng.uniform(25.0, 70.0),
                drain=rng.uniform(0.6, 1.8),
                location=ROBOT_CHARGING_ZONE if current == "charging" else home,
                home=home,
            )
            self._states.append(state)

    @property
    def states(self) -> list[RobotState]:
        return self._states

    def _task_id(self, at: datetime) -> str:
        day = f"{at:%Y%m%d}"
        self._tasks[day] = self._tasks.get(day, 0) + 1
        return f"TSK_{day}_{self._tasks[day]:03d}"

    def _rate(self, state: str, robot: RobotState) -> float:
        if state == "moving":
            return -robot.drain
        low, high = BATTERY_RATE[state]
        return self.rng.uniform(low, high)

    def _next_state(self, robot: RobotState) -> str:
        rng, battery = self.rng, robot.battery
        if robot.current == "idle":
            if battery < 35 and rng.random() < 0.6:
                return "charging"
            if rng.random() < 0.005:
                return "error"
            return "moving" if battery >= 25 and rng.random() < 0.35 else "idle"
        if robot.current == "moving":
            if battery < 22 and rng.random() < 0.7:
                return "charging"
            if rng.random() < 0.01:
                return "error"
            return "idle" if rng.random() < 0.12 else "moving"
        if robot.current == "charging":
            return "idle" if battery >= 99.5 or (battery >= 90 and rng.random() < 0.4) else "charging"
        return "idle" if rng.random() < 0.25 else "error"

    def _message(self, robot: RobotState, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        rng = self.rng
        if robot.changed_at is None:
            robot.changed_at = floor_ms(at - timedelta(seconds=rng.uniform(10, 600)))
            if robot.current == "moving":
                robot.task_id = self._task_id(at)
        minutes = 0.0 if elapsed is None else elapsed.total_seconds() / 60
        new = self._next_state(robot)
        if new != robot.current:
            changed = _transition_time(rng, at, elapsed)
            before = max(0.0, (changed - (at - (elapsed or timedelta()))).total_seconds() / 60)
            robot.battery += self._rate(robot.current, robot) * min(before, minutes)
            robot.battery += self._rate(new, robot) * max(0.0, minutes - before)
            robot.previous, robot.current, robot.changed_at = robot.current, new, changed
            self._enter(robot, new, at)
        else:
            robot.battery += self._rate(robot.current, robot) * minutes
            if robot.current == "moving" and rng.random() < 0.3:
                robot.location = rng.choice(ROBOT_WORK_ZONES) if robot.model != "arm_6axis" else robot.home
        robot.battery = min(100.0, max(0.0, robot.battery))
        return {
            "timestamp": iso(at),
            "robot_id": robot.robot_id,
            "model": robot.model,
            "status": {"current": robot.current, "previous": robot.previous, "changed_at": iso(robot.changed_at)},
            "location": robot.location,
            "battery_level": round(robot.battery, 1),
            "error_code": robot.error_code,
            "task_id": robot.task_id,
            "schema_version": self.domain.schema_version,
            "ingestion_timestamp": _ingestion(rng, at),
        }

    def _enter(self, robot: RobotState, new: str, at: datetime) -> None:
        """Side effects of entering ``new``: tasks, error codes, position."""
        rng = self.rng
        if new == "error":
            robot.error_code = rng.choice(ROBOT_ERROR_CODES)  # the task (if any) stays assigned
            return
        robot.error_code = None
        if new == "moving":
            robot.task_id = self._task_id(at)
            if robot.model != "arm_6axis":
                robot.location = rng.choice(ROBOT_WORK_ZONES)
        elif new == "charging":
            robot.task_id = None
            robot.location = ROBOT_CHARGING_ZONE if robot.model != "arm_6axis" else robot.home
        else:  # idle
            robot.task_id = None
            if robot.model != "arm_6axis" and rng.random() < 0.3:
                robot.location = ROBOT_STANDBY_ZONE


# environmental_readings -----------------------------------------------------------------------


@dataclass
class ZoneState(EntityState):
    """A zone's environment sensors and their current values."""

    location: str = ""
    number: int = 1
    values: dict[str, float] = field(default_factory=dict)


class EnvironmentalReadingsFactory(MessageFactory):
    """Zone readings; values drift slowly with a daily temperature cycle and CO2 build-ups."""

    domain_name = "environmental_readings"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._states = []
        for index, zone in enumerate(ENV_ZONES):
            values = {}
            for sensor_type in env_sensor_types(index):
                _, low, high, typical, step = _ENV_SENSORS[sensor_type]
                values[sensor_type] = min(high, max(low, typical + rng.gauss(0, step * 3)))
            self._states.append(ZoneState(location=zone, number=index + 1, values=values))

    @property
    def states(self) -> list[ZoneState]:
        return self._states

    def _target(self, sensor_type: str, zone: ZoneState, at: datetime) -> float:
        typical = _ENV_SENSORS[sensor_type][3]
        hour = at.hour + at.minute / 60
        if sensor_type == "temperature":  # warmest mid-afternoon
            return typical + 4.0 * (1 - abs(hour - 15) / 12)
        if sensor_type == "co2" and zone.number % 4 == 0:  # poorly ventilated zones build up CO2
            return 1050.0
        return typical

    def _message(self, zone: ZoneState, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        rng = self.rng
        readings = []
        for sensor_type, value in zone.values.items():
            code, low, high, _, step = _ENV_SENSORS[sensor_type]
            value = min(high, max(low, _walk(rng, value, self._target(sensor_type, zone, at), 0.05, step)))
            zone.values[sensor_type] = value
            readings.append(
                {
                    "sensor_id": f"ENV_{code}_{zone.number:02d}",
                    "sensor_type": sensor_type,
                    "value": float(round(value)) if sensor_type == "co2" else round(value, 1),
                    "unit": SENSOR_UNITS[sensor_type][0],
                }
            )
        return {
            "timestamp": iso(at),
            "location": zone.location,
            "readings": readings,
            "schema_version": self.domain.schema_version,
            "ingestion_timestamp": _ingestion(rng, at),
        }


# device_status --------------------------------------------------------------------------------


@dataclass
class DeviceState(EntityState):
    """A networked device: its round-trip level and its last successful heartbeat."""

    device_id: str = ""
    device_type: str = "gateway"
    location: str = ""
    ip_hash: str = ""
    latency: float = 20.0
    last_success: datetime | None = None
    failing: bool = False


class DeviceStatusFactory(MessageFactory):
    """Heartbeats; pings mostly succeed, failures come in short runs and usually carry a code."""

    domain_name = "device_status"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._states = []
        for device_id, device_type, location in DEVICES:
            low, high = _DEVICE_LATENCY[device_type]
            self._states.append(
                DeviceState(
                    device_id=device_id,
                    device_type=device_type,
                    location=location,
                    ip_hash=ip_address_hash(device_id),
                    latency=rng.uniform(low, high),
                )
            )

    @property
    def states(self) -> list[DeviceState]:
        return self._states

    def _message(self, device: DeviceState, at: datetime, elapsed: timedelta | None) -> dict[str, Any]:
        rng = self.rng
        if device.last_success is None:
            device.last_success = floor_ms(at - (elapsed or timedelta(seconds=rng.uniform(30, 120))))
        ping = rng.random() >= (0.5 if device.failing else 0.02)
        device.failing = not ping
        error_code: str | None = None
        if ping:
            spike = rng.uniform(3.0, 6.0) if rng.random() < 0.02 else 1.0
            latency = int(min(PING_TIMEOUT_MS, max(5.0, rng.lognormvariate(0.0, 0.25) * device.latency * spike)))
        else:
            latency = PING_TIMEOUT_MS
            error_code = rng.choice(DEVICE_ERROR_CODES) if rng.random() < 0.8 else None
        message = {
            "timestamp": iso(at),
            "device_id": device.device_id,
            "device_type": device.device_type,
            "location": device.location,
            "ip_address_hash": device.ip_hash,
            "status": {"ping_success": ping, "latency_ms": latency, "last_success_at": iso(device.last_success)},
            "error_code": error_code,
            "schema_version": self.domain.schema_version,
            "ingestion_timestamp": _ingestion(rng, at),
        }
        if ping:
            device.last_success = at
        return message


FACTORIES: dict[str, Callable[[random.Random], MessageFactory]] = {
    f.domain_name: f
    for f in (
        EquipmentMetricsFactory,
        QcResultFactory,
        EnergyUsageFactory,
        RobotStatusFactory,
        EnvironmentalReadingsFactory,
        DeviceStatusFactory,
    )
}
assert set(FACTORIES) == set(DOMAINS)


def make_factory(domain: str, rng: random.Random) -> MessageFactory:
    """A fresh message factory for ``domain`` drawing from ``rng``."""
    return FACTORIES[domain](rng)


def sample_messages(domain: str, n: int, *, seed: int = 0, start: datetime | None = None,
                    step: timedelta = timedelta(seconds=1)) -> list[dict[str, Any]]:  # fmt: skip
    """``n`` consecutive clean messages of one domain (a shortcut for tests and examples)."""
    factory = make_factory(domain, random.Random(f"{seed}:{domain}"))
    at = start or datetime(2025, 5, 24, 13, 0, tzinfo=UTC)
    return [factory.next(at + i * step) for i in range(n)]
