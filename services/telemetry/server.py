"""TelemetryService over gRPC: decode the request, call a use case (usecases/), encode the answer."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.telemetry.v1 import command_pb2, frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    FLEET_OPERATORS,
    PLATFORM_ADMINS,
    FailedPrecondition,
    FieldViolation,
    HaulmeshError,
    InvalidArgument,
    PermissionDenied,
    Policy,
    RevocationList,
    caller,
    caller_may,
    carrier,
    credential_of,
    decode_page,
    next_page_token,
    parse_name,
    requester,
    timestamp_ms,
)

from .config import TelemetryConfig
from .convert import duration_seconds
from .domain import FrameScope
from .peers import peer_key
from .store import TelemetryStore
from .usecases import Archiver, MissionTracking, OperatorCommands, Reads, Streams, TieredFrames

__all__ = ["POLICY", "TelemetryServicer"]

_log = logging.getLogger("haulmesh.telemetry")

_SERVICE = "/haulmesh.telemetry.v1.TelemetryService"
#: At most one audit entry per caller and vehicle this often for IngestTelemetry (docs/telemetry.md).
INGEST_AUDIT_COALESCE_SECONDS = 3600.0
#: A carrier's missions' frames: its fleet operators and platform admins (docs/security.md, "Operator roles").
_READERS = ["service/gateway", "service/mission", FLEET_OPERATORS, PLATFORM_ADMINS]
#: Internal readers may name a vehicle (`vehicles/*`); the gateway (the TMS's carriers) and fleet operators (one
#: carrier's) only missions: a vehicle's frames are every carrier's it carried.
_VEHICLE_READERS = ["service/mission", PLATFORM_ADMINS]
#: Billing reads the stored frames (usage and evidence come from them) but does not watch them live.
_LIST_READERS = [*_READERS, "service/billing"]
_VEHICLE_LIST_READERS = [*_VEHICLE_READERS, "service/billing"]

#: Per the proto's "Internal:" notes: StreamTelemetry is for trucks only (each checked against its own
#: certificate); IngestTelemetry for trucks (and the gateway relaying a truck's certificate-bound frame);
#: WatchVehicleTelemetry for Haulmesh services and fleet operators; the carrier-facing reads (List,
#: WatchMission, WatchFleet) also for the gateway.
POLICY = Policy({
    f"{_SERVICE}/StreamTelemetry": ["vehicle/*"],
    f"{_SERVICE}/IngestTelemetry": ["vehicle/*", "service/gateway"],
    f"{_SERVICE}/ListTelemetryFrames": _LIST_READERS,
    f"{_SERVICE}/WatchVehicleTelemetry": _VEHICLE_READERS,
    f"{_SERVICE}/WatchMissionTelemetry": _READERS,
    f"{_SERVICE}/WatchFleetTelemetry": _READERS,
    f"{_SERVICE}/ListVehicleCertificates": ["service/billing", "service/mission", PLATFORM_ADMINS],
    f"{_SERVICE}/RunArchive": [PLATFORM_ADMINS],
    # A person's decision about a truck: operators (a fleet operator for its carriers' missions' vehicles, checked
    # per vehicle in usecases/commands.py), or the gateway for a person at the console (the carrier it asserts must
    # be that of the vehicle's mission), never another service.
    f"{_SERVICE}/CreateVehicleCommand": [FLEET_OPERATORS, PLATFORM_ADMINS, "service/gateway"],
    f"{_SERVICE}/GetVehicleCommand": [FLEET_OPERATORS, PLATFORM_ADMINS, "service/gateway"],
    f"{_SERVICE}/ListVehicleCommands": [FLEET_OPERATORS, PLATFORM_ADMINS, "service/gateway"],
}, audit_coalesce_seconds={
    # One frame a call: audited once per (caller, vehicle) per hour, not per frame (the frames themselves are the
    # signed, sequenced record of what was written; the audit entry says who wrote for the vehicle, and when).
    f"{_SERVICE}/IngestTelemetry": INGEST_AUDIT_COALESCE_SECONDS,
})


def _acting_for(context: grpc.aio.ServicerContext) -> str | None:
    """The carrier a service caller (the gateway) acts for, from its metadata; None for an operator, whose
    certificate's grant decides (usecases/commands.py)."""
    return carrier(context) if caller().kind == "service" else None


