"""One exception root, three kinds (see STYLE.md §8).

- :class:`BadRecord`  -- one message cannot be used; it goes to the DLQ, processing continues.
- :class:`TransientError` -- the outside world is briefly unavailable; retry with backoff.
- :class:`FatalError` -- configuration or an invariant is wrong; stop with one clear line.

Vendor exceptions (confluent-kafka, minio, google-cloud-storage) are translated into these once,
at the edge that calls the vendor, with ``raise ... from exc``.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Root of every error this project raises on purpose."""


class BadRecord(CollectorError):
    """A single record is unusable; carries the DLQ reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransientError(CollectorError):
    """A dependency (broker, storage) failed in a way that may succeed when retried."""


class FatalError(CollectorError):
    """Continuing would be wrong: bad configuration, missing permissions, broken invariant."""


class ConfigError(FatalError):
    """A setting is missing or invalid; the message names the variable and what is expected."""
