"""Fixtures of the runtime's own tests."""

from __future__ import annotations

import pytest
import redis.asyncio


@pytest.fixture
async def client(store_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """The session's store, emptied first: these tests count what they wrote."""
    await store_client.flushall()
    return store_client
