"""Object storage for archived evidence: a local directory (the default, nothing to install) or any S3-compatible
store, with S3 Object Lock (COMPLIANCE retention) for the cold tier.

Synchronous on purpose (boto3 is): async callers wrap each call in ``asyncio.to_thread``. Open one with
:func:`open_object_store`; every write is create-only, checksummed on the way in and read back before it counts:

- ``file:///abs/dir`` or a plain path: :class:`LocalObjectStore`. Objects are plain files at ``<dir>/<key>``
  (so Parquet readers can read the tree); create-only is ``O_EXCL`` on a temp file + ``fsync`` + ``link()``
  (which refuses an existing name) under a per-store ``flock``. A directory is **not WORM** (``worm = False``):
  anyone with shell access can delete a file. The store records each object's sha256, size and retain-until in a
  sidecar (``<dir>/.haulmesh-objectstore/meta/<key>.json``, written before the object is linked, so a visible
  object always has one), makes the file read-only and refuses :meth:`~ObjectStore.delete` before retain-until -
  in this API only. Version ids are content-derived (one version per key: keys are create-only).
- ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333&region=us-east-1``: :class:`S3ObjectStore` (boto3).
  Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
  instance roles...), never from the URL. Create-only is ``If-None-Match: *``; every PUT carries
  ``x-amz-checksum-sha256`` and ``Content-MD5`` (Object Lock PUTs must carry a checksum) and the hex sha256 as
  ``x-amz-meta-sha256``; ``retain_until`` becomes COMPLIANCE retention (``ObjectLockMode``/``RetainUntilDate``),
  which needs a bucket created with Object Lock (``worm`` is True iff the bucket has it). Transient errors
  (connection errors, 5xx, throttling) are retried by botocore's ``standard`` retry mode: exponential backoff with
  jitter, at most :data:`S3_MAX_ATTEMPTS` attempts, never forever.

On a versioned bucket (Object Lock forces versioning) a delete without ``version_id`` only adds a delete marker,
which retention allows: the key reads as missing but every version stays readable by its version id. Deleting a
retained *version* is refused by the server and raised as :class:`ObjectLocked`.

SeaweedFS 4.48 (the test server, tests/objectstore.py), checked by experiment: ``CreateBucket`` with
``ObjectLockEnabledForBucket=True`` enables Object Lock and versioning; ``If-None-Match: *`` is honoured (412,
also on a bucket without Object Lock, and race-safe: of 8 concurrent creates exactly one wins, the losers
answered in steps of about a second, as if polling a lock); a wrong
``x-amz-checksum-sha256`` is refused (400 ``BadDigest``, whose message wrongly says Content-MD5); deleting a
COMPLIANCE-retained version, shortening its retention, or bypassing it as GOVERNANCE are refused (403
``AccessDenied``, as on AWS); a version-less delete adds a delete marker. Differences from AWS: reading a delete
marker's version id answers 404 ``NoSuchKey`` (AWS: 405), and a retention PUT to a bucket without Object Lock or
with a past date answers a bare 400 ``InvalidRequest`` - which is why this module checks both before sending.
Each bucket is a SeaweedFS collection with volumes of its own (see tests/objectstore.py for the light flags).
"""

from ._base import (
    MAX_KEY_BYTES,
    MAX_LIST_LIMIT,
    MAX_OBJECT_BYTES,
    InvalidObjectKey,
    InvalidObjectRequest,
    ObjectCorrupt,
    ObjectExists,
    ObjectLocked,
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    RetentionUnsupported,
    StoredObject,
    open_object_store,
    validate_key,
)
from ._base import MAX_SEGMENT_BYTES as MAX_SEGMENT_BYTES
from ._local import LOCAL_INTERNAL_DIR as LOCAL_INTERNAL_DIR
from ._local import LOCAL_STALE_TEMP_SECONDS as LOCAL_STALE_TEMP_SECONDS
from ._local import LocalObjectStore
from ._s3 import S3_CONNECT_TIMEOUT_SECONDS as S3_CONNECT_TIMEOUT_SECONDS
from ._s3 import S3_MAX_ATTEMPTS, S3ObjectStore
from ._s3 import S3_READ_TIMEOUT_SECONDS as S3_READ_TIMEOUT_SECONDS

# The ``X as X`` imports above are importable names of the module before it became a package, never in
# ``__all__``: re-exported explicitly so that no import of them breaks.
__all__ = [
    "MAX_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "MAX_OBJECT_BYTES",
    "S3_MAX_ATTEMPTS",
    "InvalidObjectKey",
    "InvalidObjectRequest",
    "LocalObjectStore",
    "ObjectCorrupt",
    "ObjectExists",
    "ObjectLocked",
    "ObjectMissing",
    "ObjectStore",
    "ObjectStoreError",
    "RetentionUnsupported",
    "S3ObjectStore",
    "StoredObject",
    "open_object_store",
    "validate_key",
]
