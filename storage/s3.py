"""S3 / MinIO backend on the ``minio`` SDK.

The SDK's HTTP client is replaced by one with short timeouts and no internal retries, so a
failure surfaces at once as :class:`~common.errors.TransientError` and the caller's retry policy
(:mod:`storage.retry`) decides what happens next. A single PUT (or a multipart upload, which
only appears on completion) makes every write atomic.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from common.errors import CollectorError, FatalError, TransientError
from storage.base import ObjectInfo, ObjectNotFound, VendorEdge, validate_key, validate_prefix

# Codes that retrying cannot fix: credentials, permissions, a missing bucket, a wrong clock.
_FATAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "InvalidToken",
        "NoSuchBucket",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "XMinioServerNotInitialized",
    }
)
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


class S3Store(VendorEdge):
    """A bucket on an S3-compatible server (MinIO in production, moto in tests)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        try:
            check_bucket_name(bucket)
        except ValueError as exc:
            raise FatalError(f"S3 bucket name {bucket!r}: {exc}") from exc
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        self.region = region
        self.create_bucket = create_bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,  # our retry layer decides; the SDK default retries 5x on 5xx
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),  # same CA lookup as the SDK
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )

    def describe(self) -> str:
        """``s3://bucket at http(s)://endpoint`` (no credentials)."""
        scheme = "https" if self.secure else "http"
        return f"s3://{self.bucket} at {scheme}://{self.endpoint}"

    def put(self, key: str, data: bytes) -> None:
        """Upload in one request (multipart above the SDK's part size); creates the bucket if allowed."""
        self._upload(key, data, only_new=False)

    def put_new(self, key: str, data: bytes) -> bool:
        """Upload with ``If-None-Match: *`` in a single PUT (so the condition covers the whole object);
        the server answers 412 PreconditionFailed when the key exists, and nothing is written."""
        try:
            self._upload(key, data, only_new=True)
        except FatalError as exc:
            if _code(exc.__cause__) == "PreconditionFailed":
                return False
            raise
        return True

    def _upload(self, key: str, data: bytes, *, only_new: bool) -> None:
        validate_key(key)

        def upload() -> None:
            if only_new:
                # put_object() would turn an If-None-Match header into user metadata (x-amz-meta-...) and
                # split objects above 5 MiB into parts; the SDK's single-request PutObject sends it as is.
                self._client._put_object(
                    self.bucket, key, data, headers={"Content-Type": "application/octet-stream", "If-None-Match": "*"}
                )
            else:
                self._client.put_object(
                    self.bucket, key, io.BytesIO(data), len(data), content_type="application/octet-stream"
                )

        try:
            self._call(f"put {key}", upload)
        except FatalError as exc:
            if not (self.create_bucket and _code(exc.__cause__) == "NoSuchBucket"):
                raise
            self._make_bucket()
            self._call(f"put {key}", upload)

    def get(self, key: str) -> bytes:
        """Download the whole object; :class:`ObjectNotFound` if it does not exist."""
        validate_key(key)

        def download() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        try:
            return download()
        except S3Error as exc:
            if exc.code in _MISSING_OBJECT_CODES:
                raise ObjectNotFound(key) from exc
            raise self._translate(exc, f"get {key}") from exc
        except Exception as exc:
            raise self._translate(exc, f"get {key}") from exc

    def put_file(self, key: str, path: str) -> None:
        """Upload a local file (multipart for large files); the object appears only when complete."""
        validate_key(key)
        self._call(f"put {key}", lambda: self._client.fput_object(self.bucket, key, path))

    def get_file(self, key: str, path: str) -> None:
        """Download into a local file."""
        validate_key(key)
        try:
            self._client.fget_object(self.bucket, key, path)
        except S3Error as exc:
            if exc.code in _MISSING_OBJECT_CODES:
                raise ObjectNotFound(key) from exc
            raise self._translate(exc, f"get {key}") from exc
        except Exception as exc:
            raise self._translate(exc, f"get {key}") from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """ListObjectsV2 (all pages) below ``prefix``, sorted by key."""
        validate_prefix(prefix)

        def listing() -> list[ObjectInfo]:
            found = []
            for obj in self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                found.append(
                    ObjectInfo(
                        key=obj.object_name,
                        size=int(obj.size or 0),
                        updated=_utc(obj.last_modified),
                        etag=obj.etag,
                    )
                )
            return found

        found = self._call(f"list {prefix!r}", listing)
        found.sort(key=lambda info: info.key)
        return found

    def delete(self, key: str) -> None:
        """DeleteObject; S3 answers success for a missing key."""
        validate_key(key)
        self._call(f"delete {key}", lambda: self._client.remove_object(self.bucket, key))

    def exists(self, key: str) -> bool:
        """HeadObject. A missing bucket is FatalError when the SDK looks up the bucket's region
        (no region configured); with a fixed region a HEAD 404 cannot tell bucket from key: False."""
        validate_key(key)
        try:
            self._client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_OBJECT_CODES:
                return False
            raise self._translate(exc, f"exists {key}") from exc
        except Exception as exc:
            raise self._translate(exc, f"exists {key}") from exc
        return True

    def check(self) -> None:
        """HeadBucket: reachable, credentials accepted, bucket present (created if allowed)."""
        if self._call("check", lambda: self._client.bucket_exists(self.bucket)):
            return
        if self.create_bucket:
            self._make_bucket()
            return
        raise FatalError(f"S3 bucket missing: {self.describe()} (create it, or allow bucket creation)")

    def _make_bucket(self) -> None:
        try:
            self._client.make_bucket(self.bucket, location=self.region)
        except S3Error as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # created concurrently
            raise self._translate(exc, "create bucket") from exc
        except Exception as exc:
            raise self._translate(exc, "create bucket") from exc

    def _classify(self, exc: BaseException, action: str) -> CollectorError:
        """Map one SDK / transport exception onto the project's error kinds."""
        where = f"S3 {action} ({self.describe()})"
        if isinstance(exc, S3Error):
            status = exc.response.status if exc.response is not None else 0
            detail = f"{where}: {exc.code}: {exc.message}"
            if exc.code in _FATAL_CODES or status in (401, 403):
                return FatalError(detail)
            if exc.code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
                return TransientError(detail)
            return FatalError(detail)  # any other 4xx: retrying the same request will not help
        if isinstance(exc, ServerError | InvalidResponseError):
            status = exc.status_code if isinstance(exc, ServerError) else int(getattr(exc, "_code", 0))
            if status in (401, 403):
                return FatalError(f"{where}: HTTP {status}")
            if status in (408, 429) or status >= 500:
                return TransientError(f"{where}: HTTP {status}")
            # A non-S3 answer (wrong endpoint, HTML from a proxy) will not fix itself.
            return FatalError(f"{where}: unexpected HTTP {status} (is this an S3 endpoint?)")
        if isinstance(exc, urllib3.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return FatalError(f"{where}: TLS certificate rejected: {exc}")
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            return TransientError(f"{where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, CollectorError):
            return exc
        return FatalError(f"{where}: unexpected {type(exc).__name__}: {exc}")


def _code(exc: BaseException | None) -> str | None:
    return exc.code if isinstance(exc, S3Error) else None


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.fromtimestamp(0, tz=UTC)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
