"""The vehicle → mission directory on a real store: the newest change wins, in whatever order events arrive."""

from __future__ import annotations

import uuid

import redis.asyncio

from services.telemetry.store import FLEET_INDEXED_KEY, TelemetryStore


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


async def test_the_carriers_fleet_index_follows_missions_and_heals_itself(store_url: str) -> None:
    """The fleet index (fleet watches) is a hint checked against the directory: a vehicle whose mission ended or
    went to another carrier is dropped as it is read, but never one indexed again by a newer mission change."""
    client = redis.asyncio.Redis.from_url(store_url)
    store = TelemetryStore(client)
    carrier, other = f"fleet-{uuid.uuid4().hex[:8]}", f"fleet-{uuid.uuid4().hex[:8]}"
    a, b, c = (f"FIX-{uuid.uuid4().hex[:8]}" for _ in range(3))
    try:
        for vehicle, update_ms in ((a, 100), (b, 200), (c, 300)):
            await store.set_mission(vehicle, carrier, f"missions/{vehicle}", update_ms, f"{vehicle}@run".encode())
            await store.index_fleet(carrier, vehicle, update_ms, running=True)
        assert [v for v, _ in await store.fleet(carrier, 10)] == [c, b, a]  # the missions changed last first
        assert [v for v, _ in await store.fleet(carrier, 2)] == [c, b]  # bounded
        await store.set_mission(a, carrier, f"missions/{a}", 400, None)  # ended...
        await store.index_fleet(carrier, a, 400, running=False)  # ...and unindexed
        assert not await store.index_fleet(carrier, a, 350, running=False)  # a late, older end: no effect
        # b went to another carrier without its end reaching this index (a lost write): the reader drops it.
        await store.set_mission(b, other, f"missions/{b}-2", 500, b"b@other")
        assert await store.fleet(carrier, 10) == [(c, f"{c}@run".encode())]
        assert await client.zscore(f"telemetry:fleet:{{fleet-{carrier}}}", b) is None
        # A removal never beats a newer addition: index c again as of 900, then a reader that saw it at 300 stale.
        await store.index_fleet(carrier, c, 900, running=True)
        await store.index_fleet(carrier, c, 300, running=False)
        assert [v for v, _ in await store.fleet(carrier, 10)] == [c]
    finally:
        await store.close()
        await client.aclose()


async def test_missions_recorded_before_the_fleet_index_are_indexed_once(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    store = TelemetryStore(client)
    carrier, vehicle = f"fleet-{uuid.uuid4().hex[:8]}", f"OLD-{uuid.uuid4().hex[:8]}"
    try:
        await store.set_mission(vehicle, carrier, f"missions/{vehicle}", 100, b"running")  # no index written then
        await client.sadd("telemetry:vehicles", vehicle)
        await client.delete(FLEET_INDEXED_KEY)  # as on a store from before the index (idempotent for the others)
        assert await store.fleet(carrier, 10) == []
        assert await store.index_fleets_once() >= 1
        assert await store.fleet(carrier, 10) == [(vehicle, b"running")]
        assert await store.index_fleets_once() == 0  # once per store
    finally:
        await client.srem("telemetry:vehicles", vehicle)
        await store.close()
        await client.aclose()
