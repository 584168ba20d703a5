"""Storage settings and the one place that picks the backend.

``StorageConfig.from_env(os.environ)`` validates the environment once at start-up;
``open_store(config)`` turns it into an :class:`~storage.base.ObjectStore`. Nothing else in the
code base looks at which backend is in use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from common.errors import ConfigError
from storage.base import ObjectStore

Backend = Literal["local", "minio", "gcs"]
BACKENDS: tuple[Backend, ...] = ("local", "minio", "gcs")
DEFAULT_BUCKET = "fms-data"

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, repr=False)
class StorageConfig:
    """Where objects go. ``bucket`` is the MinIO/GCS bucket, or the folder inside ``local_dir``."""

    backend: Backend = "local"
    local_dir: str = "./data"
    bucket: str = DEFAULT_BUCKET
    minio_endpoint: str | None = None
    minio_access_key: str | None = None
    minio_secret_key: str | None = None
    minio_secure: bool = False
    gcs_project: str | None = None
    gcs_credentials_file: str | None = None
    minio_region: str | None = None
    gcs_emulator_host: str | None = None

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "minio_secret_key" and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"StorageConfig({', '.join(parts)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StorageConfig:
        """Read and validate the storage variables; ConfigError names the first bad one.

        STORAGE_BACKEND (local|minio|gcs, default local), LOCAL_STORAGE_DIR (default ./data),
        MINIO_ENDPOINT (host:port, no scheme), MINIO_ACCESS_KEY, MINIO_SECRET_KEY,
        MINIO_BUCKET (default fms-data), MINIO_SECURE (true/false, default false; true = HTTPS with
        the server certificate verified), SSL_CERT_FILE (PEM CA bundle that verifies it when MinIO's
        certificate is signed by a private CA; default: certifi's bundle), MINIO_REGION,
        GCS_BUCKET (default fms-data), GCS_PROJECT, GOOGLE_APPLICATION_CREDENTIALS,
        STORAGE_EMULATOR_HOST (GCS emulator; anonymous credentials). The local backend's folder
        name is MINIO_BUCKET's value so that a local tree mirrors the bucket layout.
        """

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        backend = (get("STORAGE_BACKEND") or "local").lower()
        if backend not in BACKENDS:
            raise ConfigError(f"STORAGE_BACKEND: expected one of {', '.join(BACKENDS)} (got {backend!r})")

        if backend == "gcs":
            bucket = get("GCS_BUCKET") or DEFAULT_BUCKET
            if not _GCS_BUCKET.match(bucket):
                raise ConfigError(
                    f"GCS_BUCKET: expected 3-63 lowercase letters, digits, '-', '_' or '.' (got {bucket!r})"
                )
            credentials_file = get("GOOGLE_APPLICATION_CREDENTIALS")
            emulator_host = get("STORAGE_EMULATOR_HOST")
            if credentials_file and not emulator_host and not os.path.isfile(credentials_file):
                raise ConfigError(
                    f"GOOGLE_APPLICATION_CREDENTIALS: expected a readable key file (not found: {credentials_file})"
                )
            return cls(
                backend="gcs",
                bucket=bucket,
                gcs_project=get("GCS_PROJECT"),
                gcs_credentials_file=credentials_file,
                gcs_emulator_host=emulator_host,
            )

        bucket = get("MINIO_BUCKET") or DEFAULT_BUCKET
        if not _S3_BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError(f"MINIO_BUCKET: expected 3-63 lowercase letters, digits, '-' or '.' (got {bucket!r})")

        if backend == "local":
            return cls(backend="local", local_dir=get("LOCAL_STORAGE_DIR") or "./data", bucket=bucket)

        endpoint = get("MINIO_ENDPOINT")
        if endpoint is None:
            raise ConfigError("MINIO_ENDPOINT: required when STORAGE_BACKEND=minio (host:port)")
        match = _HOST_PORT.match(endpoint)
        if "://" in endpoint or match is None:
            raise ConfigError(
                f"MINIO_ENDPOINT: expected host:port without scheme or path, e.g. minio:9000 "
                f"(set MINIO_SECURE=true for https) (got {endpoint!r})"
            )
        if match["port"] is not None and not 0 < int(match["port"]) < 65536:
            raise ConfigError(f"MINIO_ENDPOINT: port must be 1-65535 (got {endpoint!r})")
        access_key = get("MINIO_ACCESS_KEY")
        if access_key is None:
            raise ConfigError("MINIO_ACCESS_KEY: required when STORAGE_BACKEND=minio")
        secret_key = get("MINIO_SECRET_KEY")
        if secret_key is None:
            raise ConfigError("MINIO_SECRET_KEY: required when STORAGE_BACKEND=minio")
        secure = _parse_bool("MINIO_SECURE", get("MINIO_SECURE"), default=False)
        ca_file = get("SSL_CERT_FILE")  # read by storage.s3 for the HTTPS client; checked here, at start
        if secure and ca_file and not (os.path.isfile(ca_file) and os.access(ca_file, os.R_OK)):
            raise ConfigError(
                f"SSL_CERT_FILE: expected a readable PEM CA bundle for MINIO_SECURE=true (not found: {ca_file})"
            )
        return cls(
            backend="minio",
            bucket=bucket,
            minio_endpoint=endpoint,
            minio_access_key=access_key,
            minio_secret_key=secret_key,
            minio_secure=secure,
            minio_region=get("MINIO_REGION"),
        )


def open_store(config: StorageConfig, *, create_bucket: bool = False) -> ObjectStore:
    """Build the configured backend (the only backend switch in the code base).

    ``create_bucket`` lets MinIO/GCS create a missing bucket (demo, tests); production leaves
    it off so a missing bucket is a FatalError. The local backend always creates its folder.
    No network call happens here; run ``store.check()`` for readiness.
    """
    if config.backend == "local":
        from storage.local import LocalStore

        return LocalStore(config.local_dir, config.bucket)
    if config.backend == "minio":
        from storage.s3 import S3Store

        if not (config.minio_endpoint and config.minio_access_key and config.minio_secret_key):
            raise ConfigError("MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY: required when STORAGE_BACKEND=minio")
        return S3Store(
            config.minio_endpoint,
            config.minio_access_key,
            config.minio_secret_key,
            config.bucket,
            secure=config.minio_secure,
            region=config.minio_region,
            create_bucket=create_bucket,
        )
    if config.backend == "gcs":
        from storage.gcs import GcsStore

        return GcsStore(
            config.bucket,
            project=config.gcs_project,
            credentials_file=config.gcs_credentials_file,
            emulator_host=config.gcs_emulator_host,
            create_bucket=create_bucket,
        )
    raise ConfigError(f"STORAGE_BACKEND: expected one of {', '.join(BACKENDS)} (got {config.backend!r})")


def _parse_bool(name: str, value: str | None, *, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false (got {value!r})")
