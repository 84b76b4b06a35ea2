"""Entry point: ``python -m services.telemetry``. Wiring only."""

from __future__ import annotations

import asyncio

from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import ConfigError, Idempotency, Service, run_service

from . import workers
from .config import TelemetryConfig
from .domain import DerivedSettings
from .server import POLICY, TelemetryServicer
from .store import TelemetryStore
from .usecases import (
    ArchiveObjects,
    Archiver,
    CommandRelay,
    FleetReporter,
    MissionActions,
    MissionTracking,
    OperatorCommands,
    Streams,
    TieredFrames,
)


def register(service: Service) -> None:
    try:
        config = TelemetryConfig.from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # Watches block on a pool of their own (HAULMESH_TELEMETRY_WATCH_POOL_CONNECTIONS), never the commit path's.
    store = TelemetryStore(service.redis, config, ack_replicas=service.config.store_ack_replicas,
                           ack_replica_disk=service.config.store_ack_replica_disk,
                           blocking=service.blocking_redis(config.watch_pool_connections))
    # Opened in the background: a malformed URL, missing credentials, an S3 bucket without Object Lock or a store
    # that overwrites stop start-up (ConfigError); a store that is down does not (telemetry serves, the archive
    # worker keeps trying, haulmesh_telemetry_archive_available says 0).
    objects = ArchiveObjects(config.archive_url, store)
    try:
        objects.open_at_start()
    except ConfigError as exc:
        raise ConfigError(exc.message if exc.message.startswith("HAULMESH_ARCHIVE_URL")
                          else f"HAULMESH_ARCHIVE_URL: {exc.message}", field="HAULMESH_ARCHIVE_URL") from None
    archiver = Archiver(store, objects, config)
    tiered = TieredFrames(store, objects)

    def mission_stub() -> mission_service_pb2_grpc.MissionServiceStub:
        return service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission")

    fleet = FleetReporter(mission_stub, flush_seconds=config.fleet_flush_seconds)
    tracking = MissionTracking(store, liveness_timeout_seconds=config.effective_liveness_timeout_seconds,
                               settings=DerivedSettings.for_lanes(config.lanes), fleet=fleet,
                               max_backlog_frames=config.max_tracking_frames)
    streams = Streams(store, config, tracking)
    service.revocations.on_revoked(streams.end_revoked)  # an idle truck's open stream ends when it is revoked

    servicer = TelemetryServicer(store, config, mission=mission_stub, streams=streams, archiver=archiver,
                                 tiered=tiered, revocations=service.revocations,
                                 commands=OperatorCommands(store, Idempotency(service.redis)))
    service.add(telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server, servicer,
                telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"])

    stopped = asyncio.Event()

    async def run() -> None:  # a companion only for its stop: what the stream engine holds is released there
        await stopped.wait()

    async def close() -> None:
        stopped.set()
        await streams.shutdown()
        await tracking.close()
        await store.close()

    service.add_companion(run, close)
    workers.start(service, store=store, streams=streams, tracking=tracking, relay=CommandRelay(store),
                  actions=MissionActions(mission_stub),
                  liveness_timeout_seconds=config.effective_liveness_timeout_seconds, fleet=fleet, archiver=archiver,
                  archive_after_seconds=config.archive_after_seconds)


if __name__ == "__main__":
    run_service("telemetry", POLICY, register, scalable=True)
