"""Object storage behind one small interface: local folder, S3/MinIO or GCS, chosen once from config.

Backends live in their own modules and are imported only by :func:`open_store`, so importing
this package does not pull in the MinIO or Google SDKs.
"""

from storage.base import InvalidKey, ObjectInfo, ObjectNotFound, ObjectStore
from storage.factory import StorageConfig, open_store
from storage.retry import with_retries

__all__ = [
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StorageConfig",
    "open_store",
    "with_retries",
]
