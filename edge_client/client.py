"""The truck's telemetry stream client: sends the spool to the cloud and keeps it flowing across outages.

One session (one ``StreamTelemetry`` call):

1. Hello (vehicle, boot id, last sequence assigned, oldest sequence spooled) → Welcome (server high-water).
2. Every spooled frame at or below the high-water mark is acked: it is deleted from the spool.
3. The spooled frames above it are sent in FrameBatches of at most ``Welcome.max_batch_frames`` (replay),
   then new frames as they are spooled (live: usually one per batch).
4. Concurrently: Ack → delete through the sequence; Reject → remove that frame (final) and count it;
   Command → the command handler, answered with a CommandAck (deduplicated on ``command_id``, durably);
   a Heartbeat every ``Welcome.heartbeat_interval`` with edge CPU, link quality and the spool's counters.

Any failure ends the session; the client reconnects with exponential backoff and full jitter and resumes
from the high-water mark of the next Welcome. gRPC never retries a bidi stream by itself: the resume
handshake is ours. Meanwhile readings keep being spooled: the spool, not the stream, is the source of truth.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2_grpc

from .spool import Spool

__all__ = ["BACKOFF_CAP_SECONDS", "ClientStats", "CommandHandler", "CpuSampler", "Keepalive", "StreamClient",
           "full_jitter"]

CLIENT_VERSION = "0.4.0"
_log = logging.getLogger("haulmesh.edge")

CommandOutcome = tuple[int, str]
#: Called with each new (not yet answered) command; returns (CommandAck.Outcome, detail), sync or async.
CommandHandler = Callable[[stream_pb2.Command], CommandOutcome | Awaitable[CommandOutcome]]

@dataclass(frozen=True)
class Keepalive:
    """The truck's half of the keepalive policy agreed with the server (docs/decisions.md, "Keepalive, both
    ends"). The channel pings after ``time_seconds`` without a read and drops the link when a ping is not
    answered within ``timeout_seconds``: a link that died silently (a truck leaving coverage sends no RST, a
    carrier NAT forgets the flow) is found within their sum, and the session reconnects. ``time_seconds`` must
    not be below the server's HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS, or the server answers GOAWAY
    too_many_pings."""

    time_seconds: float = 10.0
    timeout_seconds: float = 5.0

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", int(self.time_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout_seconds * 1000)),
            # Any unanswered ping ends the link after the same timeout. The keepalive ping waits behind a ping
            # already in flight (gRPC's flow-control probe, sent after every read): with the library's default
            # ping timeout of a minute, a link that died right after a read was found only then (measured).
            ("grpc.http2.ping_timeout_ms", int(self.timeout_seconds * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # A parked truck sends nothing but pings: unlimited, or they would stop after two (gRPC's default).
            ("grpc.http2.max_pings_without_data", 0),
        ]


#: The reconnect backoff's ceiling. A truck must stream again within 10 s of telemetry serving again (issue 11,
#: AT-01): after an outage of a few seconds the next delay is uniform in [0, cap], so the cap must leave the
#: handshake room under 10 s (at 30 s a truck waited up to 30 s after a long outage). Full jitter still spreads a
#: fleet that lost the cloud together over the whole cap.
BACKOFF_CAP_SECONDS = 8.0

# The channel's reconnect backoff is capped so it never waits longer than ours.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): uniform in [0, min(cap, base * 2**attempt)].

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a fleet that lost the cloud at
    the same instant does not reconnect in lockstep.
    """
    return (rng or random).uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


