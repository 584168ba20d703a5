"""A fresh store of each backend for end-to-end tests, with the environment a subprocess needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedded.servers import FakeGcsServer, MotoS3Server
from storage.base import ObjectStore
from storage.factory import StorageConfig, open_store
from tests.conftest import new_bucket


def make_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, endpoint: str | None = None
) -> tuple[ObjectStore, dict[str, str]]:
    """An empty, reachable store (local dir, moto S3 or fake-gcs) and its env variables.

    ``endpoint`` points the subprocess (not the test's own client) elsewhere, e.g. at a proxy.
    """
    if backend == "local":
        config = StorageConfig(backend="local", local_dir=str(tmp_path / "data"), bucket="fms-data")
        env = {"STORAGE_BACKEND": "local", "LOCAL_STORAGE_DIR": config.local_dir}
    elif backend == "minio":
        moto: MotoS3Server = request.getfixturevalue("moto_server")
        bucket = new_bucket()
        config = StorageConfig(backend="minio", bucket=bucket, minio_endpoint=moto.endpoint,
                               minio_access_key=moto.access_key, minio_secret_key=moto.secret_key)
        env = {"STORAGE_BACKEND": "minio", "MINIO_ENDPOINT": endpoint or moto.endpoint, "MINIO_BUCKET": bucket,
               "MINIO_ACCESS_KEY": moto.access_key, "MINIO_SECRET_KEY": moto.secret_key, "MINIO_SECURE": "false"}
    else:
        gcs: FakeGcsServer = request.getfixturevalue("gcs_server")
        bucket = new_bucket()
        config = StorageConfig(backend="gcs", bucket=bucket, gcs_emulator_host=gcs.emulator_host)
        env = {"STORAGE_BACKEND": "gcs", "GCS_BUCKET": bucket, "GCS_PROJECT": "test",
               "STORAGE_EMULATOR_HOST": gcs.emulator_host}
    store = open_store(config, create_bucket=True)
    store.check()
    return store, env
