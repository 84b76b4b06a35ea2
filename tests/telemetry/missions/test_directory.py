"""The vehicle → mission directory on a real store: the newest change wins, in whatever order events arrive."""

from __future__ import annotations

import uuid

import redis.asyncio

from services.telemetry.store import TelemetryStore


async def test_the_newest_mission_change_wins_whatever_the_order(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    store = TelemetryStore(client)
    vehicle = f"DIR-{uuid.uuid4().hex[:8]}"
    try:
        assert await store.mission(vehicle) is None
        assert await store.set_mission(vehicle, "acme", "missions/m1", 100, b"m1@100")
        assert not await store.set_mission(vehicle, "acme", "missions/m1", 50, b"m1@50")  # late, older
        assert await store.mission(vehicle) == ("acme", b"m1@100")
        assert await store.set_mission(vehicle, "acme", "missions/m1", 200, None)  # completed
        assert await store.mission(vehicle) is None
        assert not await store.set_mission(vehicle, "acme", "missions/m1", 150, b"m1@150")  # cannot revive it
        assert await store.mission(vehicle) is None
        assert await store.set_mission(vehicle, "acme", "missions/m2", 300, b"m2@300")  # the next mission
        assert not await store.set_mission(vehicle, "acme", "missions/m1", 250, b"m1@250")
        assert await store.mission(vehicle) == ("acme", b"m2@300")
    finally:
        await store.close()
        await client.aclose()
    print("directory: 7 changes applied out of order, the newest kept each time")
