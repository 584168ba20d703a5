"""Per-domain anomaly rules (one module per domain) and the registry the engine uses."""

from __future__ import annotations

from anomaly.rules import (
    device_status,
    energy_usage,
    environmental_readings,
    equipment_metrics,
    qc_result,
    robot_status,
)
from anomaly.rules.base import RuleSet

RULES: dict[str, RuleSet] = {
    "equipment_metrics": equipment_metrics.RULES,
    "qc_result": qc_result.RULES,
    "energy_usage": energy_usage.RULES,
    "robot_status": robot_status.RULES,
    "environmental_readings": environmental_readings.RULES,
    "device_status": device_status.RULES,
}

__all__ = ["RULES", "RuleSet"]
