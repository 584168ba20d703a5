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
    """Tansu on S3 storage in a fresh bucket of ``moto``; optionally with a schema registry bucket."""

    def __init__(self, moto: MotoS3Server, *, schema_bucket: str | None = None, log_dir: str | Path | None = None
                 ) -> None:  # fmt: skip
        super().__init__(log_dir=log_dir)
        self.moto = moto
        self.bucket = f"tansu-{uuid.uuid4().hex[:12]}"
        self.schema_bucket = schema_bucket
        self.client = Minio(moto.endpoint, access_key=moto.access_key, secret_key=moto.secret_key, secure=False)
        self.client.make_bucket(self.bucket)

    def _command(self) -> list[str]:
        command = super()._command()
        command[command.index("--storage-engine") + 1] = f"s3://{self.bucket}/"
        if self.schema_bucket:
            command += ["--schema-registry", f"s3://{self.schema_bucket}/", "--schema-registry-cache-expiry", "1s"]
        return command

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
