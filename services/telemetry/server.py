"""TelemetryService over gRPC: translation between the wire and the telemetry rules, nothing more."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    VEHICLE_CERTIFICATE_METADATA_KEY,
    Aborted,
    CertificateFiles,
    FailedPrecondition,
    FieldViolation,
    HaulmeshError,
    Identity,
    IdentityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Policy,
    TlsConfig,
    Unavailable,
    caller,
    carrier,
    carrier_metadata,
    decode_page,
    next_page_token,
    parse_name,
    verify_relayed_certificate,
)

from . import metrics
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
from .store import DOORBELL, StoredFrame, TelemetryStore
from .tracking import MissionTracking

__all__ = ["POLICY", "TelemetryServicer"]

_log = logging.getLogger("haulmesh.telemetry")

_SERVICE = "/haulmesh.telemetry.v1.TelemetryService"
_READERS = ["service/gateway", "service/mission", "operator/*"]
#: Internal readers may name a vehicle (`vehicles/*`); the gateway (the TMS's carriers) only missions.
_VEHICLE_READERS = ["service/mission", "operator/*"]

#: Per the proto's "Internal:" notes: StreamTelemetry is for trucks only (each checked against its own
#: certificate); IngestTelemetry for trucks (and the gateway relaying a truck's certificate-bound frame);
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
#: How often every open stream's command queue and session are looked at even without a doorbell.
_COMMAND_SWEEP_SECONDS = 5.0
#: Batches of at least this many frames are verified on several threads (one per core).
_PARALLEL_VERIFY_FRAMES = 64
#: A batch this large is a replayed backlog: its Ack is not paced.
_ACK_AT_ONCE_FRAMES = 64
_VERIFY_THREADS = min(os.cpu_count() or 1, 8)
#: Streams whose queues one pipelined poll reads.
_POLL_CHUNK = 500
#: How long a doorbell read waits before it looks again (a cancellation point, nothing more).
_DOORBELL_IDLE_SECONDS = 30.0
_KEY_LIMIT = 64  # certificates remembered per vehicle; more is an attack or a bug, not rotations


def _timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@functools.cache
def _mesh_trust() -> CertificateFiles:
    # The files this process's own handshakes use (the same environment ServiceConfig reads), re-read when they
    # change, so a relayed certificate is trusted exactly when the truck's own handshake would be.
    return CertificateFiles(TlsConfig.for_workload("telemetry"))


def _peer_key(context: grpc.aio.ServicerContext, relayed_for: str | None = None) -> VehicleKey:
    """The signing key of the truck behind the call: its own client certificate, or, when the gateway calls on
    behalf of vehicle ``relayed_for``, the certificate the gateway relayed, checked as a handshake would check
    it (mesh CA, validity, one SPIFFE ID) and required to be that vehicle's. The gateway can relay, not forge."""
    if relayed_for is None:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:  # the interceptor already demanded a certificate; this is belt and braces
            raise PermissionDenied("a vehicle client certificate is required", reason="CLIENT_CERTIFICATE_REQUIRED")
        pem = certs[0]
    else:
        relayed = [v for k, v in context.invocation_metadata() or () if k == VEHICLE_CERTIFICATE_METADATA_KEY]
        if len(relayed) != 1:
            raise PermissionDenied(f"a call on a truck's behalf must relay exactly one vehicle certificate in "
                                   f"{VEHICLE_CERTIFICATE_METADATA_KEY}", reason="CLIENT_CERTIFICATE_REQUIRED")
        trust = _mesh_trust()
        trust.refresh()
        try:
            identity, pem = verify_relayed_certificate(relayed[0], trust.current.ca_pem)
        except IdentityError as exc:
            raise PermissionDenied(str(exc), reason="INVALID_PEER_IDENTITY") from None
        if identity != Identity("vehicle", relayed_for):
            raise PermissionDenied(f"vehicle_id {relayed_for[:80]!r} is not the relayed certificate's {identity}",
                                   reason="VEHICLE_MISMATCH")
    try:
        return vehicle_key(pem)
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
        #: Commits in flight, in batch order, with the sequence each acknowledges through and its frames.
        self.pending_acks: deque[tuple[asyncio.Future[Any], int, list[Verified]]] = deque()
        #: The truck closed its side: the stream ends once the commits in flight are acknowledged.
        self.reading_done = False
        #: Set when the stream has ended; loops blocked on the store check it after every wait.
        self.closed = asyncio.Event()
        #: Set when a stream of the vehicle on another replica replaced this one.
        self.moved_away = False
        #: Entry id of the last command sent on this stream.
        self.command_cursor = "0-0"
        #: When the last Ack went out (event-loop time), and the flush waiting to send the next one.
        self.last_ack_time = float("-inf")
        self.ack_timer: asyncio.TimerHandle | None = None
        #: The store names this stream the vehicle's current one. Until then the deliverer leaves it alone:
        #: it would read the vehicle's previous session (or none) and take this stream for replaced.
        self.claimed = False

    def end(self, error: HaulmeshError | None) -> None:
        self.outbound.put_nowait(error)