def _vehicle_of(name: str, field: str) -> str:
    prefix, _, vehicle = name.partition("/")
    if prefix != "vehicles" or not vehicle or "/" in vehicle:
        raise InvalidArgument(f"{field} must be vehicles/{{vehicle}}, got {name!r}",
                              violations=[FieldViolation(field, "must be vehicles/{vehicle}")])
    return vehicle



class TelemetryServicer(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """Telemetry RPCs. ``mission`` gives a MissionService stub (per call: the channel follows certificate
    rotation); without it, mission-scoped reads answer FAILED_PRECONDITION MISSION_SCOPE_UNSUPPORTED."""

    def __init__(self, store: TelemetryStore, config: TelemetryConfig | None = None,
                 tracking: MissionTracking | None = None,
                 mission: Callable[[], mission_service_pb2_grpc.MissionServiceStub] | None = None,
                 streams: Streams | None = None, archiver: Archiver | None = None,
                 tiered: TieredFrames | None = None, revocations: RevocationList | None = None,
                 commands: OperatorCommands | None = None) -> None:
        self._config = config or store.config
        #: The process's certificate deny-list, for certificates the gateway relays (docs/security.md).
        self._revocations = revocations
        self.streams = streams or Streams(store, self._config, tracking)
        self._reads = Reads(store, self._config, mission, tiered)
        self._archiver = archiver
        self._commands = commands

    # ---- StreamTelemetry ----------------------------------------------------------------------------

    async def StreamTelemetry(self, request_iterator: AsyncIterator[stream_pb2.StreamTelemetryRequest],
                              context: grpc.aio.ServicerContext) -> AsyncIterator[stream_pb2.StreamTelemetryResponse]:
        vehicle_id = caller().name
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("message") != "hello":
            raise FailedPrecondition("the first message of the stream must be a Hello", reason="HELLO_REQUIRED")
        hello = first.hello
        if hello.vehicle_id != vehicle_id:
            raise PermissionDenied(f"hello names vehicle {hello.vehicle_id[:80]!r} but the certificate is "
                                   f"{vehicle_id}", reason="VEHICLE_MISMATCH")
        streams = self.streams
        current = peer_key(context)
        keys = await streams.keys(vehicle_id, current)
        session = streams.open(vehicle_id)
        session.credential = credential_of(current.certificate_pem)
        # Which certificate opened the stream (once per session): a rotation shows as a new serial on reconnect.
        _log.info("vehicle %s session %s: client certificate serial %s", vehicle_id, session.session_id,
                  session.credential.serial)
        try:  # from here on the stream is registered: whatever fails, the finally below unregisters it
            high_water = await streams.claim(session, hello.boot_id, hello.last_sequence)
            yield stream_pb2.StreamTelemetryResponse(welcome=stream_pb2.Welcome(
                high_water_sequence=high_water,
                server_time=timestamp_ms(int(time.time() * 1000)),
                max_batch_frames=self._config.max_batch_frames,
                heartbeat_interval=duration_seconds(self._config.heartbeat_interval_seconds),
                clock_skew_tolerance=duration_seconds(self._config.clock_skew_seconds),
                max_frame_age=duration_seconds(self._config.max_frame_age_seconds),
                session_id=session.session_id,
            ))
            streams.serve(session, request_iterator, keys)
            outbound = session.outbound
            while True:
                item = await outbound.get()
                session.drained.set()  # a reader held back by a full outbound queue may read again
                if item is None:
                    return
                if isinstance(item, HaulmeshError):
                    _log.info("vehicle %s session %s ends: %s %s", vehicle_id, session.session_id, item.reason,
                              item.message)
                    raise item
                yield item
        finally:
            await streams.close(session)

    # ---- IngestTelemetry ----------------------------------------------------------------------------

    async def IngestTelemetry(self, request: telemetry_service_pb2.IngestTelemetryRequest,
                              context: grpc.aio.ServicerContext) -> telemetry_service_pb2.IngestTelemetryResponse:
        identity = caller()
        # The policy admits vehicles and the gateway; the gateway relays a truck's REST call (docs/telemetry.md).
        relayed = identity.kind != "vehicle"
        vehicle_id = request.vehicle_id if relayed else identity.name
        if not relayed and request.vehicle_id != vehicle_id:
            raise PermissionDenied(f"vehicle_id {request.vehicle_id[:80]!r} is not the certificate's {vehicle_id}",
                                   reason="VEHICLE_MISMATCH")
        missing = [f for f in ("timestamp", "position") if not request.HasField(f)]
        if request.sequence == 0:
            missing.append("sequence")
        if not request.signature:
            missing.append("signature")
        if missing:
            raise InvalidArgument(f"missing required fields: {', '.join(missing)}",
                                  violations=[FieldViolation(f, "required") for f in missing])
        payload = frame_pb2.FramePayload(
            vehicle_id=request.vehicle_id, sequence=request.sequence, boot_id=request.boot_id,
            device_time=request.timestamp, kind=frame_pb2.FramePayload.KIND_POSITION, position=request.position,
            vehicle_state=request.state, mission_id=request.trip_id)
        if request.HasField("sensors"):
            payload.sensors.CopyFrom(request.sensors)
        current = peer_key(context, vehicle_id if relayed else None, self._revocations)
        result, first = await self.streams.ingest(vehicle_id, request.sequence,
                                                  payload.SerializeToString(deterministic=True), request.signature,
                                                  request.key_id, current)
        if result.stored:
            receive_ms, status = result.receive_ms, telemetry_service_pb2.IngestTelemetryResponse.OUTCOME_STORED
        else:
            receive_ms = first.receive_ms if first else 0
            status = telemetry_service_pb2.IngestTelemetryResponse.OUTCOME_DUPLICATE
        response = telemetry_service_pb2.IngestTelemetryResponse(
            sequence=request.sequence, outcome=status, high_water_sequence=result.high_water)
        if receive_ms:
            response.receive_time.CopyFrom(timestamp_ms(receive_ms))
        return response

    # ---- reads --------------------------------------------------------------------------------------

    def _vehicle_parent(self, parent: str, field: str, readers: list[str] = _VEHICLE_LIST_READERS) -> str:
        """The vehicle of an internal `vehicles/{vehicle}` read; only internal readers may name a vehicle."""
        vehicle_id = _vehicle_of(parent, field)
        if not caller_may(readers):
            raise PermissionDenied(f"{caller()} may read frames only by mission", reason="METHOD_NOT_ALLOWED")
        return vehicle_id

    async def ListTelemetryFrames(
        self, request: telemetry_service_pb2.ListTelemetryFramesRequest, context: grpc.aio.ServicerContext,
    ) -> telemetry_service_pb2.ListTelemetryFramesResponse:
        if request.parent.startswith("missions/"):
            mission_id = parse_name(request.parent, "missions", field="parent")
            scope = await self._reads.mission_scope(carrier(context), request.parent, mission_id)
        else:
            scope = FrameScope(self._vehicle_parent(request.parent, "parent"), request.parent)
        query = request.SerializeToString(deterministic=True)
        fingerprint = telemetry_service_pb2.ListTelemetryFramesRequest.FromString(query)
        fingerprint.ClearField("page_size")
        fingerprint.ClearField("page_token")
        page = decode_page(request.page_size, request.page_token, fingerprint.SerializeToString().hex())
        if not scope.vehicle_id:
            return telemetry_service_pb2.ListTelemetryFramesResponse()
        frames, cursor, exhausted = await self._reads.list_frames(scope, request, page.after, page.size)
        token = "" if exhausted else next_page_token(str(cursor), fingerprint.SerializeToString().hex())
        return telemetry_service_pb2.ListTelemetryFramesResponse(telemetry_frames=frames, next_page_token=token)

    async def ListVehicleCertificates(
        self, request: telemetry_service_pb2.ListVehicleCertificatesRequest, context: grpc.aio.ServicerContext,
    ) -> telemetry_service_pb2.ListVehicleCertificatesResponse:
        vehicle_id = self._vehicle_parent(request.parent, "parent")
        return telemetry_service_pb2.ListVehicleCertificatesResponse(certificates=[
            telemetry_service_pb2.VehicleCertificate(key_id=key_id, certificate_pem=pem.decode("ascii"),
                                                     first_seen_time=timestamp_ms(seen_ms))
            for key_id, pem, seen_ms in await self._reads.certificates(vehicle_id)])

    async def RunArchive(self, request: telemetry_service_pb2.RunArchiveRequest,
                         context: grpc.aio.ServicerContext) -> telemetry_service_pb2.RunArchiveResponse:
        vehicle_id = _vehicle_of(request.vehicle, "vehicle") if request.vehicle else ""
        if self._archiver is None:
            raise FailedPrecondition("this telemetry process has no archive configured", reason="ARCHIVE_UNCONFIGURED")
        run = await self._archiver.run(vehicle_id, force=True)
        return telemetry_service_pb2.RunArchiveResponse(vehicles=run.vehicles, frames_archived=run.frames_archived,
                                                        parts_written=run.parts_written,
                                                        frames_in_archive=run.frames_in_archive)

    # ---- operators' commands to vehicles --------------------------------------------------------------

    def _operator_commands(self) -> OperatorCommands:
        if self._commands is None:
            raise FailedPrecondition("this telemetry process takes no operator commands",
                                     reason="COMMANDS_UNCONFIGURED")
        return self._commands

    async def CreateVehicleCommand(self, request: telemetry_service_pb2.CreateVehicleCommandRequest,
                                   context: grpc.aio.ServicerContext) -> command_pb2.VehicleCommand:
        vehicle_id = parse_name(request.parent, "vehicles", field="parent")
        return await self._operator_commands().create(vehicle_id, request, requester(context), _acting_for(context))

    async def GetVehicleCommand(self, request: telemetry_service_pb2.GetVehicleCommandRequest,
                                context: grpc.aio.ServicerContext) -> command_pb2.VehicleCommand:
        return await self._operator_commands().get(request.name, _acting_for(context))

    async def ListVehicleCommands(
        self, request: telemetry_service_pb2.ListVehicleCommandsRequest, context: grpc.aio.ServicerContext,
    ) -> telemetry_service_pb2.ListVehicleCommandsResponse:
        return await self._operator_commands().list(parse_name(request.parent, "vehicles", field="parent"), request,
                                                    _acting_for(context))

    async def WatchVehicleTelemetry(self, request: telemetry_service_pb2.WatchVehicleTelemetryRequest,
                                    context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[telemetry_service_pb2.WatchVehicleTelemetryResponse]:
        scope = FrameScope(_vehicle_of(request.vehicle, "vehicle"), request.vehicle)
        identity = caller()
        with self._reads.watches.hold(f"{identity.kind}/{identity.name}"):  # the caps, before any store read
            # Live-only starts at the current high-water mark; replay starts after the requested sequence.
            cursor = await self._reads.watch_cursor(scope, request.after_sequence)
            async for frame in self._reads.follow(scope, cursor, set(request.kinds), context.done):
                yield telemetry_service_pb2.WatchVehicleTelemetryResponse(telemetry_frame=frame)

    async def WatchMissionTelemetry(self, request: telemetry_service_pb2.WatchMissionTelemetryRequest,
                                    context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[telemetry_service_pb2.WatchMissionTelemetryResponse]:
        carrier_id = carrier(context)
        mission_id = parse_name(request.mission, "missions", field="mission")
        # The caps first (a refusal costs nothing), and before the headers: the gateway answers it as 429.
        with self._reads.watches.hold(f"carriers/{carrier_id}"):
            scope = await self._reads.mission_scope(carrier_id, request.mission, mission_id)
            if not scope.vehicle_id:
                raise FailedPrecondition(f"{request.mission} has no vehicle yet", reason="MISSION_NOT_DISPATCHED")
            cursor = await self._reads.watch_cursor(scope, request.after_sequence)
            # Headers now: the gateway answers its HTTP status once they arrive (errors above come instead).
            await context.send_initial_metadata(())
            ended = functools.partial(self._reads.mission_ended, carrier_id, request.mission, mission_id)
            async for frame in self._reads.follow(scope, cursor, set(request.kinds), context.done, ended=ended):
                yield telemetry_service_pb2.WatchMissionTelemetryResponse(telemetry_frame=frame)

    async def WatchFleetTelemetry(self, request: telemetry_service_pb2.WatchFleetTelemetryRequest,
                                  context: grpc.aio.ServicerContext,
                                  ) -> AsyncIterator[telemetry_service_pb2.WatchFleetTelemetryResponse]:
        carrier_id = carrier(context)
        # One of the carrier's watch slots, like a mission watch: refused before the headers (429 at the gateway).
        with self._reads.watches.hold(f"carriers/{carrier_id}"):
            await context.send_initial_metadata(())
            async for frame in self._reads.follow_fleet(carrier_id, set(request.kinds), context.done):
                yield telemetry_service_pb2.WatchFleetTelemetryResponse(telemetry_frame=frame)
