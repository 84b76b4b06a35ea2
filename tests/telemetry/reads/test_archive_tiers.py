"""A mission's frames over REST once some are archived and trimmed: the TMS pages through archived and hot frames
with one page token, every frame once, each saying its tier (the real mesh, its REST door, a real truck)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis.asyncio

from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import Mesh
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki

from .conftest import Dispatched
from .test_mission_reads import READ, list_all, send, truck_stream


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        yield client


async def test_a_missions_frames_across_archive_and_hot_tiers(mesh: Mesh, mesh_pki: Pki, http, token,
                                                              dispatched: Dispatched) -> None:
    truck, mission_id = dispatched.truck, dispatched.mission_id
    before_dispatch = dispatched.mission.dispatch_time.ToMilliseconds() / 1000 - 600
    async with truck_stream(mesh, truck) as session:
        await send(session, [truck.frame(1, device_time=before_dispatch), truck.frame(2), truck.frame(3),
                             truck.frame(4, mission_id=mission_id),
                             truck.frame(5, mission_id="01jother0mission0id00000"), truck.frame(6)])
        async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("operator", "ops")) as ch:
            reply = await telemetry_service_pb2_grpc.TelemetryServiceStub(ch).RunArchive(
                telemetry_service_pb2.RunArchiveRequest(vehicle=f"vehicles/{truck.vehicle_id}"), timeout=60)
        assert reply.frames_in_archive == 6
        assert mesh.store is not None
        client = redis.asyncio.Redis.from_url(mesh.store.url)
        try:  # as the retention sweep does once the hot window has passed: only archived frames go
            assert await TelemetryStore(client).trim_expired(truck.vehicle_id, int(time.time() * 1000) + 60_000) == 6
        finally:
            await client.aclose()
        await send(session, [truck.frame(7), truck.frame(8, mission_id=mission_id)])
    frames, _ = await list_all(http, dispatched, token(dispatched.carrier, READ), page_size=2)
    assert [(int(f["signedFrame"]["sequence"]), f["tier"]) for f in frames] == [
        (2, "TIER_ARCHIVE"), (3, "TIER_ARCHIVE"), (4, "TIER_ARCHIVE"), (6, "TIER_ARCHIVE"),
        (7, "TIER_HOT"), (8, "TIER_HOT")]
    assert frames[0]["signedFrame"]["signature"] and frames[0]["payload"]["vehicleId"] == truck.vehicle_id
