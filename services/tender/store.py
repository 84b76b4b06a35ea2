"""The tender book in Redis: one key per tender, a time index per carrier.

Keys carry the carrier as their hash tag (``{carrier}``) so that a tender, its index and (later) its
outbox event commit in one slot on Redis Cluster.
"""

from __future__ import annotations

import redis.asyncio

from haulmesh.tender.v1 import tender_pb2
from services.runtime import Page, TimeIndex

__all__ = ["TenderStore"]


class TenderStore:
    """Reads and writes tenders of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    @staticmethod
    def _key(carrier: str, tender_id: str) -> str:
        return f"tender:{{{carrier}}}:{tender_id}"

    @staticmethod
    def _index(carrier: str) -> TimeIndex:
        return TimeIndex(f"tenders:{{{carrier}}}:by-time")

    async def get(self, carrier: str, tender_id: str) -> tender_pb2.Tender | None:
        raw = await self._redis.get(self._key(carrier, tender_id))
        return None if raw is None else tender_pb2.Tender.FromString(raw)

    async def list(self, carrier: str, page: Page) -> tuple[list[tender_pb2.Tender], str]:
        """One page of the carrier's tenders, newest first, and the cursor of the next page."""
        ids, cursor = await self._index(carrier).page(self._redis, page)
        if not ids:
            return [], cursor
        raws = await self._redis.mget([self._key(carrier, i) for i in ids])
        return [tender_pb2.Tender.FromString(r) for r in raws if r is not None], cursor
