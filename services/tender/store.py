"""The tender book in Redis: one key per tender, a creation-time index per carrier.

Keys carry the carrier as their hash tag (``{carrier}``) so that a tender, its index and (later) its
outbox event commit in one slot on Redis Cluster.
"""

from __future__ import annotations

import redis.asyncio

from haulmesh.tender.v1 import tender_pb2
from services.runtime import Collection, Page

__all__ = ["TenderStore"]


class TenderStore:
    """Reads and writes tenders of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    def _tenders(self, carrier: str) -> Collection[tender_pb2.Tender]:
        return Collection(self._redis, tender_pb2.Tender, prefix=f"tender:{{{carrier}}}",
                          index_key=f"tenders:{{{carrier}}}:by-time")

    async def get(self, carrier: str, tender_id: str) -> tender_pb2.Tender | None:
        return await self._tenders(carrier).get(tender_id)

    async def list(self, carrier: str, page: Page) -> tuple[list[tender_pb2.Tender], str]:
        """One page of the carrier's tenders, newest first, and the cursor of the next page."""
        return await self._tenders(carrier).page(page)
