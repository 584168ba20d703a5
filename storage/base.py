"""The object-storage interface every backend implements, and the key rules they share.

Keys are "/"-separated paths relative to the bucket, e.g.
``equipment_metrics/minute/20250524_1300_x.parquet``. Backends translate vendor errors at their
edge: unreachable / timeouts / 5xx / throttling -> :class:`~common.errors.TransientError`;
bad credentials, missing permissions or a missing bucket -> :class:`~common.errors.FatalError`.
Retrying is the caller's decision (see :mod:`storage.retry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from common.errors import CollectorError, FatalError

T = TypeVar("T")

# Names the local backend gives its in-flight files; such names are never valid keys.
TEMP_PREFIX = ".tmp-"


class ObjectNotFound(CollectorError):
    """The requested key does not exist (an ordinary outcome, neither transient nor fatal)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class InvalidKey(FatalError):
    """A key or prefix breaks the key rules: a bug in the caller, not a storage condition."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object. ``updated`` is an aware UTC datetime; etag/generation where the backend has them."""

    key: str
    size: int
    updated: datetime
    etag: str | None = None
    generation: str | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket of immutable-until-overwritten objects addressed by relative keys."""

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically: readers see the old object or the whole new one."""
        ...

    def put_new(self, key: str, data: bytes) -> bool:
        """Like :meth:`put`, but only if nothing is stored under ``key`` yet (a conditional create, decided
        by the server in the same request); returns False, writing nothing, when an object already exists."""
        ...

    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise :class:`ObjectNotFound` if there is none."""
        ...

    def put_file(self, key: str, path: str) -> None:
        """Like :meth:`put`, streaming from a local file (large merged files)."""
        ...

    def get_file(self, key: str, path: str) -> None:
        """Like :meth:`get`, streaming into a local file; :class:`ObjectNotFound` if missing."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose key starts with ``prefix`` (recursively), sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """True if an object is stored under ``key``."""
        ...

    def check(self) -> None:
        """Cheap readiness probe: TransientError if unreachable, FatalError on bad credentials/bucket."""
        ...

    def describe(self) -> str:
        """Where the objects go, for logs; never contains secrets."""
        ...


def validate_key(key: str) -> str:
    """Return ``key`` if it is a well-formed relative object key, else raise :class:`InvalidKey`."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise InvalidKey(f"invalid object key {key!r}: must be non-empty, relative, not end in '/'")
    _check_segments(key, key.split("/"))
    if key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
        raise InvalidKey(f"invalid object key {key!r}: names starting with {TEMP_PREFIX!r} are reserved")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can be the start of a valid key ("" lists everything)."""
    if prefix.startswith("/"):
        raise InvalidKey(f"invalid prefix {prefix!r}: must be relative")
    if prefix:
        # The last segment may be partial (``minute/2025``) or empty (``minute/``).
        _check_segments(prefix, prefix.split("/")[:-1])
    return prefix


class VendorEdge:
    """The one place a backend's SDK errors become project errors (S3 and GCS share it).

    Subclasses say how with :meth:`_classify`; :meth:`_call` wraps an SDK call and
    :meth:`_translate` turns a caught exception into a one-line project error.
    """

    def _classify(self, exc: BaseException, action: str) -> CollectorError:
        raise NotImplementedError

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            raise self._translate(exc, action) from exc

    def _translate(self, exc: BaseException, action: str) -> CollectorError:
        """The project error for ``exc``, with a one-line message."""
        error = self._classify(exc, action)
        return error if error is exc else type(error)(one_line(str(error)))


def one_line(text: str) -> str:
    """Collapse whitespace so a vendor message (often multi-line JSON or XML) fits one log line."""
    return " ".join(text.split())


def _check_segments(text: str, segments: list[str]) -> None:
    for segment in segments:
        if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
            raise InvalidKey(f"invalid object key {text!r}: empty, '.', '..' or backslash segment")