class TelemetryServicer(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """Telemetry RPCs. ``mission`` gives a MissionService stub (per call: the channel follows certificate
    rotation); without it, mission-scoped reads answer FAILED_PRECONDITION MISSION_SCOPE_UNSUPPORTED."""

    def __init__(self, store: TelemetryStore, config: TelemetryConfig | None = None,
                 tracking: MissionTracking | None = None,
                 mission: Callable[[], mission_service_pb2_grpc.MissionServiceStub] | None = None) -> None:
        self._store = store
        self._mission_stub = mission
        #: Resolved missions by (carrier, mission id), with when they were resolved (monotonic seconds).
        self._missions: dict[tuple[str, str], tuple[float, _FrameScope]] = {}
        #: Sequence floors of mission spans by (vehicle, span start): valid forever once computed.
        self._floors: dict[tuple[str, int], int] = {}
        #: Told of durable frames, heartbeats, connections and command acks (derived events, liveness).
        self._tracking = tracking
        self._config = config or store.config
        #: Open streams of this process by vehicle (a newer one ends the older at once; across replicas the
        #: doorbell of the newer one's claim tells the older to end).
        self._sessions: dict[str, _Session] = {}
        #: Vehicles whose command queues the deliverer reads next, and its wake-up.
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._deliverer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._verifiers = ThreadPoolExecutor(_VERIFY_THREADS, "verify") if _VERIFY_THREADS > 1 else None

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
        metrics.stream_opened()
        tasks: list[asyncio.Task[None]] = []
        try:  # from here on the stream is registered: whatever fails, the finally below unregisters it
            await self._store.claim_session(vehicle_id, session.session_id)
            session.claimed = True
            if self._tracking is not None:
                self._tracking.connected(vehicle_id, first.hello.last_sequence)
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
            tasks.append(asyncio.create_task(self._read(session, request_iterator, keys)))
            self._commands_due(vehicle_id)  # what was queued while the truck was away goes right after Welcome
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
            metrics.stream_closed()
            session.closed.set()
            if session.ack_timer is not None:
                session.ack_timer.cancel()
            for task in tasks:
                task.cancel()
            # A task blocked in a Redis call may finish that call before it sees the cancellation (the
            # client shields its reads); it stops at its next check of ``closed``, so do not wait for it.
            if tasks:
                await asyncio.wait(tasks, timeout=1)
            if self._sessions.get(vehicle_id) is session:
                del self._sessions[vehicle_id]
            if session.moved_away and self._tracking is not None:
                self._tracking.moved_away(vehicle_id)
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
                    if not await self._accept_batch(session, request.frames, keys):
                        return
                elif kind == "heartbeat":
                    await self._store.record_heartbeat(session.vehicle_id, request.heartbeat)
                    if self._tracking is not None:
                        self._tracking.heartbeat(session.vehicle_id, request.heartbeat)
                elif kind == "command_ack":
                    await self._command_ack(session.vehicle_id, request.command_ack)
                elif kind == "hello":
                    session.end(FailedPrecondition("Hello may only be the first message", reason="HELLO_REPEATED"))
                    return
            # The truck closed its side: finish acknowledging what it sent, then end.
            session.reading_done = True
            self._flush_acks(session)
        except HaulmeshError as exc:
            session.end(exc)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            session.end(None)
        except Exception as exc:
            _log.exception("stream of %s failed", session.vehicle_id)
            session.end(Unavailable(f"telemetry stream failed: {type(exc).__name__}", reason="INTERNAL_ERROR"))

    async def _command_ack(self, vehicle_id: str, ack: stream_pb2.CommandAck) -> None:
        # Announced before the command leaves the queue: if the announcement fails, the command is sent
        # again on the next connection and the truck's new answer is announced then.
        if self._tracking is not None:
            carrier_id, mission = await self._store.command_context(vehicle_id, ack.command_id)
            await self._tracking.command_acknowledged(vehicle_id, ack, carrier_id, mission)
        await self._store.ack_command(vehicle_id, ack)

    async def _accept_batch(self, session: _Session, batch: stream_pb2.FrameBatch,
                            keys: dict[str, VehicleKey]) -> bool:
        frames = batch.frames
        if len(frames) > self._config.max_batch_frames:
            session.end(InvalidArgument(f"a batch holds at most {self._config.max_batch_frames} frames, got "
                                        f"{len(frames)}", reason="BATCH_TOO_LARGE"))
            return False
        if not frames:
            return True
        good: list[Verified] = []
        rejects: Counter[str] = Counter()
        for outcome in await self._verify_batch(session.vehicle_id, frames, keys):
            if isinstance(outcome, Verified):
                good.append(outcome)
                continue
            rejects[outcome.reason.value] += 1
            session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(reject=stream_pb2.Reject(
                sequence=outcome.sequence, reason=_REASON_WIRE[outcome.reason], detail=outcome.detail)))
        # The commit runs while the next batch is read and verified; acks follow in batch order.
        commit = self._store.submit(session.vehicle_id, good, received=len(frames), rejects=rejects)
        session.pending_acks.append((commit, max(f.sequence for f in frames), good))
        backlog = len(frames) >= _ACK_AT_ONCE_FRAMES
        commit.add_done_callback(lambda done: self._commit_done(session, done, backlog=backlog))
        return True

    async def _verify_batch(self, vehicle_id: str, frames: Sequence[frame_pb2.SignedFrame],
                            keys: dict[str, VehicleKey]) -> list[Verified | FrameRejected]:
        """Each frame's outcome, in order. A large batch (a backlog replayed after an outage) is verified on
        several threads: the signature check runs without the GIL, so replay uses every core."""
        now = time.time()

        def verify(chunk: Sequence[tuple[frame_pb2.SignedFrame, bool]]) -> list[Verified | FrameRejected]:
            return [verify_frame(frame.sequence, frame.payload, frame.signature, frame.key_id, vehicle_id=vehicle_id,
                                 keys=keys, now_seconds=now, config=self._config)
                    if in_order else FrameRejected(frame.sequence, RejectReason.OUT_OF_ORDER,
                                                   "sequence is not greater than the previous frame's in the batch")
                    for frame, in_order in chunk]

        work = list(zip(frames, order_batch([f.sequence for f in frames]), strict=True))
        if len(work) < _PARALLEL_VERIFY_FRAMES or self._verifiers is None:
            return verify(work)
        size = -(-len(work) // _VERIFY_THREADS)
        loop = asyncio.get_running_loop()
        chunks = await asyncio.gather(*(loop.run_in_executor(self._verifiers, verify, work[i:i + size])
                                        for i in range(0, len(work), size)))
        return [outcome for chunk in chunks for outcome in chunk]

    def _commit_done(self, session: _Session, commit: asyncio.Future[Any], *, backlog: bool) -> None:
        """Acknowledge now, or at the stream's next Ack time if one went out less than the interval ago.

        Not paced: a failed commit (it ends the stream; its error is retrieved here, once), and a batch of a
        replayed backlog (one Ack per hundreds of frames already; the truck frees its spool sooner).
        """
        if commit.cancelled() or commit.exception() is not None or backlog:
            if session.ack_timer is not None:
                session.ack_timer.cancel()
                session.ack_timer = None
            self._flush_acks(session)
            return
        if session.ack_timer is not None:
            return  # the scheduled flush takes this commit too
        loop = asyncio.get_running_loop()
        wait = session.last_ack_time + self._config.ack_interval_seconds - loop.time()
        if wait <= 0:
            self._flush_acks(session)
        else:
            session.ack_timer = loop.call_later(wait, self._paced_flush, session)

    def _paced_flush(self, session: _Session) -> None:
        session.ack_timer = None
        self._flush_acks(session)

    def _flush_acks(self, session: _Session) -> None:
        """Acknowledge every leading commit that is durable, with one Ack through the last of them.

        A commit group's fsync completes many batches of a stream at once (live trucks send a frame per
        message): one Ack covers them all, sparing the truck's link and the server a message per frame.
        """
        through, durable = 0, []
        pending = session.pending_acks
        failure: BaseException | None = None
        while pending and pending[0][0].done():
            commit, last, frames = pending.popleft()
            failure = commit.exception()  # also marks the failure retrieved if the stream is gone
            if failure is not None:
                break
            through = max(through, last)  # a resent (duplicate) batch may end below an earlier one
            durable.extend(frames)
        if through and not session.closed.is_set():
            session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(
                ack=stream_pb2.Ack(through_sequence=through)))
            session.last_ack_time = asyncio.get_running_loop().time()
        if durable and self._tracking is not None:
            self._tracking.frames_stored(session.vehicle_id, durable)
        if failure is not None:
            session.end(failure if isinstance(failure, HaulmeshError) else Unavailable(
                f"telemetry store failed: {failure}", reason="STORE_UNAVAILABLE"))
        elif session.reading_done and not pending:
            session.end(None)

    # ---- commands ---------------------------------------------------------------------------------

    def _commands_due(self, *vehicle_ids: str) -> None:
        """Ask the command deliverer to look at these vehicles' queues now."""
        self._due.update(vehicle_ids)
        self._wake.set()
        if self._deliverer is None or self._deliverer.done():
            loop = asyncio.get_running_loop()
            self._deliverer = loop.create_task(self._deliver_loop())
            self._listener = loop.create_task(self._listen_doorbell())

    async def _listen_doorbell(self) -> None:
        """Vehicles named on the doorbell (a command queued, a newer session claimed) are due at once."""
        while True:
            try:
                pubsub = self._store.doorbell()
                try:
                    await pubsub.subscribe(DOORBELL)
                    self._commands_due(*self._sessions)  # anything rung while (re)subscribing
                    while True:
                        message = await pubsub.get_message(timeout=_DOORBELL_IDLE_SECONDS)
                        if message is not None and (vehicle_id := message["data"].decode()) in self._sessions:
                            self._commands_due(vehicle_id)
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store restarting: the sweep covers the gap, then resubscribe
                _log.warning("command doorbell lost (%s); resubscribing", exc)
                await asyncio.sleep(1)

    async def _deliver_loop(self) -> None:
        """The one task that sends queued commands to this process's streams (so never twice).

        Woken by the doorbell; every ``_COMMAND_SWEEP_SECONDS`` it also looks at every open stream, the
        safety net for a doorbell message lost with a dropped connection. One pipelined poll per round,
        whatever the number of streams: thousands of idle trucks cost nothing between rounds.
        """
        loop = asyncio.get_running_loop()
        swept = loop.time()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, swept + _COMMAND_SWEEP_SECONDS - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()
            due, self._due = self._due, set()
            if loop.time() - swept >= _COMMAND_SWEEP_SECONDS:
                due.update(self._sessions)
                swept = loop.time()
            # A stream still claiming its session is left out: it asks for its queue once claimed.
            sessions = [stream for v in due if (stream := self._sessions.get(v)) is not None and stream.claimed]
            for start in range(0, len(sessions), _POLL_CHUNK):
                chunk = sessions[start:start + _POLL_CHUNK]
                try:
                    await self._deliver_commands(chunk)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next round retries; frames do not depend on it
                    _log.warning("command queues unreadable: %s", exc)
                    self._due.update(s.vehicle_id for s in chunk)

    async def _deliver_commands(self, sessions: list[_Session]) -> None:
        results = await self._store.poll_commands_of([(s.vehicle_id, s.command_cursor) for s in sessions])
        for session, (commands, current) in zip(sessions, results, strict=True):
            if session.closed.is_set():
                continue
            if current != session.session_id:
                # Replaced by a stream on another replica (one in this process replaced it directly).
                session.moved_away = self._sessions.get(session.vehicle_id) is session
                session.end(Aborted("a newer stream of this vehicle replaced this one", reason="STREAM_REPLACED"))
                continue
            for entry_id, command in commands:
                session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(command=command))
                session.command_cursor = entry_id

    async def close(self) -> None:
        """Stop the command deliverer (at shutdown, after the streams were told to end)."""
        tasks = [t for t in (self._deliverer, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._verifiers is not None:
            self._verifiers.shutdown(wait=False, cancel_futures=True)

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
        payload_bytes = payload.SerializeToString(deterministic=True)
        current = _peer_key(context, vehicle_id if relayed else None)
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
        if self._tracking is not None:
            self._tracking.frames_stored(vehicle_id, [outcome])
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
        """The vehicle of an internal `vehicles/{vehicle}` read; only internal readers may name a vehicle."""
        vehicle_id = _vehicle_of(parent, field)
        identity = caller()
        if not any(p in (f"{identity.kind}/*", f"{identity.kind}/{identity.name}") for p in _VEHICLE_READERS):
            raise PermissionDenied(f"{identity} may read frames only by mission", reason="METHOD_NOT_ALLOWED")
        return vehicle_id

    async def ListTelemetryFrames(
        self, request: telemetry_service_pb2.ListTelemetryFramesRequest, context: grpc.aio.ServicerContext,
    ) -> telemetry_service_pb2.ListTelemetryFramesResponse:
        if request.parent.startswith("missions/"):
            scope = await self._mission_scope(context, request.parent, "parent")
        else:
            scope = _FrameScope(self._vehicle_parent(request.parent, "parent"), request.parent)
        query = request.SerializeToString(deterministic=True)
        fingerprint = telemetry_service_pb2.ListTelemetryFramesRequest.FromString(query)
        fingerprint.ClearField("page_size")
        fingerprint.ClearField("page_token")
        page = decode_page(request.page_size, request.page_token, fingerprint.SerializeToString().hex())
        if not scope.vehicle_id:
            return telemetry_service_pb2.ListTelemetryFramesResponse()
        after = max(int(page.after or 0), request.min_sequence - 1 if request.min_sequence else 0)
        if not page.after and scope.start_ms is not None:
            after = max(after, await self._floor(scope))
        start_ms = request.start_time.ToMilliseconds() if request.HasField("start_time") else None
        end_ms = request.end_time.ToMilliseconds() if request.HasField("end_time") else None
        kinds = set(request.kinds)
        out: list[frame_pb2.TelemetryFrame] = []
        cursor, scanned, exhausted = after, 0, False
        # Filters on device time and kind are applied while scanning by sequence; the scan per page is
        # bounded so a sparse filter cannot make one call read a whole stream (the token resumes it).
        while len(out) < page.size and scanned < 10 * page.size and not exhausted:
            chunk = await self._store.frames(scope.vehicle_id, after=cursor, through=request.max_sequence,
                                             count=page.size - len(out))
            if not chunk:
                exhausted = True
                break
            for stored in chunk:
                scanned += 1
                frame = scope.frame(stored)
                if scope.beyond(frame.payload, self._skew_ms):
                    exhausted = True  # the vehicle's later frames are all after the mission
                    break
                cursor = stored.sequence
                device_ms = frame.payload.device_time.ToMilliseconds()
                if not scope.holds(frame.payload) or (kinds and frame.payload.kind not in kinds):
                    continue
                if (start_ms is not None and device_ms < start_ms) or (end_ms is not None and device_ms >= end_ms):
                    continue
                out.append(frame)
        if not exhausted and len(out) == page.size:
            following = await self._store.frames(scope.vehicle_id, after=cursor, through=request.max_sequence,
                                                 count=1)
            exhausted = not following or scope.beyond(scope.frame(following[0]).payload, self._skew_ms)
        token = "" if exhausted else next_page_token(str(cursor), fingerprint.SerializeToString().hex())
        return telemetry_service_pb2.ListTelemetryFramesResponse(telemetry_frames=out, next_page_token=token)

    async def WatchVehicleTelemetry(self, request: telemetry_service_pb2.WatchVehicleTelemetryRequest,
                                    context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[telemetry_service_pb2.WatchVehicleTelemetryResponse]:
        vehicle_id = _vehicle_of(request.vehicle, "vehicle")
        scope = _FrameScope(vehicle_id, request.vehicle)
        # Live-only starts at the current high-water mark; replay starts after the requested sequence.
        cursor = request.after_sequence or await self._store.high_water(vehicle_id)
        async for frame in self._follow(scope, cursor, set(request.kinds), context):
            yield telemetry_service_pb2.WatchVehicleTelemetryResponse(telemetry_frame=frame)

    async def WatchMissionTelemetry(self, request: telemetry_service_pb2.WatchMissionTelemetryRequest,
                                    context: grpc.aio.ServicerContext,
                                    ) -> AsyncIterator[telemetry_service_pb2.WatchMissionTelemetryResponse]:
        carrier_id = carrier(context)
        scope = await self._mission_scope(context, request.mission, "mission")
        if not scope.vehicle_id:
            raise FailedPrecondition(f"{request.mission} has no vehicle yet", reason="MISSION_NOT_DISPATCHED")
        if request.after_sequence:
            cursor = max(request.after_sequence, await self._floor(scope))
        else:
            cursor = await self._store.high_water(scope.vehicle_id)
        # Headers now: the gateway answers its HTTP status once they arrive (errors above come instead of them).
        await context.send_initial_metadata(())

        async def ended() -> bool:
            try:
                return (await self._mission_scope(context, request.mission, "mission", carrier_id=carrier_id)).ended
            except Unavailable as exc:  # a blip of the mission service must not end the carrier's watch
                _log.warning("watch of %s: %s; asking again later", request.mission, exc.message)
                return False

        async for frame in self._follow(scope, cursor, set(request.kinds), context, ended=ended):
            yield telemetry_service_pb2.WatchMissionTelemetryResponse(telemetry_frame=frame)

    @property
    def _skew_ms(self) -> int:
        return int(self._config.clock_skew_seconds * 1000)

    async def _follow(self, scope: _FrameScope, cursor: int, kinds: set[int], context: grpc.aio.ServicerContext,
                      ended: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[frame_pb2.TelemetryFrame]:
        """The scope's frames after ``cursor`` as they are stored; XREAD from an id returns every later entry,
        so replay and live join without gap or duplicate. With ``ended``, asked every few seconds: once it
        says so, what is stored by then is sent and the stream ends."""
        loop = asyncio.get_running_loop()
        next_check, final = loop.time(), False
        while not context.done():
            if ended is not None and not final and loop.time() >= next_check:
                final = await ended()
                next_check = loop.time() + _MISSION_POLL_SECONDS
            # After the end the reads do not block: they drain what was stored by then.
            stored = await (self._store.frames(scope.vehicle_id, after=cursor, count=500) if final else
                            self._store.wait_frames(scope.vehicle_id, cursor, block_ms=2000))
            for item in stored:
                cursor = item.sequence
                frame = scope.frame(item)
                if scope.holds(frame.payload) and not (kinds and frame.payload.kind not in kinds):
                    yield frame
            if final and not stored:
                return

    async def _mission_scope(self, context: grpc.aio.ServicerContext, name: str, field: str, *,
                             carrier_id: str | None = None) -> _FrameScope:
        """The vehicle and time span of a mission of the caller's carrier, resolved by the mission service
        (which answers NOT_FOUND for another carrier's mission); remembered for a moment."""
        mission_id = parse_name(name, "missions", field=field)
        carrier_id = carrier_id or carrier(context)
        key = (carrier_id, mission_id)
        now = time.monotonic()
        cached = self._missions.get(key)
        if cached is not None and now - cached[0] < _MISSION_CACHE_SECONDS:
            return cached[1]
        if self._mission_stub is None:
            raise FailedPrecondition("this telemetry process has no mission service to resolve missions with",
                                     reason="MISSION_SCOPE_UNSUPPORTED")
        try:
            mission = await self._mission_stub().GetMission(mission_service_pb2.GetMissionRequest(name=name),
                                                            metadata=carrier_metadata(carrier_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{name} does not exist", reason="MISSION_NOT_FOUND", metadata={"name": name}) from None
            raise Unavailable(f"the mission service could not resolve {name} ({exc.code().name})",
                              reason="MISSION_LOOKUP_UNAVAILABLE", metadata={"cause": exc.code().name}) from None
        scope = _FrameScope.of_mission(mission)
        if len(self._missions) >= _MISSION_CACHE_SIZE:
            self._missions.pop(next(iter(self._missions)))
        self._missions[key] = (now, scope)
        return scope

    async def _floor(self, scope: _FrameScope) -> int:
        """A sequence at or below which no frame of the mission can be: the vehicle's last frame received
        more than the clock-skew tolerance before the mission began (a frame's device time is never further
        ahead of its receive time, and receive times grow with sequence). Binary search by XRANGE; kept."""
        assert scope.start_ms is not None
        key = (scope.vehicle_id, scope.start_ms)
        if key in self._floors:
            return self._floors[key]
        threshold = scope.start_ms - self._skew_ms
        lo, hi = 0, await self._store.high_water(scope.vehicle_id)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            probe = await self._store.frames(scope.vehicle_id, after=mid - 1, count=1)
            if probe and probe[0].receive_ms < threshold:
                lo = probe[0].sequence
            else:
                hi = mid - 1
        if len(self._floors) >= _MISSION_CACHE_SIZE:
            self._floors.pop(next(iter(self._floors)))
        self._floors[key] = lo
        return lo


#: How long a resolved mission is reused (list pages and watch polls in a row ask for the same one).
_MISSION_CACHE_SECONDS = 2.0
_MISSION_CACHE_SIZE = 4096
#: How often a mission watch asks the mission service whether the mission has ended.
_MISSION_POLL_SECONDS = 3.0
_TERMINAL = {mission_pb2.Mission.STATE_COMPLETED, mission_pb2.Mission.STATE_CANCELLED,
             mission_pb2.Mission.STATE_ABORTED}


@dataclass(frozen=True)
class _FrameScope:
    """Which frames a read covers: all of a vehicle's, or those of one mission (its vehicle's frames whose
    device time is in the mission's span and that name no other mission)."""

    vehicle_id: str
    #: The frames' parent in their names: `vehicles/{vehicle}` or `missions/{mission}`.
    parent: str
    mission_id: str = ""
    #: The span in device time (ms): from dispatch (else the acknowledgement) to the end, None if open.
    start_ms: int | None = None
    end_ms: int | None = None
    ended: bool = False

    @classmethod
    def of_mission(cls, mission: mission_pb2.Mission) -> _FrameScope:
        vehicle_id = mission.vehicle.removeprefix("vehicles/")
        start = next((t for t in (mission.dispatch_time, mission.dispatch_ack_time) if t.ToMilliseconds()), None)
        if start is None:  # not dispatched: no vehicle has recorded anything for it
            vehicle_id = ""
        return cls(vehicle_id, mission.name, mission.name.removeprefix("missions/"),
                   start.ToMilliseconds() if start is not None else None,
                   mission.end_time.ToMilliseconds() if mission.HasField("end_time") else None,
                   mission.state in _TERMINAL)

    def frame(self, stored: StoredFrame) -> frame_pb2.TelemetryFrame:
        frame = _to_frame(self.vehicle_id, stored)
        if self.mission_id:
            frame.name = f"{self.parent}/telemetryFrames/{stored.sequence}"
        return frame

    def holds(self, payload: frame_pb2.FramePayload) -> bool:
        if not self.mission_id:
            return True
        if payload.mission_id and payload.mission_id != self.mission_id:
            return False
        device_ms = payload.device_time.ToMilliseconds()
        return (self.start_ms is not None and device_ms >= self.start_ms
                and (self.end_ms is None or device_ms < self.end_ms))

    def beyond(self, payload: frame_pb2.FramePayload, margin_ms: int) -> bool:
        """Whether a frame lies so far after the span that no later frame of the vehicle can be in it: the
        vehicle numbers its readings in the order it takes them, so device time grows with sequence (the
        margin absorbs clock corrections)."""
        return self.end_ms is not None and payload.device_time.ToMilliseconds() >= self.end_ms + margin_ms
