"""A throwaway local mesh for the demo and the benchmark: fresh state, dev certificates, free ports."""

from __future__ import annotations

import shutil
from pathlib import Path

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2
from services.runtime import MESH_SERVICES, Mesh, cli, free_port

__all__ = ["fresh_mesh", "register_truck"]


def fresh_mesh(state: Path, redis_url: str | None = None, **extra_env: str) -> Mesh:
    """A Mesh (not started) on free ports over a state folder emptied first, with dev certificates; on
    ``redis_url`` when given, else on the state folder's embedded store."""
    shutil.rmtree(state, ignore_errors=True)
    certs = state / "certs"
    if cli.main(["--cert-dir", str(certs), "pki", "dev-bootstrap"]) != 0:
        raise RuntimeError("could not issue dev certificates")
    return Mesh(state, ports={name: free_port() for name in MESH_SERVICES}, http_port=free_port(),
                grace_period_seconds=3, redis_url=redis_url, extra_env={"HAULMESH_CERT_DIR": str(certs), **extra_env})


async def register_truck(ops: mission_service_pb2_grpc.MissionServiceStub, vehicle_id: str,
                         home_region: str = "US-TX-HOU") -> vehicle_pb2.Vehicle:
    """A 53 ft dry-van truck that may run at night, as a fleet operator registers it."""
    return await ops.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
        vehicle_id=vehicle_id, vehicle=vehicle_pb2.Vehicle(
            display_name=f"Aurora Driver truck {vehicle_id}", home_region=home_region,
            capabilities=vehicle_pb2.VehicleCapabilities(
                equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], hazmat_certified=False,
                max_cargo_weight_lb=45_000, night_operations=True))), timeout=10)
