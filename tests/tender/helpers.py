"""Builders shared by the tender tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import equipment_pb2
from services.runtime import Mesh, to_timestamp

HOUSTON = (29.749907, -95.358421)
ATLANTA = (33.7490, -84.3880)
MIAMI = (25.7617, -80.1918)


def seed_tender(now: datetime | None = None, *, tms_load_id: str = "TND-20260118-001",
                pickup_start: timedelta = timedelta(hours=20), pickup_length: timedelta = timedelta(hours=10),
                destination: tuple[float, float] = ATLANTA, weight_lb: int = 42000) -> tender_pb2.Tender:
    """The seed article's tender (Houston -> Atlanta, 53 ft dry van, 42,000 lb), pickup relative to ``now``."""
    now = now or datetime.now(UTC)
    tender = tender_pb2.Tender(tms_load_id=tms_load_id, equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT,
                               weight_lb=weight_lb, special_instructions="Hazmat=false")
    tender.origin.lat, tender.origin.lon = HOUSTON
    tender.origin.address = "Houston, TX"
    tender.destination.lat, tender.destination.lon = destination
    tender.destination.address = "Atlanta, GA"
    start = now + pickup_start
    tender.pickup_window.start_time.CopyFrom(to_timestamp(start))
    tender.pickup_window.end_time.CopyFrom(to_timestamp(start + pickup_length))
    return tender


async def register_trucks(mesh: Mesh, credentials: grpc.ChannelCredentials, prefix: str, count: int) -> None:
    """Trucks able to haul the seed load out of Houston, ``<prefix>-001`` on (ALREADY_EXISTS on a rerun is fine)."""
    async with grpc.aio.secure_channel(mesh.address("mission"), credentials) as ch:
        stub = mission_service_pb2_grpc.MissionServiceStub(ch)
        for n in range(1, count + 1):
            vehicle = vehicle_pb2.Vehicle(
                display_name=f"{prefix} test truck {n}", home_region="US-TX-HOU",
                availability=vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE,
                capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True, hazmat_certified=True))
            try:
                await stub.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
                    vehicle_id=f"{prefix}-{n:03d}", vehicle=vehicle), timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
