"""The local-directory backend, :class:`LocalObjectStore` (see the package docstring).

Private: import from :mod:`services.runtime.objectstore`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from .._errors import ConfigError
from ._base import (
    ObjectCorrupt,
    ObjectExists,
    ObjectLocked,
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    StoredObject,
    _check_data,
    _check_limit,
    _check_retention,
    _create_only_broken,
    _sha256,
    _validate_prefix,
    validate_key,
)

#: The local store's own files live here, beside the objects; keys may not start a segment with '.'.
LOCAL_INTERNAL_DIR = ".haulmesh-objectstore"
#: A local temp file older than this belongs to a write that crashed; opening the store removes it.
LOCAL_STALE_TEMP_SECONDS = 3600


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
