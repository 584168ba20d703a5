"""Fixtures of the reliability suite: a :class:`Scenario` on the per-test broker and the session's S3 server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.topics import create_topics
from embedded.servers import MotoS3Server, TansuBroker
from tests.reliability.brokers import PersistentTansu
from tests.reliability.harness import Scenario


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A fresh in-memory Tansu with every topic, killed (not stopped: it takes 5 s to stop) at the end."""
    broker = TansuBroker(log_dir=tmp_path).start()
    try:
        create_topics(broker.bootstrap)
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def scenario_factory(
    broker: TansuBroker, moto_server: MotoS3Server, tmp_path: Path
) -> Iterator[Callable[..., Scenario]]:
    """Build scenarios (``endpoint=`` points the collectors at a proxy); all are closed at the end."""
    made: list[Scenario] = []

    def make(**kwargs: object) -> Scenario:
        scenario = Scenario(broker.bootstrap, moto_server, tmp_path, **kwargs)  # type: ignore[arg-type]
        made.append(scenario)
        return scenario

    try:
        yield make
    finally:
        for scenario in made:
            scenario.close()


@pytest.fixture
def scenario(scenario_factory: Callable[..., Scenario]) -> Scenario:
    """A scenario with the collectors talking to S3 directly."""
    return scenario_factory()


@pytest.fixture
def persistent_broker(moto_server: MotoS3Server, tmp_path: Path) -> Iterator[PersistentTansu]:
    """A Tansu broker on S3 storage (survives a restart) with every topic created."""
    broker = PersistentTansu(moto_server, log_dir=tmp_path).start()
    try:
        create_topics(broker.bootstrap)
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def persistent_scenario(
    persistent_broker: PersistentTansu, moto_server: MotoS3Server, tmp_path: Path
) -> Iterator[Scenario]:
    """A scenario on the persistent broker."""
    scenario = Scenario(persistent_broker.bootstrap, moto_server, tmp_path)
    try:
        yield scenario
    finally:
        scenario.close()


@pytest.fixture
def checking_broker(moto_server: MotoS3Server, tmp_path: Path) -> Iterator[PersistentTansu]:
    """A Tansu on S3 storage with a schema registry, so that a topic can be made to refuse records."""
    broker = PersistentTansu(moto_server, schema_registry=True, log_dir=tmp_path).start()
    try:
        create_topics(broker.bootstrap)
        yield broker
    finally:
        broker.kill()