class CpuSampler:
    """Edge CPU utilization from /proc/stat deltas (psutil is not on the truck), else the load average."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    def percent(self) -> float:
        """Utilization since the previous call (the first call: since construction), in [0, 100]."""
        now = self._read()
        if now is None or self._last is None:
            load = os.getloadavg()[0] / (os.cpu_count() or 1)
            return max(0.0, min(100.0, load * 100))
        (total0, idle0), (total1, idle1) = self._last, now
        self._last = now
        elapsed = total1 - total0
        return 0.0 if elapsed <= 0 else max(0.0, min(100.0, 100.0 * (1 - (idle1 - idle0) / elapsed)))


@dataclass
class ClientStats:
    """What the client did, for logs, the CLI and the tests."""

    sessions: int = 0
    failures: int = 0
    frames_sent: int = 0
    batches_sent: int = 0
    acked_through: int = 0
    heartbeats: int = 0
    rejected: Counter = field(default_factory=Counter)
    commands: int = 0
    shadowed: int = 0  # unsent frames dropped because a wiped spool reused sequences the server holds
    last_error: str = ""


class StreamClient:
    """Streams one vehicle's spool to the telemetry service over mTLS, for as long as it runs."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials],
                 spool: Spool, *, vehicle_id: str,
                 boot_id: str, on_command: CommandHandler | None = None, backoff_base: float = 0.5,
                 backoff_cap: float = BACKOFF_CAP_SECONDS, poll_interval: float = 1.0,
                 link: Callable[[], stream_pb2.LinkQuality] | None = None,
                 server_name: str | None = None, keepalive: Keepalive | None = None) -> None:
        self.target = target
        self.keepalive = keepalive or Keepalive()
        self.spool = spool
        self.vehicle_id = vehicle_id
        self.boot_id = boot_id
        self.stats = ClientStats()
        self.connected = asyncio.Event()
        self._credentials = credentials
        self._on_command = on_command or (lambda command: (stream_pb2.CommandAck.OUTCOME_ACCEPTED, ""))
        self._backoff = (backoff_base, backoff_cap)
        # A second process (the simulator in another process) may write the spool: poll it now and then.
        self._poll_interval = poll_interval
        self._link = link
        self._server_name = server_name
        self._new_frames = asyncio.Event()
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._session_task: asyncio.Task | None = None
        self._cpu = CpuSampler()
        self._rtt_ms = 0
        self._sent_at: dict[int, float] = {}

    # -- used by the truck's software -----------------------------------------------------------------------

    def notify(self) -> None:
        """Tells the sender that new frames are spooled (call from the event loop)."""
        self._new_frames.set()

    def cut_link(self, seconds: float) -> None:
        """Simulates a dead zone: drops the stream and stays offline for ``seconds`` (readings keep spooling)."""
        self._link_up.clear()
        if self._session_task:
            self._session_task.cancel()
        asyncio.get_running_loop().call_later(seconds, self._link_up.set)

    async def run(self) -> None:
        """Connects, streams and reconnects until cancelled."""
        attempt = 0
        while True:
            await self._link_up.wait()
            welcomed_before = self.stats.sessions
            self._session_task = asyncio.create_task(self._session())
            try:
                await self._session_task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise  # the client itself is being stopped
                self.stats.last_error = "link cut"
            except (grpc.aio.AioRpcError, ConnectionError, OSError, asyncio.InvalidStateError) as exc:
                # InvalidStateError: a write raced the end of the call (the link dropped under it)
                self.stats.failures += 1
                self.stats.last_error = (f"{exc.code().name}: {exc.details()}"
                                         if isinstance(exc, grpc.aio.AioRpcError) else repr(exc))
                _log.warning("telemetry stream ended: %s", self.stats.last_error)
            finally:
                self.connected.clear()
                self._session_task = None
            if self.stats.sessions > welcomed_before:
                attempt = 0  # the link worked: start the backoff over
            delay = full_jitter(attempt, base=self._backoff[0], cap=self._backoff[1])
            attempt += 1
            await asyncio.sleep(delay)

    # -- one session ----------------------------------------------------------------------------------------

    async def _session(self) -> None:
        options = [*_CHANNEL_OPTIONS, *self.keepalive.channel_options()]
        if self._server_name:
            options.append(("grpc.ssl_target_name_override", self._server_name))
        # A callable is asked at every session: a renewed certificate is presented by the next connection, while
        # the open one (its TLS session already authenticated) carries on undisturbed.
        credentials = self._credentials() if callable(self._credentials) else self._credentials
        async with grpc.aio.secure_channel(self.target, credentials, options=options) as channel:
            call = telemetry_service_pb2_grpc.TelemetryServiceStub(channel).StreamTelemetry()
            try:
                await self._stream(call)
            finally:
                call.cancel()

    async def _stream(self, call: grpc.aio.StreamStreamCall) -> None:
        spooled = await asyncio.to_thread(self.spool.stats)
        await call.write(stream_pb2.StreamTelemetryRequest(hello=stream_pb2.Hello(
            vehicle_id=self.vehicle_id, boot_id=self.boot_id, last_sequence=spooled.last_sequence,
            oldest_spooled_sequence=spooled.oldest_sequence, client_version=CLIENT_VERSION)))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
            raise ConnectionError("the server did not answer Hello with Welcome")
        welcome = first.welcome
        high_water = welcome.high_water_sequence
        deleted = await asyncio.to_thread(self.spool.mark_acked, high_water)
        if high_water > spooled.last_sequence and deleted:
            # The server holds sequences this spool never assigned: the spool was wiped or restored from an
            # old image, its counter restarted, and these frames reuse sequences the server already has.
            # The counter now jumps past the mark; the frames it shadowed cannot be delivered under them.
            self.stats.shadowed += deleted
            _log.error("spool behind the server (last %d < high-water %d): %d unsent frames shadowed",
                       spooled.last_sequence, high_water, deleted)
        self.stats.acked_through = max(self.stats.acked_through, high_water)
        self.stats.sessions += 1
        self.connected.set()
        _log.info("session %s: server holds through %d", welcome.session_id, high_water)
        write_lock = asyncio.Lock()  # grpc.aio allows one write at a time per call

        async def write(request: stream_pb2.StreamTelemetryRequest) -> None:
            async with write_lock:
                await call.write(request)

        interval = welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5.0
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_frames(write, high_water, max(1, welcome.max_batch_frames or 500)))
                group.create_task(self._send_heartbeats(write, interval))
                group.create_task(self._receive(call, write))
        except ExceptionGroup as failed:
            # The three tasks fail together when the stream breaks; the first failure is the one to report.
            raise _first_leaf(failed) from None

    async def _send_frames(self, write: Callable[..., Awaitable[None]], after: int, batch_size: int) -> None:
        sent_through = after
        while True:
            self._new_frames.clear()  # cleared before reading: a frame spooled meanwhile sets it again
            frames = await asyncio.to_thread(self.spool.unacked_after, sent_through, batch_size)
            if not frames:
                try:
                    await asyncio.wait_for(self._new_frames.wait(), self._poll_interval)
                except TimeoutError:
                    pass
                continue
            batch = stream_pb2.FrameBatch(frames=[frame_pb2.SignedFrame.FromString(f.frame) for f in frames])
            await write(stream_pb2.StreamTelemetryRequest(frames=batch))
            sent_through = frames[-1].sequence
            self._sent_at[sent_through] = time.monotonic()
            self.stats.frames_sent += len(frames)
            self.stats.batches_sent += 1

    async def _send_heartbeats(self, write: Callable[..., Awaitable[None]], interval: float) -> None:
        while True:
            spooled = await asyncio.to_thread(self.spool.stats)
            heartbeat = stream_pb2.Heartbeat(
                edge_cpu_utilization_percent=self._cpu.percent(), spool_depth=spooled.depth,
                dropped_frames=spooled.dropped, last_sequence=spooled.last_sequence,
                link=self._link() if self._link else stream_pb2.LinkQuality(rtt_ms=self._rtt_ms))
            heartbeat.device_time.GetCurrentTime()
            await write(stream_pb2.StreamTelemetryRequest(heartbeat=heartbeat))
            self.stats.heartbeats += 1
            await asyncio.sleep(interval)

    async def _receive(self, call: grpc.aio.StreamStreamCall, write: Callable[..., Awaitable[None]]) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise ConnectionError("the server ended the stream")
            kind = response.WhichOneof("message")
            if kind == "ack":
                through = response.ack.through_sequence
                await asyncio.to_thread(self.spool.mark_acked, through)
                self.stats.acked_through = max(self.stats.acked_through, through)
                self._measure_rtt(through)
            elif kind == "reject":
                reject = response.reject
                reason = stream_pb2.Reject.Reason.Name(reject.reason)
                await asyncio.to_thread(self.spool.reject, reject.sequence)
                self.stats.rejected[reason] += 1
                _log.error("frame %d rejected (%s): %s", reject.sequence, reason, reject.detail)
            elif kind == "command":
                ack = await self._answer(response.command)
                await write(stream_pb2.StreamTelemetryRequest(command_ack=ack))

    def _measure_rtt(self, through: int) -> None:
        for sequence in [s for s in self._sent_at if s <= through]:
            sent = self._sent_at.pop(sequence)
            if sequence == through:
                self._rtt_ms = int((time.monotonic() - sent) * 1000)

    async def _answer(self, command: stream_pb2.Command) -> stream_pb2.CommandAck:
        """Runs a command once; a repeated command (re-sent on a new stream) gets its previous outcome."""
        self.stats.commands += 1
        previous = await asyncio.to_thread(self.spool.command_outcome, command.command_id)
        if previous is not None:
            outcome, detail = previous
        elif command.HasField("expire_time") and command.expire_time.ToNanoseconds() < time.time_ns():
            outcome, detail = stream_pb2.CommandAck.OUTCOME_FAILED, "expired before it reached the truck"
        else:
            result = self._on_command(command)
            outcome, detail = (await result) if inspect.isawaitable(result) else result
            if command.HasField("assign_mission") and outcome == stream_pb2.CommandAck.OUTCOME_ACCEPTED:
                # Kept for the proof of delivery the truck builds at the end (load number, stops).
                await asyncio.to_thread(self.spool.remember_assignment, command.assign_mission)
            if command.HasField("cancel_assignment") and outcome == stream_pb2.CommandAck.OUTCOME_ACCEPTED:
                # No proof will be signed for a cancelled mission: its log and assignment are not kept.
                await asyncio.to_thread(self.spool.end_mission, command.cancel_assignment.mission_id)
        await asyncio.to_thread(self.spool.record_command, command.command_id, outcome, detail)
        ack = stream_pb2.CommandAck(command_id=command.command_id, outcome=outcome, detail=detail[:500])
        ack.device_time.GetCurrentTime()
        return ack
