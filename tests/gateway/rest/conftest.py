"""Fixtures of the REST gateway tests: the session mesh's HTTP door and dev tokens it trusts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import httpx
import pytest

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2
from services.gateway.rest.descriptors import load_api
from services.runtime import Mesh
from services.runtime.tokens import mint

#: Every scope the annotated methods name (see the protos' "Scope:" sentences).
ALL_SCOPES = " ".join(sorted({m.scope for m in load_api().methods if m.scope}))


@pytest.fixture(scope="session")
def base_url(mesh: Mesh) -> str:
    return f"http://127.0.0.1:{mesh.http_port}"


@pytest.fixture(scope="session")
def token(mesh: Mesh) -> Callable[..., str]:
    """``token(carrier, scopes=ALL_SCOPES, **mint_kwargs)``: a token of the mesh's dev issuer."""

    def make(carrier: str, scopes: str = ALL_SCOPES, **kwargs) -> str:
        return mint(carrier=carrier, scopes=scopes, state_dir=mesh.state_dir, **kwargs)

    return make


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_info(body: dict) -> dict:
    """The ErrorInfo detail of a google.rpc.Status JSON body."""
    infos = [d for d in body.get("details", []) if d.get("@type", "").endswith("google.rpc.ErrorInfo")]
    assert len(infos) == 1, body
    return infos[0]


@pytest.fixture
async def vehicle(mesh: Mesh, mesh_pki) -> str:
    """A fresh 53 ft dry van at Houston (the seed's origin), registered by an operator, so a tender gets an offer."""
    vehicle_id = f"GW-{uuid.uuid4().hex[:10].upper()}"
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "gw-tests")) as ch:
        created = await mission_service_pb2_grpc.MissionServiceStub(ch).CreateVehicle(
            mission_service_pb2.CreateVehicleRequest(vehicle_id=vehicle_id, vehicle=vehicle_pb2.Vehicle(
                display_name=vehicle_id, home_region="US-TX-HOU",
                capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))),
            timeout=10)
    return created.name
