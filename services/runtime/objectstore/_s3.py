"""The S3 backend, :class:`S3ObjectStore` (boto3; see the package docstring).

Private: import from :mod:`services.runtime.objectstore`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError, NoCredentialsError

from .._errors import ConfigError
from ._base import (
    ObjectCorrupt,
    ObjectExists,
    ObjectLocked,
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    RetentionUnsupported,
    StoredObject,
    _check_data,
    _check_limit,
    _check_retention,
    _create_only_broken,
    _sha256,
    _validate_prefix,
    validate_key,
)

#: botocore ``standard`` retry mode: total attempts per request (the first one included).
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_SECONDS = 10
S3_READ_TIMEOUT_SECONDS = 120
_SHA256_METADATA = "sha256"


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
