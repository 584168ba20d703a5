"""Create the domain, DLQ and ``iot.alarm_log`` topics with SPEC's partitions, compression and retention.

``python -m collector create-topics [--replication N] [--wait]``; KAFKA_BROKERS names the cluster, and the
collector's KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* / KAFKA_SSL_* settings apply.
Existing topics are left as they are (reported), so the command is safe to re-run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from common.errors import ConfigError
from domains import ALARM_TOPIC, DOMAINS
from domains.base import TopicSpec
from settings import kafka_settings


def all_topics() -> list[TopicSpec]:
    """Every topic the system uses."""
    specs: list[TopicSpec] = []
    for domain in DOMAINS.values():
        specs += [domain.topic, domain.dlq_topic]
    return [*specs, ALARM_TOPIC]


def create_topics(
    bootstrap: str, replication: int = 1, timeout: float = 30.0, client_config: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Create missing topics; returns topic → 'created' | 'exists'. ``client_config``: librdkafka security
    settings (TLS/SASL, as :meth:`settings.KafkaSettings.client_config` gives them)."""
    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})
    new = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication, config=s.config())
        for s in all_topics()
    ]
    outcome: dict[str, str] = {}
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout)
            outcome[name] = "created"
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = "exists"
            else:
                raise
    return outcome


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m collector create-topics", description=__doc__)
    parser.add_argument("--brokers", default=os.environ.get("KAFKA_BROKERS"))
    parser.add_argument("--replication", type=int, default=int(os.environ.get("TOPIC_REPLICATION", "1")))
    parser.add_argument("--retries", type=int, default=30, help="attempts while the broker is starting")
    args = parser.parse_args(argv)
    if not args.brokers:
        print("create-topics: KAFKA_BROKERS: is required (host:port)", file=sys.stderr)
        return 2
    try:  # the same security settings (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*) as the collector
        client = kafka_settings({**os.environ, "KAFKA_BROKERS": args.brokers}, "fms-create-topics").client_config()
    except ConfigError as exc:
        print(f"create-topics: {exc}", file=sys.stderr)
        return 2
    for attempt in range(args.retries):
        try:
            outcome = create_topics(args.brokers, args.replication, client_config=client)
            break
        except KafkaException as exc:
            if attempt == args.retries - 1:
                print(f"create-topics: failed: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)
    for name, state in sorted(outcome.items()):
        print(f"{state:8s} {name}")
    return 0
