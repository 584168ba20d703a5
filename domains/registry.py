"""Resolving Confluent schema ids to writer schemas.

With ``SCHEMA_REGISTRY_URL`` set, ids are looked up in the registry (``GET /schemas/ids/{id}``)
and cached for the life of the process (ids are immutable in a registry). Without it, the repo's
own schemas answer under the ids the domain modules assign (``Domain.schema_id``).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import fastavro

from common.errors import TransientError
from domains.base import Domain


@dataclass(frozen=True)
class WriterSchema:
    """A writer schema known by id."""

    schema_id: int
    schema: dict[str, Any]
    schema_json: str
    parsed: Any


class SchemaResolver:
    """Maps schema ids to writer schemas, from a registry or from the repo."""

    def __init__(self, domains: list[Domain], registry_url: str | None = None, timeout_s: float = 5.0) -> None:
        self._registry_url = registry_url.rstrip("/") if registry_url else None
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cache: dict[int, WriterSchema | None] = {}
        if not self._registry_url:
            for domain in domains:
                self._cache[domain.schema_id] = _writer(domain.schema_id, domain.schema)

    @property
    def uses_registry(self) -> bool:
        """True when ids are resolved through a Schema Registry."""
        return self._registry_url is not None

    def resolve(self, schema_id: int) -> WriterSchema | None:
        """The writer schema for ``schema_id``; ``None`` when it is unknown.

        Raises :class:`TransientError` when the registry cannot be reached.
        """
        with self._lock:
            if schema_id in self._cache:
                return self._cache[schema_id]
        if not self._registry_url:
            return None
        found = self._fetch(schema_id)
        with self._lock:
            self._cache[schema_id] = found
        return found

    def _fetch(self, schema_id: int) -> WriterSchema | None:
        url = f"{self._registry_url}/schemas/ids/{schema_id}"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout_s) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise TransientError(f"schema registry answered {exc.code} for id {schema_id}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TransientError(f"schema registry unreachable: {exc}") from exc
        if body.get("schemaType", "AVRO") != "AVRO":
            return None
        return _writer(schema_id, json.loads(body["schema"]))


def _writer(schema_id: int, schema: dict[str, Any]) -> WriterSchema:
    return WriterSchema(
        schema_id=schema_id,
        schema=schema,
        schema_json=json.dumps(schema, separators=(",", ":")),
        parsed=fastavro.parse_schema(schema),
    )
