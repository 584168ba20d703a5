"""A Tansu broker that keeps its data across restarts: its ``s3://`` storage engine on the moto server.

The in-memory engine (``embedded.servers.TansuBroker``) loses topics, records and committed offsets
on a restart; with ``--storage-engine s3://<bucket>/`` Tansu keeps everything in objects
(``clusters/<cluster>/meta.json`` for topics and producers, one object per record batch, watermarks
per partition), so ``stop()`` + ``start()`` is a real broker restart.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

from minio import Minio

from embedded.servers import MotoS3Server, TansuBroker

CLUSTER = "tansu_cluster"


class PersistentTansu(TansuBroker):
    """Tansu on S3 storage in a fresh bucket of ``moto`` (``persistent=False``: in memory); optionally
    with a schema registry in another bucket (Tansu validates produced records of a topic against
    ``<topic>.json`` there and refuses the others with INVALID_RECORD)."""

    def __init__(self, moto: MotoS3Server, *, persistent: bool = True, schema_registry: bool = False,
                 log_dir: str | Path | None = None) -> None:  # fmt: skip
        super().__init__(log_dir=log_dir)
        self.moto = moto
        self.client = Minio(moto.endpoint, access_key=moto.access_key, secret_key=moto.secret_key, secure=False)
        self.bucket = f"tansu-{uuid.uuid4().hex[:12]}" if persistent else None
        self.schema_bucket = f"schemas-{uuid.uuid4().hex[:12]}" if schema_registry else None
        for bucket in (self.bucket, self.schema_bucket):
            if bucket:
                self.client.make_bucket(bucket)

    def _command(self) -> list[str]:
        command = super()._command()
        if self.bucket:
            command[command.index("--storage-engine") + 1] = f"s3://{self.bucket}/"
        if self.schema_bucket:
            command += ["--schema-registry", f"s3://{self.schema_bucket}/", "--schema-registry-cache-expiry", "1s"]
        return command

    def refuse_records(self, topic: str) -> None:
        """From now on (after the 1 s schema cache), every record produced to ``topic`` is refused."""
        assert self.schema_bucket, "started without a schema registry"
        body = json.dumps({"type": "object", "properties": {
            "value": {"type": "object", "required": ["__never_present__"]}}}).encode()  # fmt: skip
        self.client.put_object(self.schema_bucket, f"{topic}.json", io.BytesIO(body), len(body))

    def accept_records(self, topic: str) -> None:
        """Stop refusing records of ``topic``."""
        assert self.schema_bucket
        self.client.remove_object(self.schema_bucket, f"{topic}.json")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ, "AWS_ENDPOINT": self.moto.url, "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": self.moto.access_key, "AWS_SECRET_ACCESS_KEY": self.moto.secret_key,
            "AWS_DEFAULT_REGION": self.moto.region,
        }  # fmt: skip

    def set_partitions(self, topic: str, partitions: int) -> None:
        """Raise a topic's partition count in the broker's own metadata.

        Tansu 0.6 answers CreatePartitions with UNSUPPORTED_FEATURE; what that request would do on
        this engine is exactly this change of ``num_partitions`` in ``meta.json``. Clients see the new
        partitions in their next metadata response, as with a real CreatePartitions.
        """
        assert self.bucket, "partitions can only be added on the S3 engine"
        key = f"clusters/{CLUSTER}/meta.json"
        response = self.client.get_object(self.bucket, key)
        try:
            meta = json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
        current = meta["topics"][topic]["topic"]["num_partitions"]
        if partitions <= current:
            raise ValueError(f"{topic} has {current} partitions already")
        meta["topics"][topic]["topic"]["num_partitions"] = partitions
        body = json.dumps(meta).encode()
        self.client.put_object(self.bucket, key, io.BytesIO(body), len(body), content_type="application/json")
