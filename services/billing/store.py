"""Rate cards, quotes and invoices in Redis, under the carrier's hash tag."""

from __future__ import annotations

import redis.asyncio

from haulmesh.billing.v1 import invoice_pb2
from services.runtime import Collection, Page

__all__ = ["BillingStore"]


class BillingStore:
    """Reads and writes billing records of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    def _invoices(self, carrier: str) -> Collection[invoice_pb2.Invoice]:
        return Collection(self._redis, invoice_pb2.Invoice, prefix=f"invoice:{{{carrier}}}",
                          index_key=f"invoices:{{{carrier}}}:by-time")

    async def get_invoice(self, carrier: str, invoice_id: str) -> invoice_pb2.Invoice | None:
        return await self._invoices(carrier).get(invoice_id)

    async def list_invoices(self, carrier: str, page: Page) -> tuple[list[invoice_pb2.Invoice], str]:
        return await self._invoices(carrier).page(page)
