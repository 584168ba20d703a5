"""Session-wide real storage servers (moto for S3, fake-gcs-server for GCS) and a store per backend.

``tests/__init__.py`` must stay: without it this folder would import as a top-level package
named ``storage`` and shadow the real one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from embedded.servers import FakeGcsServer, MotoS3Server
from storage import ObjectStore, StorageConfig, open_store

BACKENDS = ("local", "s3", "gcs")

ConfigFactory = Callable[..., StorageConfig]


# moto_server and gcs_server are the session fixtures of tests/conftest.py.


def unique_bucket() -> str:
    """A fresh valid bucket name, so tests sharing a server never see each other's objects."""
    return f"test-{uuid.uuid4().hex[:20]}"


@pytest.fixture
def s3_config(moto_server: MotoS3Server) -> ConfigFactory:
    """``s3_config(endpoint=None, bucket=None)``: settings for moto, or for a proxy in front of it."""

    def make(endpoint: str | None = None, bucket: str | None = None) -> StorageConfig:
        return StorageConfig(
            backend="minio",
            bucket=bucket or unique_bucket(),
            minio_endpoint=endpoint or moto_server.endpoint,
            minio_access_key=moto_server.access_key,
            minio_secret_key=moto_server.secret_key,
        )

    return make


@pytest.fixture
def gcs_config(gcs_server: FakeGcsServer) -> ConfigFactory:
    """``gcs_config(emulator_host=None, bucket=None)``: settings for fake-gcs, or for a proxy."""

    def make(emulator_host: str | None = None, bucket: str | None = None) -> StorageConfig:
        return StorageConfig(
            backend="gcs",
            bucket=bucket or unique_bucket(),
            gcs_emulator_host=emulator_host or gcs_server.emulator_host,
        )

    return make


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A ready, empty store of each backend, built through the factory as production does."""
    backend: str = request.param
    if backend == "local":
        config = StorageConfig(backend="local", local_dir=str(tmp_path), bucket="fms-data")
    else:
        config = request.getfixturevalue(f"{backend}_config")()
    created = open_store(config, create_bucket=True)
    created.check()
    return created
