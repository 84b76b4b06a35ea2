"""Entry point: ``python -m services.telemetry``."""

from __future__ import annotations

import asyncio
import logging

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import ConfigError, Service, carrier_metadata, run_service

from .assignments import DISPATCHED, AssignmentRelay
from .domain import TelemetryConfig
from .server import POLICY, TelemetryServicer
from .store import TelemetryStore

_log = logging.getLogger("haulmesh.telemetry")

#: How often expired frames are trimmed (retention is HAULMESH_TELEMETRY_RETENTION_DAYS).
_SWEEP_INTERVAL_SECONDS = 3600.0


def register(service: Service) -> None:
    try:
        config = TelemetryConfig.from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = TelemetryStore(service.redis, config)

    async def acknowledge(carrier_id: str, mission: str, ack: stream_pb2.CommandAck) -> None:
        await service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission").AcknowledgeMissionDispatch(
            mission_service_pb2.AcknowledgeMissionDispatchRequest(name=mission, ack_time=ack.device_time,
                                                                  command_id=ack.command_id),
            metadata=carrier_metadata(carrier_id))

    assignments = AssignmentRelay(store, acknowledge)
    service.add(telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server,
                TelemetryServicer(store, config, on_command_ack=assignments.on_command_ack),
                telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"])
    stopped = asyncio.Event()

    async def sweep() -> None:
        while not stopped.is_set():
            try:
                dropped = await store.sweep_retention()
                if dropped:
                    _log.info("retention: dropped %d expired frames", dropped)
            except Exception:
                _log.exception("retention sweep failed")
            try:
                await asyncio.wait_for(stopped.wait(), _SWEEP_INTERVAL_SECONDS)
            except TimeoutError:
                pass

    async def stop() -> None:
        stopped.set()
        await store.close()

    service.add_companion(sweep, stop)
    service.add_consumer("telemetry-assignments", assignments, types={DISPATCHED})


if __name__ == "__main__":
    run_service("telemetry", POLICY, register)
