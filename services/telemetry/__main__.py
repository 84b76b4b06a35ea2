"""Entry point: ``python -m services.telemetry``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import ConfigError, Service, run_service

from .actions import ACTION_EVENT_TYPES, MissionActions
from .commands import COMMAND_EVENT_TYPES, CommandRelay
from .domain import TelemetryConfig
from .server import POLICY, TelemetryServicer
from .store import TelemetryStore
from .tracking import MISSION_EVENT_TYPES, MissionTracking

_log = logging.getLogger("haulmesh.telemetry")

#: How often expired frames are trimmed (retention is HAULMESH_TELEMETRY_RETENTION_DAYS).
_RETENTION_SWEEP_SECONDS = 3600.0
#: How often silent vehicles are looked for: a tenth of the timeout, so a loss is reported at most 10 % late.
_LIVENESS_SWEEPS_PER_TIMEOUT = 10


async def _every(seconds: float, stopped: asyncio.Event, what: str, work: Callable[[], Awaitable[object]]) -> None:
    while not stopped.is_set():
        try:
            await work()
        except Exception:
            _log.exception("%s failed", what)
        try:
            await asyncio.wait_for(stopped.wait(), seconds)
        except TimeoutError:
            pass


def register(service: Service) -> None:
    try:
        config = TelemetryConfig.from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    store = TelemetryStore(service.redis, config)
    tracking = MissionTracking(store, liveness_timeout_seconds=config.liveness_timeout)
    relay = CommandRelay(store)

    def mission_stub() -> mission_service_pb2_grpc.MissionServiceStub:
        return service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission")

    servicer = TelemetryServicer(store, config, tracking=tracking, mission=mission_stub)
    service.add(telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server, servicer,
                telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"])
    stopped = asyncio.Event()

    async def trim() -> None:
        dropped = await store.sweep_retention()
        if dropped:
            _log.info("retention: dropped %d expired frames", dropped)

    async def background() -> None:
        await asyncio.gather(
            _every(_RETENTION_SWEEP_SECONDS, stopped, "retention sweep", trim),
            _every(config.liveness_timeout / _LIVENESS_SWEEPS_PER_TIMEOUT, stopped, "liveness sweep", tracking.sweep))

    async def stop() -> None:
        stopped.set()
        await servicer.close()
        await tracking.close()
        await store.close()

    async def on_mission_event(event: event_pb2.Event) -> None:
        await relay(event)
        await tracking.on_mission_event(event)

    service.add_companion(background, stop)
    # Mission events → commands to trucks and the vehicle → mission directory; telemetry's own events →
    # mission transitions (retried by the consumer; a short reclaim time, since a truck waits on them).
    service.add_consumer("telemetry-missions", on_mission_event, types=set(COMMAND_EVENT_TYPES | MISSION_EVENT_TYPES))
    service.add_consumer("telemetry-actions", MissionActions(mission_stub), types=set(ACTION_EVENT_TYPES),
                         claim_idle_ms=3000)


if __name__ == "__main__":
    run_service("telemetry", POLICY, register, scalable=True)
