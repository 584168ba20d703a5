"""Shared fixtures: real servers (Tansu broker, moto S3, fake-gcs-server) started by the suite.

The broker is per test (Tansu starts in well under a second and a fresh one isolates topics,
groups and offsets); storage servers live for the session and tests use fresh buckets.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("RUST_BACKTRACE", "0")  # polars panics on corrupt Avro are caught; keep them short

from collector.topics import create_topics  # noqa: E402
from embedded.servers import FakeGcsServer, MotoS3Server, TansuBroker  # noqa: E402


@pytest.fixture
def kafka() -> Iterator[TansuBroker]:
    """A fresh Tansu broker with every domain, DLQ and alarm topic created."""
    with TansuBroker() as broker:
        create_topics(broker.bootstrap)
        yield broker


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3Server]:
    """One moto S3 server for the session."""
    with MotoS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    """One fake-gcs-server for the session."""
    with FakeGcsServer() as server:
        yield server


def new_bucket() -> str:
    """A fresh bucket name so tests sharing a server never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:16]}"
