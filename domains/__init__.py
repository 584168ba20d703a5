"""The six factory IoT domains: schemas, topics, flattening, keys, and batch decoding.

``DOMAINS`` is the registry; ``domain_for_topic`` maps a Kafka topic to its domain.
"""

from __future__ import annotations

from domains import (
    device_status,
    energy_usage,
    environmental_readings,
    equipment_metrics,
    qc_result,
    robot_status,
)
from domains.base import Domain, TopicSpec

ALARM_TOPIC = TopicSpec("iot.alarm_log", partitions=6, retention_days=30)

DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        equipment_metrics.DOMAIN,
        qc_result.DOMAIN,
        energy_usage.DOMAIN,
        robot_status.DOMAIN,
        environmental_readings.DOMAIN,
        device_status.DOMAIN,
    )
}

_BY_TOPIC = {d.topic.name: d for d in DOMAINS.values()}


def domain_for_topic(topic: str) -> Domain:
    """The domain whose source topic is ``topic`` (KeyError if none)."""
    return _BY_TOPIC[topic]


__all__ = ["ALARM_TOPIC", "DOMAINS", "Domain", "TopicSpec", "domain_for_topic"]
