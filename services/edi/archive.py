"""The raw archive: every interchange in or out, as its exact bytes, before anything else is done with it.

An object store (services/runtime/objectstore: a local folder by default, any S3-compatible store by URL, create-only
and checksummed). Keys are ``<direction>/<partner>/<YYYY-MM-DD>/<sha256>.x12``: the same bytes archived twice (a
file re-read after a crash) land on the same key, which create-only keeps as it was. Nothing received is lost, a
malformed file included: the archive takes bytes, it reads nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from services.runtime.objectstore import ObjectExists, ObjectStore, open_object_store

__all__ = ["RawArchive"]


class RawArchive:
    """Archives interchanges raw; opened lazily (a store that is down at start is retried on first use)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._store: ObjectStore | None = None

    def _opened(self) -> ObjectStore:
        if self._store is None:
            self._store = open_object_store(self._url)
        return self._store

    async def put(self, direction: str, partner: str, data: bytes, *, when: datetime | None = None) -> str:
        """Archive ``data`` (``direction`` ``in`` or ``out``); its key. Returns once the bytes are stored."""
        day = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
        key = f"{direction}/{partner}/{day}/{hashlib.sha256(data).hexdigest()}.x12"

        def put() -> None:
            try:
                self._opened().put_new(key, data)
            except ObjectExists:
                pass  # the same bytes, archived before

        await asyncio.to_thread(put)
        return key

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(lambda: self._opened().get(key))
