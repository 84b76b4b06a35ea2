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

from __future__ import annotations

import abc
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError, NoCredentialsError

from ._errors import ConfigError, FieldViolation, HaulmeshError

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

#: S3's limit on a key (UTF-8 bytes), the store's prefix included.
MAX_KEY_BYTES = 1024
#: A file name's limit on common filesystems, per '/'-separated segment.
MAX_SEGMENT_BYTES = 255
#: One object is held in memory and sent in one PUT: keep it well below S3's 5 GB single-PUT limit.
MAX_OBJECT_BYTES = 1 << 30
#: ``list()`` never returns more keys than this, whatever ``limit`` asks.
MAX_LIST_LIMIT = 1_000_000
#: botocore ``standard`` retry mode: total attempts per request (the first one included).
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_SECONDS = 10
S3_READ_TIMEOUT_SECONDS = 120
#: The local store's own files live here, beside the objects; keys may not start a segment with '.'.
LOCAL_INTERNAL_DIR = ".haulmesh-objectstore"
#: A local temp file older than this belongs to a write that crashed; opening the store removes it.
LOCAL_STALE_TEMP_SECONDS = 3600
_SHA256_METADATA = "sha256"
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


# --------------------------------------------------------------------------------------------------------- local


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root`` (see the module docstring). Not WORM: retention is kept by this API only.

    Writers of one store serialise their publish step on an ``flock`` (the data itself is written and synced
    before the lock is taken), so the store is safe for several threads and processes on one host; not on a
    network filesystem whose ``flock`` is not shared.
    """

    worm = False

    def __init__(self, root: Path, *, create: bool = True) -> None:
        root = Path(root).expanduser().absolute()
        if create:
            root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise ConfigError(f"object store directory {root} does not exist (or is not a directory)",
                              field="object store url")
        self.root = root
        self.url = root.as_uri()
        self._internal = root / LOCAL_INTERNAL_DIR
        self._tmp = self._internal / "tmp"
        self._meta = self._internal / "meta"
        try:
            for directory in (self._tmp, self._meta):
                directory.mkdir(parents=True, exist_ok=True)
            self._sweep_temp_files()
        except OSError as error:
            raise ConfigError(f"object store directory {root} is not usable: {error}",
                              field="object store url") from error
        self._lock_path = self._internal / "lock"

    def _sweep_temp_files(self) -> None:
        """Remove temp files of writes that crashed (old enough that no live write can own them)."""
        cutoff = datetime.now(UTC).timestamp() - LOCAL_STALE_TEMP_SECONDS
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)

    @contextlib.contextmanager
    def _os_errors(self, what: str, key: str) -> Iterator[None]:
        """A filesystem failure (disk full, permissions) as an ObjectStoreError naming the store and key."""
        try:
            yield
        except OSError as error:
            raise ObjectStoreError(f"{self.url}: cannot {what} {key!r}: {error}", metadata={"key": key}) from error

    # The paths of a key. Keys are validated first, so they cannot leave root nor reach the internal directory.
    def _path(self, key: str) -> Path:
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self._meta / f"{key}.json"

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        """The store's lock: exclusive to publish or delete, shared to read an object and its sidecar as one."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def put_new(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> StoredObject:
        validate_key(key)
        data, retain_until = _check_data(data), _check_retention(retain_until)
        with self._os_errors("write", key):
            return self._put_new(key, data, retain_until)

    def _put_new(self, key: str, data: bytes, retain_until: datetime | None) -> StoredObject:
        path, sha256 = self._path(key), _sha256(data)
        if os.path.lexists(path):  # cheap early refusal; the decision is the link() below
            raise self._exists(key)
        tmp = self._tmp / f"{secrets.token_hex(16)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
                os.fchmod(fd, 0o444)  # evidence is never edited in place
            finally:
                os.close(fd)
            if _sha256(tmp.read_bytes()) != sha256:  # read-back gate: what is on disk is what we meant
                raise ObjectCorrupt(f"{self.url}: {key!r} read back different bytes from the temp file; not stored",
                                    metadata={"key": key})
            stored = StoredObject(key, len(data), sha256, sha256[:32], retain_until)
            with self._locked():
                if os.path.lexists(path):
                    raise self._exists(key)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError) as error:
                    raise ObjectStoreError(f"{self.url}: {key!r} cannot be stored: a part of its path is an object",
                                           reason="OBJECT_KEY_CONFLICT", metadata={"key": key}) from error
                # The sidecar goes first, so a visible object always has one; a stale sidecar of a crashed
                # write (no object) is simply replaced.
                self._write_meta(key, stored)
                try:
                    os.link(tmp, path)  # create-only: refuses an existing name, never replaces it
                except FileExistsError as error:
                    raise self._exists(key) from error
                _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return stored

    def _exists(self, key: str) -> ObjectExists:
        return ObjectExists(f"{self.url}: {key!r} already exists", metadata={"key": key})

    def _write_meta(self, key: str, stored: StoredObject) -> None:
        meta_path = self._meta_path(key)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"size": stored.size, "sha256": stored.sha256, "version_id": stored.version_id,
                           "retain_until": stored.retain_until.isoformat() if stored.retain_until else None,
                           "created": datetime.now(UTC).isoformat()}).encode()
        tmp = self._tmp / f"{secrets.token_hex(16)}.meta"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, meta_path)
        _fsync_dir(meta_path.parent)

    def _read_meta(self, key: str) -> StoredObject | None:
        """The sidecar of a present object (None if the object is absent); ObjectCorrupt if it has none."""
        if not self._path(key).is_file():
            return None
        try:
            meta = json.loads(self._meta_path(key).read_bytes())
            retain = meta["retain_until"]
            return StoredObject(key, int(meta["size"]), str(meta["sha256"]), str(meta["version_id"]),
                                datetime.fromisoformat(retain) if retain else None)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ObjectCorrupt(f"{self.url}: {key!r} has no valid metadata sidecar (written outside this store?)",
                                metadata={"key": key}) from error

    def get(self, key: str, *, version_id: str = "") -> bytes:
        validate_key(key)
        with self._os_errors("read", key), self._locked(shared=True):
            stored = self._read_meta(key)
            if stored is None or (version_id and version_id != stored.version_id):
                what = f"{key!r} version {version_id!r}" if version_id else repr(key)
                raise ObjectMissing(f"{self.url}: no object {what}", metadata={"key": key, "version_id": version_id})
            data = self._path(key).read_bytes()
        if _sha256(data) != stored.sha256 or len(data) != stored.size:
            raise ObjectCorrupt(f"{self.url}: {key!r} does not match the sha256 recorded when it was written",
                                metadata={"key": key, "sha256": stored.sha256})
        return data

    def head(self, key: str) -> StoredObject | None:
        validate_key(key)
        with self._os_errors("read", key), self._locked(shared=True):
            return self._read_meta(key)

    def list(self, prefix: str, *, limit: int = 10_000) -> list[str]:
        _validate_prefix(prefix)
        _check_limit(limit)
        directory, _, _ = prefix.rpartition("/")
        base = self.root / directory if directory else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):  # an unreadable directory is skipped, as os.walk does
            # Never descend into the store's own files (or anything hidden: no key can be hidden).
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix) and not name.startswith("."):
                    keys.append(key)
        return sorted(keys)[:limit]

    def delete(self, key: str, *, version_id: str = "") -> None:
        validate_key(key)
        with self._os_errors("delete", key), self._locked():
            stored = self._read_meta(key)
            if stored is None or (version_id and version_id != stored.version_id):
                return
            if stored.retain_until is not None and datetime.now(UTC) < stored.retain_until:
                raise ObjectLocked(f"{self.url}: {key!r} is retained until {stored.retain_until.isoformat()}",
                                   metadata={"key": key, "retain_until": stored.retain_until.isoformat()})
            self._path(key).unlink(missing_ok=True)  # the object first: no visible object without a sidecar
            self._meta_path(key).unlink(missing_ok=True)
            _fsync_dir(self._path(key).parent)
            self._prune(self._path(key).parent, self.root)
            self._prune(self._meta_path(key).parent, self._meta)

    @staticmethod
    def _prune(directory: Path, stop: Path) -> None:
        """Remove directories emptied by a delete, up to ``stop`` (S3 has no directories to leave behind)."""
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def self_test(self) -> None:
        probe = f"{LOCAL_INTERNAL_DIR}/self-test/{secrets.token_hex(8)}"
        payload = b"haulmesh object store self-test " + secrets.token_bytes(16)
        try:
            self._put_new(probe, payload, None)
            try:
                self._put_new(probe, payload + b"!", None)
            except ObjectExists:
                pass
            else:
                raise _create_only_broken(self.url)
            if _sha256(self._path(probe).read_bytes()) != _sha256(payload):
                raise _create_only_broken(self.url)
        except OSError as error:
            raise ObjectStoreError(f"{self.url}: self-test failed: {error}", reason="SELF_TEST_FAILED") from error
        finally:
            with self._locked():
                self._path(probe).unlink(missing_ok=True)
                self._meta_path(probe).unlink(missing_ok=True)
                self._prune(self._path(probe).parent, self._internal)
                self._prune(self._meta_path(probe).parent, self._meta)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    """Make a directory entry (a link, a rename, an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------------ S3


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket under a key prefix, through boto3 (see the module docstring)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, create: bool = True) -> None:
        self.bucket, self.prefix = bucket, prefix
        query = "&".join(f"{name}={value}" for name, value in (("endpoint_url", endpoint_url), ("region", region))
                         if value)
        self.url = f"s3://{bucket}/{prefix}" + (f"?{query}" if query else "")
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
                          connect_timeout=S3_CONNECT_TIMEOUT_SECONDS, read_timeout=S3_READ_TIMEOUT_SECONDS))
        self._open_bucket(create)

    def _open_bucket(self, create: bool) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if _status(error) in (401, 403):
                raise ObjectStoreError(f"{self.url}: access to bucket {self.bucket!r} denied ({_status(error)}): "
                                       "check the AWS credentials in the environment and the bucket's policy",
                                       reason="OBJECT_STORE_ACCESS_DENIED") from error
            if _status(error) != 404:
                raise self._error("cannot open the bucket", error) from error
            if not create:
                raise ConfigError(f"{self.url}: bucket {self.bucket!r} does not exist",
                                  field="object store url") from error
            self._create_bucket()
        except NoCredentialsError as error:
            raise ConfigError(f"{self.url}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role); an object store "
                              "url never carries them", field="AWS_ACCESS_KEY_ID") from error
        except BotoCoreError as error:  # no connection, a bad endpoint: after the retries
            raise self._error("cannot reach the store", error) from error
        try:
            config = self._client.get_object_lock_configuration(Bucket=self.bucket)
            self.worm = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as error:
            if _code(error) != "ObjectLockConfigurationNotFoundError":
                raise self._error("cannot read the bucket's Object Lock configuration", error) from error
            self.worm = False
        except BotoCoreError as error:
            raise self._error("cannot reach the store", error) from error

    def _create_bucket(self) -> None:
        """Create the bucket with Object Lock: it can only be turned on at creation, and turns versioning on."""
        try:
            self._client.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True)
        except ClientError as error:
            if _code(error) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error("cannot create the bucket", error) from error
        except BotoCoreError as error:
            raise self._error("cannot reach the store", error) from error

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, what: str, error: Exception, key: str = "") -> ObjectStoreError:
        detail = f"{_code(error)}: {error}" if isinstance(error, ClientError) else f"{type(error).__name__}: {error}"
        return ObjectStoreError(f"{self.url}: {what}" + (f" ({key!r})" if key else "") + f": {detail}",
                                metadata={"key": key} if key else None)

    def put_new(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> StoredObject:
        validate_key(key)
        data, retain_until = _check_data(data), _check_retention(retain_until)
        if retain_until is not None and not self.worm:
            raise RetentionUnsupported(f"{self.url}: retention asked for {key!r} but bucket {self.bucket!r} has no "
                                       "Object Lock (it can only be enabled when the bucket is created)",
                                       metadata={"bucket": self.bucket})
        return self._put_new(self._key(key), key, data, retain_until)

    def _put_new(self, full_key: str, key: str, data: bytes, retain_until: datetime | None) -> StoredObject:
        digest = hashlib.sha256(data)
        params: dict[str, Any] = {
            "Bucket": self.bucket, "Key": full_key, "Body": data, "IfNoneMatch": "*",
            "ChecksumSHA256": base64.b64encode(digest.digest()).decode(),
            "ContentMD5": base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
            "ContentType": "application/octet-stream", "Metadata": {_SHA256_METADATA: digest.hexdigest()}}
        if retain_until is not None:
            params |= {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": retain_until}
        for attempt in range(3):
            try:
                response = self._client.put_object(**params)
                break
            except (ClientError, BotoCoreError) as error:
                code = _code(error)
                if code == "PreconditionFailed" or _status(error) == 412:
                    raise ObjectExists(f"{self.url}: {key!r} already exists", metadata={"key": key}) from error
                if code == "ConditionalRequestConflict" and attempt < 2:
                    continue  # AWS: a concurrent conditional write of the key was in flight; ask again
                if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
                    raise ObjectCorrupt(f"{self.url}: the store received bytes other than those sent for {key!r}; "
                                        "not stored", metadata={"key": key}) from error
                raise self._error("cannot write", error, key) from error
        version_id = _version(response.get("VersionId"))
        try:  # read-back gate: what the store holds under this version is what we sent
            stored = self._fetch(full_key, key, version_id)
        except ObjectCorrupt as error:
            raise ObjectCorrupt(f"{error.message}, right after writing it (version {version_id!r})",
                                metadata={"key": key, "version_id": version_id}) from error
        return stored[1]

    def _fetch(self, full_key: str, key: str, version_id: str) -> tuple[bytes, StoredObject]:
        params = {"Bucket": self.bucket, "Key": full_key, "ChecksumMode": "ENABLED"}
        if version_id:
            params["VersionId"] = version_id
        try:
            response = self._client.get_object(**params)
            data = response["Body"].read()
        except (ClientError, BotoCoreError) as error:
            if _missing(error):
                what = f"{key!r} version {version_id!r}" if version_id else repr(key)
                raise ObjectMissing(f"{self.url}: no object {what}",
                                    metadata={"key": key, "version_id": version_id}) from error
            if isinstance(error, FlexibleChecksumError):  # botocore checked the store's own checksum
                raise ObjectCorrupt(f"{self.url}: {key!r} failed the store's checksum: {error}",
                                    metadata={"key": key}) from error
            raise self._error("cannot read", error, key) from error
        recorded = response.get("Metadata", {}).get(_SHA256_METADATA, "")
        if not recorded:
            raise ObjectCorrupt(f"{self.url}: {key!r} carries no recorded sha256 (written outside this store?)",
                                metadata={"key": key})
        if _sha256(data) != recorded:
            raise ObjectCorrupt(f"{self.url}: {key!r} does not match the sha256 recorded when it was written",
                                metadata={"key": key, "sha256": recorded})
        return data, self._stored(key, response, recorded)

    @staticmethod
    def _stored(key: str, response: dict[str, Any], sha256: str) -> StoredObject:
        retain = response.get("ObjectLockRetainUntilDate")
        return StoredObject(key, int(response.get("ContentLength", 0)), sha256, _version(response.get("VersionId")),
                            retain.astimezone(UTC) if retain else None)

    def get(self, key: str, *, version_id: str = "") -> bytes:
        validate_key(key)
        return self._fetch(self._key(key), key, version_id)[0]

    def head(self, key: str) -> StoredObject | None:
        validate_key(key)
        return self._head(key)

    def _head(self, key: str, version_id: str = "") -> StoredObject | None:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if version_id:
            params["VersionId"] = version_id
        try:
            response = self._client.head_object(**params)
        except (ClientError, BotoCoreError) as error:
            if _missing(error):
                return None
            raise self._error("cannot read", error, key) from error
        return self._stored(key, response, response.get("Metadata", {}).get(_SHA256_METADATA, ""))

    def list(self, prefix: str, *, limit: int = 10_000) -> list[str]:
        _validate_prefix(prefix)
        _check_limit(limit)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else ""),
                PaginationConfig={"PageSize": min(limit, 1000)})
            for page in pages:
                keys += [item["Key"][strip:] for item in page.get("Contents", [])]
                if len(keys) >= limit:
                    break
        except (ClientError, BotoCoreError) as error:
            raise self._error("cannot list", error, prefix) from error
        return sorted(keys)[:limit]

    def delete(self, key: str, *, version_id: str = "") -> None:
        validate_key(key)
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if version_id:
            params["VersionId"] = version_id
        else:
            # S3 accepts a version-less delete of a retained object as a delete marker, which hides the evidence
            # from get() and list() while its bytes stay; this API refuses that as the local store does.
            current = self._head(key)
            if current is not None and current.retain_until and current.retain_until > datetime.now(UTC):
                raise self._locked(key, current)
        try:
            self._client.delete_object(**params)
        except (ClientError, BotoCoreError) as error:
            if _missing(error):
                return
            if _status(error) == 403 or _code(error) == "AccessDenied":
                # S3 answers a retained version's delete with a bare AccessDenied: tell it from a missing
                # permission by looking at the version's retention.
                stored = self._head(key, version_id)
                if stored is not None and stored.retain_until and stored.retain_until > datetime.now(UTC):
                    raise self._locked(key, stored) from error
            raise self._error("cannot delete", error, key) from error

    def _locked(self, key: str, stored: StoredObject) -> ObjectLocked:
        until = stored.retain_until.isoformat() if stored.retain_until else ""
        return ObjectLocked(f"{self.url}: {key!r} version {stored.version_id!r} is retained until {until}",
                            metadata={"key": key, "version_id": stored.version_id, "retain_until": until})

    def self_test(self) -> None:
        probe = self._key(f"_haulmesh/self-test/{secrets.token_hex(8)}")
        payload = b"haulmesh object store self-test " + secrets.token_bytes(16)
        try:
            self._put_new(probe, probe, payload, None)
            try:
                self._put_new(probe, probe, payload + b"!", None)
            except ObjectExists:
                pass
            else:
                raise _create_only_broken(self.url)
        finally:
            self._remove_every_version(probe)

    def _remove_every_version(self, full_key: str) -> None:
        """Remove a probe for good: each of its versions and delete markers (the probe is never retained)."""
        try:
            listing = self._client.list_object_versions(Bucket=self.bucket, Prefix=full_key)
            for item in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
                if item["Key"] == full_key:
                    self._client.delete_object(Bucket=self.bucket, Key=full_key, VersionId=item["VersionId"])
        except (ClientError, BotoCoreError):
            pass  # the probe is small: leaving it behind is better than hiding the self-test's own outcome


def _code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _status(error: Exception) -> int:
    return int(getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _missing(error: Exception) -> bool:
    """A 404 (no key, no version, no bucket), or AWS's 405 for a delete marker's version id."""
    return _code(error) in ("NoSuchKey", "NoSuchVersion", "404", "NotFound", "MethodNotAllowed") \
        or _status(error) in (404, 405)


def _version(version_id: str | None) -> str:
    """S3's version id; "" for an unversioned bucket (S3 says "null")."""
    return "" if not version_id or version_id == "null" else version_id


# ------------------------------------------------------------------------------------------------------ opening


def open_object_store(url: str, *, create: bool = True) -> ObjectStore:
    """The store at ``url``: ``file:///abs/dir`` or a plain path (a local directory, created if ``create``), or
    ``s3://bucket/prefix?endpoint_url=http://host:port&region=us-east-1`` (the bucket created with Object Lock if
    missing and ``create``; credentials from the standard AWS environment variables / config chain, never from
    the URL). A malformed URL is a :class:`ConfigError` naming what is wrong.
    """
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
