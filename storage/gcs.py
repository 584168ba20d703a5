"""Google Cloud Storage backend on ``google-cloud-storage``.

Every call passes ``retry=None`` and a short (connect, read) timeout, so failures surface at once
and the caller's retry policy (:mod:`storage.retry`) decides. Uploads are atomic: a GCS object
only becomes visible when its upload is complete. With an emulator address (fake-gcs-server,
``STORAGE_EMULATOR_HOST``) the client uses anonymous credentials.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from common.errors import CollectorError, FatalError, TransientError
from storage.base import ObjectInfo, ObjectNotFound, VendorEdge, validate_key, validate_prefix

_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
_EMULATOR_PROJECT = "fms-local"  # the emulator ignores projects, but bucket creation needs one


class GcsStore(VendorEdge):
    """A GCS bucket (or a bucket in a GCS emulator)."""

    def __init__(
        self,
        bucket: str,
        *,
        project: str | None = None,
        credentials_file: str | None = None,
        emulator_host: str | None = None,
        create_bucket: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        if emulator_host is None:
            # The same variable google-cloud-storage itself obeys; read here so we pick the credentials.
            emulator_host = os.environ.get("STORAGE_EMULATOR_HOST") or None
        self.bucket_name = bucket
        self.emulator_host = emulator_host
        self.create_bucket = create_bucket
        self._timeout = (connect_timeout, read_timeout)
        credentials: Credentials | None = None
        client_options: dict[str, Any] | None = None
        try:
            if emulator_host:
                credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
                client_options = {"api_endpoint": emulator_host}
                project = project or _EMULATOR_PROJECT
            elif credentials_file:
                import google.auth

                credentials, file_project = google.auth.load_credentials_from_file(
                    credentials_file, scopes=list(_SCOPES)
                )
                project = project or file_project
            self._client = storage.Client(project=project, credentials=credentials, client_options=client_options)
        except (auth_exceptions.DefaultCredentialsError, OSError, ValueError) as exc:
            # No usable credentials: a deployment problem that waiting will not fix.
            raise FatalError(f"GCS credentials for gs://{bucket}: {exc}") from exc
        self.project = self._client.project
        self._bucket = self._client.bucket(bucket)

    def describe(self) -> str:
        """``gs://bucket`` plus the emulator address when one is used."""
        return f"gs://{self.bucket_name}" + (f" at {self.emulator_host}" if self.emulator_host else "")

    def put(self, key: str, data: bytes) -> None:
        """Upload the bytes (single request, or a resumable upload that commits at the end)."""
        self._upload(key, data, only_new=False)

    def put_new(self, key: str, data: bytes) -> bool:
        """Upload with ``ifGenerationMatch=0``: the server refuses (412) if any generation of the key exists."""
        try:
            self._upload(key, data, only_new=True)
        except FatalError as exc:
            if isinstance(exc.__cause__, api_exceptions.PreconditionFailed):
                return False
            raise
        return True

    def _upload(self, key: str, data: bytes, *, only_new: bool) -> None:
        validate_key(key)
        blob = self._bucket.blob(key)

        def upload() -> None:
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                timeout=self._timeout,
                retry=None,
                if_generation_match=0 if only_new else None,
            )

        try:
            self._call(f"put {key}", upload)
        except FatalError as exc:
            if not (self.create_bucket and isinstance(exc.__cause__, api_exceptions.NotFound)):
                raise
            self._make_bucket()
            self._call(f"put {key}", upload)

    def get(self, key: str) -> bytes:
        """Download the object; :class:`ObjectNotFound` if it is missing (FatalError if the bucket is)."""
        validate_key(key)
        try:
            return bytes(self._bucket.blob(key).download_as_bytes(timeout=self._timeout, retry=None))
        except api_exceptions.NotFound as exc:
            # GCS answers 404 for a missing object and for a missing bucket alike; a listing tells them apart.
            self._probe(f"get {key}")
            raise ObjectNotFound(key) from exc
        except Exception as exc:
            raise self._translate(exc, f"get {key}") from exc

    def put_file(self, key: str, path: str) -> None:
        """Upload a local file; the object appears only when the upload commits."""
        validate_key(key)
        blob = self._bucket.blob(key)
        self._call(
            f"put {key}",
            lambda: blob.upload_from_filename(
                path, content_type="application/octet-stream", timeout=self._timeout, retry=None
            ),
        )

    def get_file(self, key: str, path: str) -> None:
        """Download into a local file."""
        validate_key(key)
        try:
            self._bucket.blob(key).download_to_filename(path, timeout=self._timeout, retry=None)
        except api_exceptions.NotFound as exc:
            self._probe(f"get {key}")
            raise ObjectNotFound(key) from exc
        except Exception as exc:
            raise self._translate(exc, f"get {key}") from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All blobs below ``prefix`` (every page), sorted by key."""
        validate_prefix(prefix)

        def listing() -> list[ObjectInfo]:
            blobs = self._client.list_blobs(self._bucket, prefix=prefix or None, timeout=self._timeout, retry=None)
            return [
                ObjectInfo(
                    key=blob.name,
                    size=int(blob.size or 0),
                    updated=_utc(blob.updated),
                    etag=blob.etag,
                    generation=None if blob.generation is None else str(blob.generation),
                )
                for blob in blobs
            ]

        found = self._call(f"list {prefix!r}", listing)
        found.sort(key=lambda info: info.key)
        return found

    def delete(self, key: str) -> None:
        """Delete the blob; a missing one is fine."""
        validate_key(key)
        try:
            self._bucket.blob(key).delete(timeout=self._timeout, retry=None)
        except api_exceptions.NotFound:
            return
        except Exception as exc:
            raise self._translate(exc, f"delete {key}") from exc

    def exists(self, key: str) -> bool:
        """Object metadata GET; False on 404 (including a missing bucket)."""
        validate_key(key)
        blob = self._bucket.blob(key)
        return bool(self._call(f"exists {key}", lambda: blob.exists(timeout=self._timeout, retry=None)))

    def check(self) -> None:
        """List at most one blob: proves reachability, credentials, objects.list permission and the bucket.

        A listing rather than a bucket GET because object-level roles (e.g. storage.objectAdmin)
        lack ``storage.buckets.get``.
        """
        try:
            self._probe("check")
        except FatalError as exc:
            if not (self.create_bucket and isinstance(exc.__cause__, api_exceptions.NotFound)):
                raise
            self._make_bucket()

    def _probe(self, action: str) -> None:
        def first_page() -> None:
            blobs = self._client.list_blobs(self._bucket, max_results=1, timeout=self._timeout, retry=None)
            for _ in blobs:
                break

        self._call(action, first_page)

    def _make_bucket(self) -> None:
        try:
            self._client.create_bucket(self.bucket_name, timeout=self._timeout, retry=None)
        except api_exceptions.Conflict:
            return  # created concurrently
        except Exception as exc:
            raise self._translate(exc, "create bucket") from exc

    def _classify(self, exc: BaseException, action: str) -> CollectorError:
        """Map one client / transport exception onto the project's error kinds."""
        where = f"GCS {action} ({self.describe()})"
        if isinstance(exc, api_exceptions.NotFound):
            return FatalError(f"{where}: bucket missing: {exc.message}")
        if isinstance(exc, api_exceptions.GoogleAPICallError):
            status = int(exc.code or 0)
            detail = f"{where}: HTTP {status}: {exc.message}"
            if status in (408, 429) or status >= 500:
                return TransientError(detail)
            return FatalError(detail)  # 401/403 and any other 4xx: retrying will not help
        if isinstance(exc, auth_exceptions.RefreshError):
            # A rejected key is fatal; a token endpoint that is briefly down is not.
            kind = TransientError if getattr(exc, "retryable", False) else FatalError
            return kind(f"{where}: credentials refresh failed: {exc}")
        if isinstance(exc, auth_exceptions.DefaultCredentialsError):
            return FatalError(f"{where}: no credentials: {exc}")
        if isinstance(exc, InvalidResponse):  # raw media-transfer answer the client did not re-wrap
            status = int(getattr(exc.response, "status_code", 0) or 0)
            kind = TransientError if status in (408, 429) or status >= 500 else FatalError
            return kind(f"{where}: HTTP {status}: {exc}")
        if isinstance(
            exc, DataCorruption | auth_exceptions.TransportError | requests.exceptions.RequestException | OSError
        ):
            return TransientError(f"{where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, CollectorError):
            return exc
        return FatalError(f"{where}: unexpected {type(exc).__name__}: {exc}")


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, tz=UTC)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
