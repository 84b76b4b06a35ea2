"""Vehicles and missions in Redis.

Vehicles are fleet-wide (not a carrier's): one key each and a roster index under the ``{fleet}`` hash tag.
"""

from __future__ import annotations

import redis.asyncio

from haulmesh.mission.v1 import vehicle_pb2
from services.runtime import Collection, Page

__all__ = ["MissionStore"]


class MissionStore:
    """Reads and writes the roster and missions of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._vehicles = Collection(client, vehicle_pb2.Vehicle, prefix="vehicle:{fleet}",
                                    index_key="vehicles:{fleet}:by-time")

    async def get_vehicle(self, vehicle_id: str) -> vehicle_pb2.Vehicle | None:
        return await self._vehicles.get(vehicle_id)

    async def list_vehicles(self, page: Page) -> tuple[list[vehicle_pb2.Vehicle], str]:
        return await self._vehicles.page(page, newest_first=False)
