"""What the merger merges: a domain's fact rows, or its DLQ rows, each under its own storage root.

Both are laid out the same way (``<root>/minute|hour|day|week/``, manifests under
``<root>/_manifests/``) and merged the same way; only the keys differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from domains import DOMAINS
from domains.base import Domain
from domains.dlq import DLQ_DEDUP_KEY, DLQ_SORT_KEY, dlq_root


@dataclass(frozen=True)
class Dataset:
    """A family of files merged together."""

    root: str  # storage prefix: "robot_status" or "robot_status/_dlq"
    domain: str
    entity_key: str  # string column the merge splits its work by
    dedup_key: tuple[str, ...]  # one row per key survives a merge
    sort_key: tuple[str, ...]
    retention_days: int

    @classmethod
    def facts(cls, domain: Domain) -> Dataset:
        """A domain's fact rows (``<domain>/``)."""
        return cls(domain.name, domain.name, domain.entity_key, domain.dedup_key, domain.sort_key,
                   domain.retention_days)  # fmt: skip

    @classmethod
    def dlq(cls, domain: Domain) -> Dataset:
        """A domain's DLQ rows (``<domain>/_dlq/``), identified by Kafka position."""
        return cls(dlq_root(domain.name), domain.name, "reason", DLQ_DEDUP_KEY, DLQ_SORT_KEY, domain.retention_days)


def datasets(domain: str) -> tuple[Dataset, Dataset]:
    """(facts, DLQ) of a domain."""
    return Dataset.facts(DOMAINS[domain]), Dataset.dlq(DOMAINS[domain])
