"""Nothing is acknowledged before it is on disk: the gateway (for the TMS) and the services (for operators and
vehicles) wait for the store's fsync (WAITAOF) before they answer a change with success."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2
from services.runtime import Mesh
from tests.conftest import rich_error

from .conftest import bearer, error_info
from .test_rest import create, seed_tender


@contextlib.asynccontextmanager
async def fsync_withheld(mesh: Mesh) -> AsyncIterator[None]:
    """The store stops fsyncing its AOF (``appendfsync no``): WAITAOF confirms nothing until it resumes."""
    assert mesh.store is not None
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    await client.config_set("appendfsync", "no")
    try:
        yield
    finally:
        await client.config_set("appendfsync", "everysec")
        await client.aclose()


async def test_a_tender_is_not_acknowledged_to_the_tms_before_it_is_on_disk(mesh: Mesh, http, token,
                                                                            vehicle: str) -> None:
    credentials = token("durable-co")
    payload, key = seed_tender(), str(uuid.uuid4())
    async with fsync_withheld(mesh):
        refused = await create(http, credentials, payload, **{"Idempotency-Key": key})
    assert refused.status_code == 503, refused.text
    assert error_info(refused.json())["reason"] == "STORE_NOT_DURABLE"
    assert "retry with the same request_id" in refused.json()["message"]
    # The change was made; the TMS's retry with the same key gets it, once, now that it is on disk.
    accepted = await create(http, credentials, payload, **{"Idempotency-Key": key})
    assert accepted.status_code == 200, accepted.text
    listed = await http.get("/api/v1/tenders", params={"pageSize": "10"}, headers=bearer(credentials))
    assert [t["name"] for t in listed.json()["tenders"]] == [accepted.json()["name"]]
    # Reads do not wait for the disk.
    async with fsync_withheld(mesh):
        read = await http.get(f"/api/v1/{accepted.json()['name']}", headers=bearer(credentials))
    assert read.status_code == 200, read.text


async def test_an_operator_change_is_not_acknowledged_before_it_is_on_disk(mesh: Mesh, mesh_pki) -> None:
    vehicle_id = f"DUR-{uuid.uuid4().hex[:10].upper()}"
    request = mission_service_pb2.CreateVehicleRequest(vehicle_id=vehicle_id, vehicle=vehicle_pb2.Vehicle(
        display_name=vehicle_id, home_region="US-TX-HOU",
        capabilities=vehicle_pb2.VehicleCapabilities(equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT],
                                                     max_cargo_weight_lb=45_000)))
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "dur")) as channel:
        missions = mission_service_pb2_grpc.MissionServiceStub(channel)
        async with fsync_withheld(mesh):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await missions.CreateVehicle(request, timeout=15)
        assert rich_error(refused.value)[:2] == ("UNAVAILABLE", "STORE_NOT_DURABLE")
        got = await missions.GetVehicle(mission_service_pb2.GetVehicleRequest(name=f"vehicles/{vehicle_id}"),
                                        timeout=10)
    assert got.name == f"vehicles/{vehicle_id}"
