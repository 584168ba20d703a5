"""The anomaly engine (SPEC §2.2): dimension tables, per-domain rules, state, alarms and DLQ routing.

Pure and I/O-light: :class:`AnomalyEngine` evaluates decoded batches; :class:`Dimensions` loads the
tables from object storage; :class:`EngineState` holds the per-partition state and the offline sweep.
"""

from __future__ import annotations

from anomaly.dims import Dimensions
from anomaly.engine import AnomalyEngine
from anomaly.records import (
    ALARM_SCHEMA,
    DLQ_SCHEMA,
    REASON_PRIORITY,
    EngineConfig,
    Evaluation,
    alarm_id,
    flag_schema,
)
from anomaly.samples import upload_samples
from anomaly.state import EngineState

__all__ = [
    "ALARM_SCHEMA",
    "DLQ_SCHEMA",
    "REASON_PRIORITY",
    "AnomalyEngine",
    "Dimensions",
    "EngineConfig",
    "EngineState",
    "Evaluation",
    "alarm_id",
    "flag_schema",
    "upload_samples",
]
