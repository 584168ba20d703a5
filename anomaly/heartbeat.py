"""Offline timeouts of robots and devices from the dimension tables (used by rules and the sweep)."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from anomaly.dims import Dimensions
from anomaly.records import EngineConfig


def robot_timeouts(dims: Dimensions, config: EngineConfig) -> dict[str, float]:
    """robot_id → offline timeout in seconds for robots whose ``dim_robot`` row has a heartbeat_cycle."""
    robots = dims["dim_robot"].filter(pl.col("heartbeat_cycle").is_not_null())
    return {r: c * config.robot_missed_heartbeats for r, c in zip(robots["robot_id"], robots["heartbeat_cycle"],
                                                                  strict=True)}


def device_timeout_frame(dims: Dimensions, config: EngineConfig) -> pl.DataFrame:
    """device_type → (max_latency, timeout_multiplier with the default filled in)."""
    return dims["dim_device_threshold"].unique("device_type", keep="first", maintain_order=True).with_columns(
        pl.col("timeout_multiplier").fill_null(config.device_timeout_multiplier)
    )


def timeouts_for_devices(dims: Dimensions, config: EngineConfig) -> Callable[[str, str | None], float]:
    """A function (device_id, device_type) → timeout seconds = heartbeat_cycle × timeout_multiplier."""
    cycles = {d: c for d, c in zip(dims["dim_device"]["device_id"], dims["dim_device"]["heartbeat_cycle"], strict=True)
              if c is not None}
    types = dict(zip(dims["dim_device"]["device_id"], dims["dim_device"]["device_type"], strict=True))
    frame = device_timeout_frame(dims, config)
    multipliers = dict(zip(frame["device_type"], frame["timeout_multiplier"], strict=True))
    default_cycle = config.device_default_heartbeat.total_seconds()

    def timeout(device_id: str, device_type: str | None) -> float:
        kind = types.get(device_id, device_type)
        return cycles.get(device_id, default_cycle) * multipliers.get(kind, config.device_timeout_multiplier)

    return timeout
