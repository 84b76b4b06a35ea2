"""Object storage for archived evidence: a local directory (the default, nothing to install) or any S3-compatible
store, with S3 Object Lock (COMPLIANCE retention) for the cold tier.

Synchronous on purpose (boto3 is): async callers wrap calls in ``asyncio.to_thread``.

SKELETON: the interface is final (A2 codes against it); the bodies are being filled in.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime

from ._errors import FieldViolation, HaulmeshError

__all__ = [
    "InvalidObjectKey",
    "ObjectCorrupt",
    "ObjectExists",
    "ObjectLocked",
    "ObjectMissing",
    "ObjectStore",
    "ObjectStoreError",
    "StoredObject",
    "open_object_store",
]


class ObjectStoreError(HaulmeshError):
    """The object store failed or refused; the message says which store (its safe ``url``) and why."""

    code_name = "UNAVAILABLE"
    default_reason = "OBJECT_STORE_ERROR"


class ObjectExists(ObjectStoreError):
    """A create-only write found the key taken (HTTP 412 on S3, EEXIST locally).

    A caller retrying its own write should ``head()`` the key and compare ``sha256`` with what it wrote.
    """

    code_name = "ALREADY_EXISTS"
    default_reason = "OBJECT_EXISTS"


class ObjectLocked(ObjectStoreError):
    """A delete or overwrite was refused because the object's retention has not ended."""

    code_name = "FAILED_PRECONDITION"
    default_reason = "OBJECT_LOCKED"


class ObjectMissing(ObjectStoreError):
    """No such key (or no such version of it)."""

    code_name = "NOT_FOUND"
    default_reason = "OBJECT_MISSING"


class ObjectCorrupt(ObjectStoreError):
    """The bytes read back do not hash to the sha256 recorded when the object was written."""

    code_name = "DATA_LOSS"
    default_reason = "OBJECT_CORRUPT"


class InvalidObjectKey(ObjectStoreError):
    """A key is not a clean '/'-separated relative path (empty segment, '.', '..', absolute, hidden, too long)."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_OBJECT_KEY"

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"invalid object key {key!r}: {why}", metadata={"key": key[:200]},
                         violations=[FieldViolation("key", why)])


@dataclass(frozen=True)
class StoredObject:
    """What the store holds under a key: size in bytes, sha256 (hex) of the bytes, the version id (S3's
    VersionId; locally a content-derived id) and the retention end (None when not retained)."""

    key: str
    size: int
    sha256: str
    version_id: str
    retain_until: datetime | None


class ObjectStore(abc.ABC):
    """A create-only, checksummed object store. Keys are '/'-separated relative paths."""

    #: Where the store is, with no secret in it (safe to log).
    url: str
    #: True iff the backend itself enforces retention (S3 Object Lock); a local directory cannot.
    worm: bool

    @abc.abstractmethod
    def put_new(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> StoredObject:
        """Create ``key`` with ``data`` only if it does not exist (else :class:`ObjectExists`), read it back and
        check its sha256 before returning; ``retain_until`` (timezone-aware, in the future) retains it."""

    @abc.abstractmethod
    def get(self, key: str, *, version_id: str = "") -> bytes:
        """The object's bytes, checked against its recorded sha256; :class:`ObjectMissing` if absent."""

    @abc.abstractmethod
    def head(self, key: str) -> StoredObject | None:
        """What is stored under ``key``, or None."""

    @abc.abstractmethod
    def list(self, prefix: str, *, limit: int = 10_000) -> list[str]:
        """The keys starting with ``prefix``, sorted, at most ``limit``."""

    @abc.abstractmethod
    def delete(self, key: str, *, version_id: str = "") -> None:
        """Delete ``key`` (or one version of it); :class:`ObjectLocked` while retention forbids it."""

    @abc.abstractmethod
    def self_test(self) -> None:
        """Start-up check that create-only really refuses a second create; fails closed with ObjectStoreError."""


def open_object_store(url: str, *, create: bool = True) -> ObjectStore:
    """The store at ``url``: ``file:///abs/dir`` or a plain path (a local directory), or
    ``s3://bucket/prefix?endpoint_url=http://host:port&region=us-east-1`` (credentials from the standard AWS
    environment variables / config chain, never from the URL)."""
    raise NotImplementedError("objectstore skeleton: open_object_store is being implemented")
