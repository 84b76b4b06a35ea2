"""TelemetryService over gRPC: translation between the wire and the telemetry rules, nothing more."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    HaulmeshError,
    InvalidArgument,
    PermissionDenied,
    Policy,
    Unavailable,
    caller,
    decode_page,
    next_page_token,
)

from .domain import (
    FrameRejected,
    RejectReason,
    TelemetryConfig,
    VehicleKey,
    Verified,
    key_from_spki,
    order_batch,
    vehicle_key,
    verify_frame,
)
from .store import StoredFrame, TelemetryStore

__all__ = ["POLICY", "TelemetryServicer"]

_log = logging.getLogger("haulmesh.telemetry")

_SERVICE = "/haulmesh.telemetry.v1.TelemetryService"
_READERS = ["service/gateway", "service/mission", "operator/*"]
#: Internal readers may name a vehicle (`vehicles/*`); the gateway (the TMS's carriers) only missions.
_VEHICLE_READERS = ["service/mission", "operator/*"]

#: Per the proto's "Internal:" notes: StreamTelemetry is for trucks only (each checked against its own
#: certificate); IngestTelemetry for trucks (and the gateway on a truck's behalf, not implemented yet);
#: WatchVehicleTelemetry for Haulmesh services and fleet operators; the carrier-facing reads (List,
#: WatchMission) also for the gateway.
POLICY = Policy({
    f"{_SERVICE}/StreamTelemetry": ["vehicle/*"],
    f"{_SERVICE}/IngestTelemetry": ["vehicle/*", "service/gateway"],
    f"{_SERVICE}/ListTelemetryFrames": _READERS,
    f"{_SERVICE}/WatchVehicleTelemetry": _VEHICLE_READERS,
    f"{_SERVICE}/WatchMissionTelemetry": _READERS,
})

_REASON_WIRE = {reason: stream_pb2.Reject.Reason.Value(f"REASON_{reason.value}") for reason in RejectReason}
#: How often an open stream looks for newly queued commands (and whether a newer stream replaced it).
_COMMAND_POLL_SECONDS = 1.0
_KEY_LIMIT = 64  # certificates remembered per vehicle; more is an attack or a bug, not rotations


def _timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _peer_key(context: grpc.aio.ServicerContext) -> VehicleKey:
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:  # the interceptor already demanded a certificate; this is belt and braces
        raise PermissionDenied("a vehicle client certificate is required", reason="CLIENT_CERTIFICATE_REQUIRED")
    try:
        return vehicle_key(certs[0])
    except ValueError as exc:
        raise PermissionDenied(f"vehicle certificate unusable for frame signatures: {exc}",
                               reason="UNSUPPORTED_KEY") from None


def _to_frame(vehicle_id: str, stored: StoredFrame) -> frame_pb2.TelemetryFrame:
    return frame_pb2.TelemetryFrame(
        name=f"vehicles/{vehicle_id}/telemetryFrames/{stored.sequence}",
        signed_frame=frame_pb2.SignedFrame(sequence=stored.sequence, payload=stored.payload,
                                           signature=stored.signature, key_id=stored.key_id),
        payload=frame_pb2.FramePayload.FromString(stored.payload),
        receive_time=_timestamp_ms(stored.receive_ms),
    )


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("command acknowledgement follow-up failed: %s", task.exception())


def _vehicle_of(name: str, field: str) -> str:
    prefix, _, vehicle = name.partition("/")
    if prefix != "vehicles" or not vehicle or "/" in vehicle:
        raise InvalidArgument(f"{field} must be vehicles/{{vehicle}}, got {name!r}",
                              violations=[FieldViolation(field, "must be vehicles/{vehicle}")])
    return vehicle


class _Session:
    """One truck stream: the outbound queue the handler drains, and its tasks."""

    def __init__(self, vehicle_id: str) -> None:
        self.vehicle_id = vehicle_id
        self.session_id = uuid.uuid4().hex
        #: Responses to send, or a HaulmeshError that ends the stream, or None for a clean end.
        self.outbound: asyncio.Queue[Any] = asyncio.Queue()
        #: Commits in flight, in batch order, with the sequence each acknowledges through.
        self.pending_acks: asyncio.Queue[tuple[asyncio.Task[Any], int] | None] = asyncio.Queue()
        #: Set when the stream has ended; loops blocked on the store check it after every wait.
        self.closed = asyncio.Event()

    def end(self, error: HaulmeshError | None) -> None:
        self.outbound.put_nowait(error)


class TelemetryServicer(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """Telemetry RPCs. WatchMissionTelemetry is not implemented yet (UNIMPLEMENTED, the generated default)."""

    def __init__(self, store: TelemetryStore, config: TelemetryConfig | None = None,
                 on_command_ack: Callable[[str, stream_pb2.CommandAck], Awaitable[None]] | None = None) -> None:
        self._store = store
        #: Told of every CommandAck after it is recorded (off the stream's path: a slow peer never stalls it).
        self._on_command_ack = on_command_ack
        self._config = config or store.config
        #: Open streams of this process by vehicle (a newer one ends the older at once; across replicas the
        #: older notices the session key changed within a command poll interval).
        self._sessions: dict[str, _Session] = {}

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
        if first.hello.vehicle_id != vehicle_id:
            raise PermissionDenied(f"hello names vehicle {first.hello.vehicle_id[:80]!r} but the certificate is "
                                   f"{vehicle_id}", reason="VEHICLE_MISMATCH")
        keys = await self._keys(vehicle_id, _peer_key(context))
        session = _Session(vehicle_id)
        older = self._sessions.get(vehicle_id)
        self._sessions[vehicle_id] = session
        if older is not None:
            older.end(Aborted("a newer stream of this vehicle replaced this one", reason="STREAM_REPLACED"))
        await self._store.claim_session(vehicle_id, session.session_id)
        high_water = await self._store.high_water(vehicle_id)
        _log.info("vehicle %s session %s opened (boot %s, truck last %d, server high-water %d)", vehicle_id,
                  session.session_id, first.hello.boot_id[:40], first.hello.last_sequence, high_water)
        yield stream_pb2.StreamTelemetryResponse(welcome=stream_pb2.Welcome(
            high_water_sequence=high_water,
            server_time=_timestamp_ms(int(time.time() * 1000)),
            max_batch_frames=self._config.max_batch_frames,
            heartbeat_interval=_duration(self._config.heartbeat_interval_seconds),
            clock_skew_tolerance=_duration(self._config.clock_skew_seconds),
            max_frame_age=_duration(self._config.max_frame_age_seconds),
            session_id=session.session_id,
        ))
        tasks = [asyncio.create_task(coro) for coro in (
            self._read(session, request_iterator, keys),
            self._send_acks(session),
            self._send_commands(session),
        )]
        try:
            while True:
                item = await session.outbound.get()
                if item is None:
                    return
                if isinstance(item, HaulmeshError):
                    _log.info("vehicle %s session %s ends: %s %s", vehicle_id, session.session_id, item.reason,
                              item.message)
                    raise item
                yield item
        finally:
            session.closed.set()
            for task in tasks:
                task.cancel()
            # A task blocked in a Redis call may finish that call before it sees the cancellation (the
            # client shields its reads); it stops at its next check of ``closed``, so do not wait for it.
            await asyncio.wait(tasks, timeout=1)
            if self._sessions.get(vehicle_id) is session:
                del self._sessions[vehicle_id]
            _log.info("vehicle %s session %s closed", vehicle_id, session.session_id)

    async def _keys(self, vehicle_id: str, current: VehicleKey) -> dict[str, VehicleKey]:
        """The current certificate's key plus every earlier one of the vehicle (frames spooled before a
        rotation keep their key id)."""
        stored = await self._store.remember_key(vehicle_id, current.key_id, current.spki_der)
        keys = {current.key_id: current}
        for key_id, spki in list(stored.items())[:_KEY_LIMIT]:
            try:
                keys.setdefault(key_id, key_from_spki(spki))
            except ValueError:
                continue
        return keys

    async def _read(self, session: _Session, requests: AsyncIterator[stream_pb2.StreamTelemetryRequest],
                    keys: dict[str, VehicleKey]) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "frames":
                    if not self._accept_batch(session, request.frames, keys):
                        return
                elif kind == "heartbeat":
                    await self._store.record_heartbeat(session.vehicle_id, request.heartbeat)
                elif kind == "command_ack":
                    await self._store.ack_command(session.vehicle_id, request.command_ack)
                    if self._on_command_ack is not None:
                        task = asyncio.ensure_future(self._on_command_ack(session.vehicle_id, request.command_ack))
                        task.add_done_callback(_log_failure)
                elif kind == "hello":
                    session.end(FailedPrecondition("Hello may only be the first message", reason="HELLO_REPEATED"))
                    return
            # The truck closed its side: finish acknowledging what it sent, then end.
            session.pending_acks.put_nowait(None)
        except HaulmeshError as exc:
            session.end(exc)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            session.end(None)
        except Exception as exc:
            _log.exception("stream of %s failed", session.vehicle_id)
            session.end(Unavailable(f"telemetry stream failed: {type(exc).__name__}", reason="INTERNAL_ERROR"))

    def _accept_batch(self, session: _Session, batch: stream_pb2.FrameBatch, keys: dict[str, VehicleKey]) -> bool:
        frames = batch.frames
        if len(frames) > self._config.max_batch_frames:
            session.end(InvalidArgument(f"a batch holds at most {self._config.max_batch_frames} frames, got "
                                        f"{len(frames)}", reason="BATCH_TOO_LARGE"))
            return False
        if not frames:
            return True
        now = time.time()
        good: list[Verified] = []
        rejects: Counter[str] = Counter()
        for frame, in_order in zip(frames, order_batch([f.sequence for f in frames]), strict=True):
            if in_order:
                outcome = verify_frame(frame.sequence, frame.payload, frame.signature, frame.key_id,
                                       vehicle_id=session.vehicle_id, keys=keys, now_seconds=now,
                                       config=self._config)
            else:
                outcome = FrameRejected(frame.sequence, RejectReason.OUT_OF_ORDER,
                                        "sequence is not greater than the previous frame's in the batch")
            if isinstance(outcome, Verified):
                good.append(outcome)
                continue
            rejects[outcome.reason.value] += 1
            session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(reject=stream_pb2.Reject(
                sequence=outcome.sequence, reason=_REASON_WIRE[outcome.reason], detail=outcome.detail)))
        # The commit runs while the next batch is read and verified; acks follow in batch order.
        commit = asyncio.create_task(self._store.commit(session.vehicle_id, good, received=len(frames),
                                                        rejects=rejects))
        # If the stream ends first, nobody awaits the commit; retrieve its failure so it is not logged as lost.
        commit.add_done_callback(lambda task: task.cancelled() or task.exception())
        session.pending_acks.put_nowait((commit, max(f.sequence for f in frames)))
        return True

    async def _send_acks(self, session: _Session) -> None:
        while True:
            item = await session.pending_acks.get()
            if item is None:
                session.end(None)
                return
            commit, through = item
            try:
                await commit
            except HaulmeshError as exc:
                session.end(exc)
                return
            session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(
                ack=stream_pb2.Ack(through_sequence=through)))

    async def _send_commands(self, session: _Session) -> None:
        """Queued commands right after Welcome, then new ones as they are queued, until acknowledged.

        Polled (non-blocking XRANGE plus the session check, once per interval) rather than XREAD BLOCK: a
        blocking read pins a store connection per truck, and thousands of idle trucks would exhaust the
        pool; a command waits at most one interval.
        """
        last = "0-0"
        try:
            while not session.closed.is_set():
                commands, current = await self._store.poll_commands(session.vehicle_id, last)
                if current != session.session_id:
                    session.end(Aborted("a newer stream of this vehicle replaced this one",
                                        reason="STREAM_REPLACED"))
                    return
                for entry_id, command in commands:
                    session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(command=command))
                    last = entry_id
                try:
                    await asyncio.wait_for(session.closed.wait(), _COMMAND_POLL_SECONDS)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            session.end(Unavailable(f"command queue unavailable: {exc}", reason="STORE_UNAVAILABLE"))

    # ---- IngestTelemetry ----------------------------------------------------------------------------

    async def IngestTelemetry(self, request: telemetry_service_pb2.IngestTelemetryRequest,
                              context: grpc.aio.ServicerContext) -> telemetry_service_pb2.IngestTelemetryResponse:
        identity = caller()
        if identity.kind != "vehicle":
            # The gateway would ingest on a truck's behalf with the truck's certificate forwarded; that
            # hand-over is not defined yet (see docs/telemetry.md).
            raise FailedPrecondition("IngestTelemetry through the gateway is not supported yet; the truck must "
                                     "call with its own mTLS certificate", reason="GATEWAY_INGEST_UNSUPPORTED")
        vehicle_id = identity.name
        if request.vehicle_id != vehicle_id:
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
        payload_bytes = payload.SerializeToString(deterministic=True)
        current = _peer_key(context)
        keys = await self._keys(vehicle_id, current)
        # boot_id is optional on this path (the seed's shape has none), so verification must not demand it.
        outcome = verify_frame(request.sequence, payload_bytes, request.signature, request.key_id or current.key_id,
                               vehicle_id=vehicle_id, keys=keys, now_seconds=time.time(), config=self._config,
                               require_boot_id=False)
        if isinstance(outcome, FrameRejected):
            await self._store.commit(vehicle_id, [], received=1, rejects=Counter({outcome.reason.value: 1}))
            raise InvalidArgument(outcome.detail, reason=outcome.reason.value, metadata={
                "sequence": str(request.sequence)})
        result = await self._store.commit(vehicle_id, [outcome], received=1)
        if result.stored:
            receive_ms, status = result.receive_ms, telemetry_service_pb2.IngestTelemetryResponse.OUTCOME_STORED
        else:
            first = await self._store.frame(vehicle_id, request.sequence)
            receive_ms = first.receive_ms if first else 0
            status = telemetry_service_pb2.IngestTelemetryResponse.OUTCOME_DUPLICATE
        response = telemetry_service_pb2.IngestTelemetryResponse(
            sequence=request.sequence, outcome=status, high_water_sequence=result.high_water)
        if receive_ms:
            response.receive_time.CopyFrom(_timestamp_ms(receive_ms))
        return response

    # ---- reads --------------------------------------------------------------------------------------

    def _vehicle_parent(self, parent: str, field: str) -> str:
        if parent.startswith("missions/"):
            raise FailedPrecondition("listing frames by mission needs the mission's vehicle and time range, which "
                                     "this service cannot resolve yet; list vehicles/{vehicle} internally",
                                     reason="MISSION_SCOPE_UNSUPPORTED")
        vehicle_id = _vehicle_of(parent, field)
        identity = caller()
        if not any(p in (f"{identity.kind}/*", f"{identity.kind}/{identity.name}") for p in _VEHICLE_READERS):
            raise PermissionDenied(f"{identity} may read frames only by mission", reason="METHOD_NOT_ALLOWED")
        return vehicle_id

    async def ListTelemetryFrames(
        self, request: telemetry_service_pb2.ListTelemetryFramesRequest, context: grpc.aio.ServicerContext,
    ) -> telemetry_service_pb2.ListTelemetryFramesResponse:
        vehicle_id = self._vehicle_parent(request.parent, "parent")
        query = request.SerializeToString(deterministic=True)
        fingerprint = telemetry_service_pb2.ListTelemetryFramesRequest.FromString(query)
        fingerprint.ClearField("page_size")
        fingerprint.ClearField("page_token")
        page = decode_page(request.page_size, request.page_token, fingerprint.SerializeToString().hex())
        after = max(int(page.after or 0), request.min_sequence - 1 if request.min_sequence else 0)
        start_ms = request.start_time.ToMilliseconds() if request.HasField("start_time") else None
        end_ms = request.end_time.ToMilliseconds() if request.HasField("end_time") else None
        kinds = set(request.kinds)
        out: list[frame_pb2.TelemetryFrame] = []
        cursor, scanned, exhausted = after, 0, False
        # Filters on device time and kind are applied while scanning by sequence; the scan per page is
        # bounded so a sparse filter cannot make one call read a whole stream (the token resumes it).
        while len(out) < page.size and scanned < 10 * page.size:
            chunk = await self._store.frames(vehicle_id, after=cursor, through=request.max_sequence,
                                             count=page.size - len(out))
            if not chunk:
                exhausted = True
                break
            for stored in chunk:
                scanned += 1
                cursor = stored.sequence
                frame = _to_frame(vehicle_id, stored)
                device_ms = frame.payload.device_time.ToMilliseconds()
                if kinds and frame.payload.kind not in kinds:
                    continue
                if (start_ms is not None and device_ms < start_ms) or (end_ms is not None and device_ms >= end_ms):
                    continue
                out.append(frame)
        if not exhausted and len(out) == page.size:
            exhausted = not await self._store.frames(vehicle_id, after=cursor, through=request.max_sequence,
                                                     count=1)
        token = "" if exhausted else next_page_token(str(cursor), fingerprint.SerializeToString().hex())
        return telemetry_service_pb2.ListTelemetryFramesResponse(telemetry_frames=out, next_page_token=token)

    async def WatchVehicleTelemetry(self, request: telemetry_service_pb2.WatchVehicleTelemetryRequest,
                                    context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[telemetry_service_pb2.WatchVehicleTelemetryResponse]:
        vehicle_id = _vehicle_of(request.vehicle, "vehicle")
        kinds = set(request.kinds)
        # Live-only starts at the current high-water mark; replay starts after the requested sequence.
        # XREAD from an id returns every later entry, so replay and live join without gap or duplicate.
        cursor = request.after_sequence or await self._store.high_water(vehicle_id)
        while not context.done():
            stored = await self._store.wait_frames(vehicle_id, cursor, block_ms=2000)
            for item in stored:
                cursor = item.sequence
                frame = _to_frame(vehicle_id, item)
                if kinds and frame.payload.kind not in kinds:
                    continue
                yield telemetry_service_pb2.WatchVehicleTelemetryResponse(telemetry_frame=frame)
