"""Webhook subscriptions and their delivery log in Redis, under the carrier's hash tag."""

from __future__ import annotations

import redis.asyncio

from haulmesh.gateway.v1 import webhook_pb2
from services.runtime import Collection, Page

__all__ = ["WebhookStore"]


class WebhookStore:
    """Reads and writes webhook subscriptions of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    def _subscriptions(self, carrier: str) -> Collection[webhook_pb2.WebhookSubscription]:
        return Collection(self._redis, webhook_pb2.WebhookSubscription, prefix=f"webhook:{{{carrier}}}",
                          index_key=f"webhooks:{{{carrier}}}:by-time")

    async def get(self, carrier: str, subscription_id: str) -> webhook_pb2.WebhookSubscription | None:
        return await self._subscriptions(carrier).get(subscription_id)

    async def list(self, carrier: str, page: Page) -> tuple[list[webhook_pb2.WebhookSubscription], str]:
        return await self._subscriptions(carrier).page(page)
