"""The object store's interface and what both backends share: the errors, :class:`StoredObject`, the
:class:`ObjectStore` ABC, key and argument checks, and :func:`open_object_store` (URL parsing).

Private: import from :mod:`services.runtime.objectstore`.
"""

from __future__ import annotations

import abc
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from .._errors import ConfigError, FieldViolation, HaulmeshError

if TYPE_CHECKING:  # the backends import this module, so it imports them only where it opens one
    from ._s3 import S3ObjectStore

#: S3's limit on a key (UTF-8 bytes), the store's prefix included.
MAX_KEY_BYTES = 1024
#: A file name's limit on common filesystems, per '/'-separated segment.
MAX_SEGMENT_BYTES = 255
#: One object is held in memory and sent in one PUT: keep it well below S3's 5 GB single-PUT limit.
MAX_OBJECT_BYTES = 1 << 30
#: ``list()`` never returns more keys than this, whatever ``limit`` asks.
MAX_LIST_LIMIT = 1_000_000
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_QUERY_PARAMETERS = ("endpoint_url", "region")


class ObjectStoreError(HaulmeshError):
    """The object store failed or refused; the message names the store (its safe ``url``) and why."""

    code_name = "UNAVAILABLE"
    default_reason = "OBJECT_STORE_ERROR"


class ObjectExists(ObjectStoreError):
    """A create-only write found the key taken (HTTP 412 on S3, EEXIST locally).

    A caller retrying its own write (a transport retry of a PUT that did succeed also lands here) should
    ``head()`` the key and compare ``sha256`` with what it wrote.
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
    """The bytes stored or read back do not hash to the sha256 recorded for them (or none was recorded)."""

    code_name = "DATA_LOSS"
    default_reason = "OBJECT_CORRUPT"


class RetentionUnsupported(ObjectStoreError):
    """Retention was asked of an S3 bucket created without Object Lock."""

    code_name = "FAILED_PRECONDITION"
    default_reason = "RETENTION_UNSUPPORTED"


class InvalidObjectRequest(ObjectStoreError):
    """An argument the caller got wrong (retention date, limit, data type or size); names the field."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_OBJECT_REQUEST"

    def __init__(self, field: str, why: str, *, reason: str | None = None) -> None:
        super().__init__(f"invalid {field}: {why}", reason=reason, violations=[FieldViolation(field, why)])
        self.field = field


class InvalidObjectKey(InvalidObjectRequest):
    """A key is not a clean '/'-separated relative path (empty, absolute, '.', '..', hidden, too long)."""

    default_reason = "INVALID_OBJECT_KEY"

    def __init__(self, key: str, why: str, *, field: str = "key") -> None:
        super().__init__(field, f"{key[:200]!r}: {why}")
        self.metadata["key"] = key[:200]


@dataclass(frozen=True)
class StoredObject:
    """What the store holds under a key: size in bytes, sha256 (hex) of the bytes, the version id (S3's
    VersionId, "" on an unversioned bucket; locally content-derived) and the retention end (UTC; None when not
    retained)."""

    key: str
    size: int
    sha256: str
    version_id: str
    retain_until: datetime | None


def validate_key(key: str, *, field: str = "key") -> str:
    """``key`` if it is a clean relative '/'-separated path, else :class:`InvalidObjectKey` saying why.

    Refused: empty keys, a leading '/', empty segments ('a//b', a trailing '/'), '.' and '..' segments, segments
    starting with '.' (reserved: the local store keeps its own files under a hidden name), backslashes and
    control characters, segments over 255 bytes and keys over 1024 bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidObjectKey(str(key), "must be a non-empty string", field=field)
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidObjectKey(key, f"longer than {MAX_KEY_BYTES} bytes", field=field)
    if key.startswith("/"):
        raise InvalidObjectKey(key, "must be relative (no leading '/')", field=field)
    if "\\" in key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidObjectKey(key, "must not contain backslashes or control characters", field=field)
    for segment in key.split("/"):
        if not segment:
            raise InvalidObjectKey(key, "has an empty segment ('//' or a trailing '/')", field=field)
        if segment in (".", ".."):
            raise InvalidObjectKey(key, f"has a {segment!r} segment", field=field)
        if segment.startswith("."):
            raise InvalidObjectKey(key, f"segment {segment!r} starts with '.' (reserved)", field=field)
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise InvalidObjectKey(key, f"has a segment longer than {MAX_SEGMENT_BYTES} bytes", field=field)
    return key


def _validate_prefix(prefix: str) -> str:
    """A list prefix: "" or a key, or a key's start ending in '/' (a partial last segment is fine)."""
    if not isinstance(prefix, str):
        raise InvalidObjectKey(str(prefix), "must be a string", field="prefix")
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix, field="prefix")
    return prefix


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidObjectRequest("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
    return limit


def _check_data(data: bytes) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidObjectRequest("data", f"must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_OBJECT_BYTES:
        raise InvalidObjectRequest("data", f"{len(data)} bytes is over the {MAX_OBJECT_BYTES}-byte limit of one "
                                           "object: split it")
    return data


def _check_retention(retain_until: datetime | None) -> datetime | None:
    """``retain_until`` in UTC, rounded up to a whole second; it must be timezone-aware and in the future (a past
    date protects nothing and S3 refuses it)."""
    if retain_until is None:
        return None
    if not isinstance(retain_until, datetime) or retain_until.utcoffset() is None:
        raise InvalidObjectRequest("retain_until", "must be a timezone-aware datetime",
                                   reason="INVALID_RETENTION")
    retain_until = retain_until.astimezone(UTC)
    if retain_until.microsecond:  # S3 keeps whole seconds: round up, so retention is never shorter than asked
        retain_until = retain_until.replace(microsecond=0) + timedelta(seconds=1)
    if retain_until <= datetime.now(UTC):
        raise InvalidObjectRequest("retain_until", f"{retain_until.isoformat()} is not in the future",
                                   reason="INVALID_RETENTION")
    return retain_until


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(abc.ABC):
    """A create-only, checksummed object store. Keys are '/'-separated relative paths (:func:`validate_key`)."""

    #: Where the store is, with no secret in it (safe to log).
    url: str
    #: True iff the backend itself enforces retention (S3 Object Lock); a local directory cannot.
    worm: bool

    @abc.abstractmethod
    def put_new(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> StoredObject:
        """Create ``key`` with ``data`` only if it does not exist (else :class:`ObjectExists`), read it back and
        check its sha256 before returning (else :class:`ObjectCorrupt`); ``retain_until`` (timezone-aware, in the
        future) retains it: COMPLIANCE retention on S3 (:class:`RetentionUnsupported` without Object Lock),
        a refusal of ``delete()`` locally."""

    @abc.abstractmethod
    def get(self, key: str, *, version_id: str = "") -> bytes:
        """The object's bytes (the current version, or ``version_id``), checked against the sha256 recorded at
        write time (:class:`ObjectCorrupt`); :class:`ObjectMissing` if absent."""

    @abc.abstractmethod
    def head(self, key: str) -> StoredObject | None:
        """What is stored under ``key`` (its current version), or None."""

    @abc.abstractmethod
    def list(self, prefix: str, *, limit: int = 10_000) -> list[str]:
        """The keys starting with ``prefix`` (a plain string prefix, as S3 has it), sorted, at most ``limit``."""

    @abc.abstractmethod
    def delete(self, key: str, *, version_id: str = "") -> None:
        """Delete ``key`` (or one version of it); :class:`ObjectLocked` while retention forbids it. Deleting what
        is not there is not an error (as on S3).

        On a versioned S3 bucket a delete without ``version_id`` only adds a delete marker: the key reads as
        missing, its versions stay readable by id. S3 accepts that even for a retained object; this API refuses
        it (ObjectLocked) as the local store does, so a retained object never vanishes from ``get``/``list``
        through this API. A retained version's delete is refused by the server itself."""

    @abc.abstractmethod
    def self_test(self) -> None:
        """Start-up check: write a probe, check a second create-only write of it is refused, read it back, remove
        it. A store that ignores create-only (e.g. an S3 clone ignoring ``If-None-Match``) fails closed with
        :class:`ObjectStoreError` reason ``CREATE_ONLY_NOT_ENFORCED``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _create_only_broken(url: str) -> ObjectStoreError:
    return ObjectStoreError(f"object store {url} accepted a second create-only write of one key: it does not "
                            "enforce create-only writes, so archived evidence could be overwritten; refusing to use it",
                            reason="CREATE_ONLY_NOT_ENFORCED", metadata={"url": url})


# ------------------------------------------------------------------------------------------------------ opening


def open_object_store(url: str, *, create: bool = True) -> ObjectStore:
    """The store at ``url``: ``file:///abs/dir`` or a plain path (a local directory, created if ``create``), or
    ``s3://bucket/prefix?endpoint_url=http://host:port&region=us-east-1`` (the bucket created with Object Lock if
    missing and ``create``; credentials from the standard AWS environment variables / config chain, never from
    the URL). A malformed URL is a :class:`ConfigError` naming what is wrong.
    """
    from ._local import LocalObjectStore  # here, not at the top: it subclasses ObjectStore from this module

    if not isinstance(url, str) or not url.strip():
        raise ConfigError("object store url is empty: give file:///abs/dir, a path, or s3://bucket/prefix",
                          field="object store url")
    url = url.strip()
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "":
        return LocalObjectStore(Path(url), create=create)
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigError(f"object store url {url!r}: a file URL is file:///absolute/dir (no host, no query)",
                              field="object store url")
        return LocalObjectStore(Path(unquote(parts.path)), create=create)
    if scheme == "s3":
        return _open_s3(url, create=create)
    raise ConfigError(f"object store url {url!r}: unsupported scheme {scheme!r} (file:// or s3://)",
                      field="object store url")


def _open_s3(url: str, *, create: bool) -> S3ObjectStore:
    from ._s3 import S3ObjectStore  # here, not at the top: it subclasses ObjectStore from this module

    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError("an s3:// object store url must not carry credentials: use the standard AWS "
                          "environment variables or config files", field="object store url")
    bucket = parts.netloc
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigError(f"object store url {_safe(url)}: {bucket!r} is not a valid bucket name (3-63 lowercase "
                          "letters, digits, '.' and '-')", field="object store url")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        try:
            validate_key(prefix, field="prefix")
        except InvalidObjectKey as error:
            raise ConfigError(f"object store url {_safe(url)}: bad key prefix: {error.message}",
                              field="object store url") from error
    if parts.fragment:
        raise ConfigError(f"object store url {_safe(url)}: no '#fragment' allowed", field="object store url")
    query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    unknown = sorted(set(query) - set(_S3_QUERY_PARAMETERS))
    if unknown:
        raise ConfigError(f"object store url {_safe(url)}: unknown parameter(s) {', '.join(unknown)} "
                          f"(known: {', '.join(_S3_QUERY_PARAMETERS)}; credentials never go in the url)",
                          field="object store url")
    endpoint = query.get("endpoint_url") or None
    if endpoint is not None:
        endpoint_parts = urlsplit(endpoint)
        if endpoint_parts.scheme not in ("http", "https") or not endpoint_parts.hostname \
                or "@" in endpoint_parts.netloc:
            raise ConfigError(f"object store url {_safe(url)}: endpoint_url must be http(s)://host[:port] without "
                              "credentials", field="object store url")
    return S3ObjectStore(bucket, prefix, endpoint_url=endpoint, region=query.get("region") or None, create=create)


def _safe(url: str) -> str:
    """A URL for an error message, without its query (which a careless user may have put a secret in)."""
    return url.split("?", 1)[0]
