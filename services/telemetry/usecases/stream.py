"""The stream engine: truck streams (StreamTelemetry) and single frames (IngestTelemetry), from verified frames
to durable acks, plus the delivery of queued commands to the streams of this process.

Per frame (the hot path): verify (domain/frames.py, on several threads for a replayed backlog), submit to the
store's group commit, acknowledge once durable (paced: one Ack per ``ack_interval_seconds`` at most for live
traffic), then hand the durable frames to mission tracking (never on the acknowledgement path).

Commands: workers.py runs the command deliverer (:meth:`Streams.deliver_loop`) and the doorbell listener; both
read this process's open streams from here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime import (
    Aborted,
    Credential,
    FailedPrecondition,
    HaulmeshError,
    InvalidArgument,
    ResourceExhausted,
    RevocationList,
    Unavailable,
)

from .. import metrics
from ..config import TelemetryConfig
from ..convert import REJECT_REASONS
from ..domain import FrameRejected, RejectReason, VehicleKey, Verified, key_from_spki, order_batch, verify_frame
from ..store import CommitResult, StoredFrame, TelemetryStore
from .tracking import MissionTracking

__all__ = ["FrameCredits", "Session", "Streams"]

_log = logging.getLogger("haulmesh.telemetry")

#: How often every open stream's command queue and session are looked at even without a doorbell.
COMMAND_SWEEP_SECONDS = 5.0
#: Batches of at least this many frames are verified on several threads (one per core).
_PARALLEL_VERIFY_FRAMES = 64
#: A batch this large is a replayed backlog: its Ack is not paced.
_ACK_AT_ONCE_FRAMES = 64
_VERIFY_THREADS = min(os.cpu_count() or 1, 8)
#: Streams whose queues one pipelined poll reads.
_POLL_CHUNK = 500
#: The outcomes a CommandAck may carry (the enum's values but OUTCOME_UNSPECIFIED); others are refused unstored.
_ACK_OUTCOMES = frozenset(v for v in stream_pb2.CommandAck.Outcome.values() if v)
_PASSED_DETAIL = ("sequence at or below the high-water mark and never stored (a later frame of the vehicle was "
                  "stored first); it can no longer be stored")
_KEY_LIMIT = 64  # certificates remembered per vehicle; more is an attack or a bug, not rotations


class FrameCredits:
    """A bound on frames in flight: :meth:`take` waits, first come first served, until ``n`` more fit under
    ``limit``; :meth:`give` returns them. A weighted semaphore (asyncio has none): a 500-frame replay batch
    takes 500 at once, and waits its turn rather than being starved by single live frames behind it.

    ``parent`` (the process's credits) is taken after this one's and given back with it, so a frame counts
    against its stream and its process together. ``on_change`` is told the new count (the metrics gauge).
    """

    def __init__(self, limit: int, parent: FrameCredits | None = None,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.inflight = 0
        #: The most ever in flight at once (the tests assert it never passed ``limit``).
        self.peak = 0
        self._parent = parent
        self._on_change = on_change
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def full(self) -> bool:
        """No frame fits now (here, or in the parent): a reader should not read its stream."""
        return self.inflight >= self.limit or (self._parent is not None and self._parent.full())

    def fits(self, n: int) -> bool:
        """Whether :meth:`take` of ``n`` would return at once."""
        n = min(n, self.limit)
        return (not self._waiters and self.inflight + n <= self.limit
                and (self._parent is None or self._parent.fits(n)))

    async def wait_room(self) -> None:
        """Return once at least one frame fits here and in the parent (the reader's check before a read)."""
        while self.full():
            waiter = self if self.inflight >= self.limit else self._parent
            assert waiter is not None
            await waiter._wait(1, take=False)

    async def take(self, n: int) -> None:
        """Count ``n`` more frames in flight, waiting until they fit (here, then in the parent)."""
        n = min(n, self.limit)  # never wait for the impossible; config ensures a batch fits a stream
        await self._wait(n, take=True)
        if self._parent is not None:
            try:
                await self._parent.take(n)
            except BaseException:
                self._release(n)
                raise

    def give(self, n: int) -> None:
        """Return ``n`` frames' credits (here and in the parent)."""
        n = min(n, self.limit)
        self._release(n)
        if self._parent is not None:
            self._parent.give(n)

    async def _wait(self, n: int, *, take: bool) -> None:
        if not self._waiters and self.inflight + n <= self.limit:
            if take:
                self._add(n)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n if take else -n, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif take and future.done() and not future.cancelled():
                self._release(n)  # granted while being cancelled: hand it back
            self._wake()
            raise

    def _add(self, n: int) -> None:
        self.inflight += n
        self.peak = max(self.peak, self.inflight)
        if self._on_change is not None:
            self._on_change(self.inflight)

    def _release(self, n: int) -> None:
        self.inflight -= n
        if self._on_change is not None:
            self._on_change(self.inflight)
        self._wake()

    def _wake(self) -> None:
        # In order: a waiter that does not fit yet blocks those behind it (no starvation of big batches).
        while self._waiters:
            n, future = self._waiters[0]
            need = abs(n)
            if future.done():
                self._waiters.popleft()
                continue
            if self.inflight + need > self.limit:
                return
            self._waiters.popleft()
            if n > 0:
                self._add(n)
            future.set_result(None)


class Session:
    """One truck stream: the outbound queue the handler drains, and its tasks."""

    def __init__(self, vehicle_id: str, credits: FrameCredits | None = None) -> None:
        self.vehicle_id = vehicle_id
        #: Frames of this stream in flight (read, not yet through their commit), within the process's.
        self.credits = credits or FrameCredits(1 << 30)
        self.session_id = uuid.uuid4().hex
        #: Responses to send, or a HaulmeshError that ends the stream, or None for a clean end.
        self.outbound: asyncio.Queue[Any] = asyncio.Queue()
        #: Commits in flight, in batch order, with the sequence each acknowledges through and its frames.
        self.pending_acks: deque[tuple[asyncio.Future[Any], int, list[Verified]]] = deque()
        #: The truck closed its side: the stream ends once the commits in flight are acknowledged.
        self.reading_done = False
        #: Tasks of the stream (its reader), cancelled when it ends.
        self.tasks: list[asyncio.Task[None]] = []
        #: Set when the stream has ended; loops blocked on the store check it after every wait.
        self.closed = asyncio.Event()
        #: Set by the handler each time it takes a response from ``outbound`` (the reader waits on it when full).
        self.drained = asyncio.Event()
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
        #: The certificate the truck opened the stream with (the stream ends at once if it is revoked).
        self.credential = Credential("", "", float("inf"))
        #: The high-water this stream's submitted batches reach once they all land: each batch is committed
        #: only on top of the previous ones (TelemetryStore.submit ``after``), never over a failed one.
        self.expected_high_water = 0

    def end(self, error: HaulmeshError | None) -> None:
        self.outbound.put_nowait(error)



class Streams:
    """The truck streams of this process and what they do (see the module docstring)."""

    def __init__(self, store: TelemetryStore, config: TelemetryConfig, tracking: MissionTracking | None = None) -> None:
        self._store = store
        self._config = config
        #: Told of durable frames, heartbeats, connections and command acks (derived events, liveness).
        self._tracking = tracking
        #: Open streams of this process by vehicle (a newer one ends the older at once; across replicas the
        #: doorbell of the newer one's claim tells the older to end).
        self.sessions: dict[str, Session] = {}
        #: Vehicles whose command queues the deliverer reads next, and its wake-up.
        self._due: set[str] = set()
        self.wake = asyncio.Event()
        self._verifiers = ThreadPoolExecutor(_VERIFY_THREADS, "verify") if _VERIFY_THREADS > 1 else None
        #: Frames in flight in this process (every stream and IngestTelemetry): the memory bound.
        self.credits = FrameCredits(config.max_inflight_frames_per_process, on_change=metrics.record_inflight)

    # ---- a stream's life ----------------------------------------------------------------------------

    def open(self, vehicle_id: str) -> Session:
        """Register a new stream of the vehicle; an older one of this process ends at once."""
        session = Session(vehicle_id, FrameCredits(self._config.max_inflight_frames_per_stream, self.credits))
        older = self.sessions.get(vehicle_id)
        self.sessions[vehicle_id] = session
        if older is not None:
            older.end(Aborted("a newer stream of this vehicle replaced this one", reason="STREAM_REPLACED"))
        metrics.stream_opened()
        return session

    def end_revoked(self, revocations: RevocationList) -> None:
        """End every open stream whose certificate was just revoked (the runtime's deny-list tells), at once: an
        idle truck sends nothing for the per-message check to see."""
        for session in list(self.sessions.values()):
            if revocations.is_revoked(session.credential):
                _log.warning("vehicle %s session %s: certificate %s revoked; ending the stream", session.vehicle_id,
                             session.session_id, session.credential.serial)
                session.end(RevocationList.refusal(session.credential))

    async def claim(self, session: Session, boot_id: str, vehicle_last_sequence: int) -> int:
        """Make the stream the vehicle's current one (across replicas); returns the server's high-water mark."""
        vehicle_id = session.vehicle_id
        await self._store.claim_session(vehicle_id, session.session_id)
        session.claimed = True
        if self._tracking is not None:
            self._tracking.connected(vehicle_id, vehicle_last_sequence)
        high_water = await self._store.high_water(vehicle_id)
        session.expected_high_water = high_water
        _log.info("vehicle %s session %s opened (boot %s, truck last %d, server high-water %d)", vehicle_id,
                  session.session_id, boot_id[:40], vehicle_last_sequence, high_water)
        return high_water

    def serve(self, session: Session, requests: AsyncIterator[stream_pb2.StreamTelemetryRequest],
              keys: dict[str, VehicleKey]) -> None:
        """Read the truck's messages (after Welcome was sent); queued commands follow right away."""
        session.tasks.append(asyncio.create_task(self._read(session, requests, keys)))
        self.commands_due(session.vehicle_id)  # what was queued while the truck was away goes right after Welcome

    async def close(self, session: Session) -> None:
        """The stream ended (whatever the cause): stop its tasks and unregister it."""
        vehicle_id = session.vehicle_id
        metrics.stream_closed()
        session.closed.set()
        if session.ack_timer is not None:
            session.ack_timer.cancel()
        for task in session.tasks:
            task.cancel()
        # A task blocked in a Redis call may finish that call before it sees the cancellation (the
        # client shields its reads); it stops at its next check of ``closed``, so do not wait for it.
        if session.tasks:
            await asyncio.wait(session.tasks, timeout=1)
        if self.sessions.get(vehicle_id) is session:
            del self.sessions[vehicle_id]
        if session.moved_away and self._tracking is not None:
            self._tracking.moved_away(vehicle_id)
        _log.info("vehicle %s session %s closed", vehicle_id, session.session_id)

    async def keys(self, vehicle_id: str, current: VehicleKey) -> dict[str, VehicleKey]:
        """The current certificate's key plus every earlier one of the vehicle (frames spooled before a
        rotation keep their key id)."""
        stored = await self._store.remember_key(vehicle_id, current.key_id, current.spki_der,
                                               current.certificate_pem)
        keys = {current.key_id: current}
        for key_id, spki in list(stored.items())[:_KEY_LIMIT]:
            try:
                keys.setdefault(key_id, key_from_spki(spki))
            except ValueError:
                continue
        return keys

    async def _read(self, session: Session, requests: AsyncIterator[stream_pb2.StreamTelemetryRequest],
                    keys: dict[str, VehicleKey]) -> None:
        iterator = aiter(requests)
        try:
            while True:
                # Flow control: nothing more is read while this stream (or the process) is at its bound, so the
                # truck's next messages wait in HTTP/2 flow control and then in its spool, not in our memory.
                await self._admit(session)
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    break
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

    async def _admit(self, session: Session) -> None:
        """Return when the stream may be read: room for a frame in the stream and the process, fewer than
        ``max_outbound_messages_per_stream`` responses waiting for gRPC (a truck that reads none of its acks
        stops being read), and mission tracking's backlog of stored frames below its bound."""
        credits, outbound, tracking = session.credits, session.outbound, self._tracking
        bound = self._config.max_outbound_messages_per_stream
        tracking_full = tracking.full if tracking is not None else lambda: False
        if not credits.full() and outbound.qsize() < bound and not tracking_full():
            return
        metrics.stream_paused(True)
        try:
            while credits.full() or outbound.qsize() >= bound or tracking_full():
                if outbound.qsize() >= bound:
                    session.drained.clear()
                    await session.drained.wait()
                elif credits.full():
                    await credits.wait_room()
                else:  # stored frames wait for their derived events: the same memory, counted there
                    assert tracking is not None
                    await tracking.wait_room()
        finally:
            metrics.stream_paused(False)

    async def _command_ack(self, vehicle_id: str, ack: stream_pb2.CommandAck) -> None:
        # Bounded writes: a truck's acks are stored only for commands it was sent, small, once per outcome.
        # A refused ack is counted and dropped (the stream goes on: a truck's bug must not cut its telemetry).
        size = ack.ByteSize()
        if size > self._config.max_command_ack_bytes:
            metrics.REFUSED_COMMAND_ACKS.labels("too_large").inc()
            _log.warning("vehicle %s: CommandAck of %d bytes refused (at most %d)", vehicle_id, size,
                         self._config.max_command_ack_bytes)
            return
        if ack.outcome not in _ACK_OUTCOMES:  # proto3 enums are open: any number parses, only 1..4 mean anything
            metrics.REFUSED_COMMAND_ACKS.labels("malformed").inc()
            _log.warning("vehicle %s: CommandAck for command %r with outcome %d refused (known: %s)", vehicle_id,
                         ack.command_id[:80], ack.outcome, sorted(_ACK_OUTCOMES))
            return
        state = await self._store.command_ack_state(vehicle_id, ack)
        if state == "unknown":
            metrics.REFUSED_COMMAND_ACKS.labels("unknown").inc()
            _log.warning("vehicle %s: CommandAck for command %r never sent to it, refused", vehicle_id,
                         ack.command_id[:80])
            return
        # Announced before the command leaves the queue: if the announcement fails, the command is sent
        # again on the next connection and the truck's new answer is announced then.
        if state == "new" and self._tracking is not None:
            carrier_id, mission = await self._store.command_context(vehicle_id, ack.command_id)
            await self._tracking.command_acknowledged(vehicle_id, ack, carrier_id, mission)
        await self._store.ack_command(vehicle_id, ack)

    async def _accept_batch(self, session: Session, batch: stream_pb2.FrameBatch,
                            keys: dict[str, VehicleKey]) -> bool:
        frames = batch.frames
        if len(frames) > self._config.max_batch_frames:
            session.end(InvalidArgument(f"a batch holds at most {self._config.max_batch_frames} frames, got "
                                        f"{len(frames)}", reason="BATCH_TOO_LARGE"))
            return False
        if not frames:
            return True
        held = len(frames)
        # Given back when the commit completes (or below, for rejects). Waiting here is not reading either.
        if session.credits.fits(held):
            await session.credits.take(held)
        else:
            metrics.stream_paused(True)
            try:
                await session.credits.take(held)
            finally:
                metrics.stream_paused(False)
        # From here until the commit owns them, the credits are given back on any way out: verification
        # awaits threads, and a stream cancelled (or failing) there would otherwise hold them forever; a
        # hundred reconnects with full batches would fill the process's bound and stall every stream.
        try:
            good: list[Verified] = []
            rejects: Counter[str] = Counter()
            for outcome in await self._verify_batch(session.vehicle_id, frames, keys):
                if isinstance(outcome, Verified):
                    good.append(outcome)
                    continue
                rejects[outcome.reason.value] += 1
                session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(reject=stream_pb2.Reject(
                    sequence=outcome.sequence, reason=REJECT_REASONS[outcome.reason], detail=outcome.detail)))
            if len(good) < held:  # rejected frames are done with (their Rejects are in ``outbound``)
                session.credits.give(held - len(good))
                held = len(good)
            # The commit runs while the next batch is read and verified; acks follow in batch order.
            after = session.expected_high_water
            if good:
                session.expected_high_water = max(after, max(f.sequence for f in good))
            commit = self._store.submit(session.vehicle_id, good, received=len(frames), rejects=rejects,
                                        after=after)
        except BaseException:
            session.credits.give(held)
            raise
        session.pending_acks.append((commit, max(f.sequence for f in frames), good))
        backlog = len(frames) >= _ACK_AT_ONCE_FRAMES
        commit.add_done_callback(lambda done: self._commit_done(session, done, backlog=backlog, held=held))
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

    def _commit_done(self, session: Session, commit: asyncio.Future[Any], *, backlog: bool, held: int = 0) -> None:
        """Acknowledge now, or at the stream's next Ack time if one went out less than the interval ago.

        The commit's frames leave the in-flight count here (stored or failed, the store holds them no more),
        which lets the stream, or another waiting on the process's bound, read again.

        Not paced: a failed commit (it ends the stream; its error is retrieved here, once), and a batch of a
        replayed backlog (one Ack per hundreds of frames already; the truck frees its spool sooner).
        """
        if held:
            session.credits.give(held)
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

    def _paced_flush(self, session: Session) -> None:
        session.ack_timer = None
        self._flush_acks(session)

    def _flush_acks(self, session: Session) -> None:
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
            passed = set(commit.result().passed)
            for sequence in sorted(passed):  # refused before the Ack that covers it: never taken for stored
                session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(reject=stream_pb2.Reject(
                    sequence=sequence, reason=REJECT_REASONS[RejectReason.SEQUENCE_PASSED],
                    detail=_PASSED_DETAIL)))
            durable.extend(f for f in frames if f.sequence not in passed)
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

    # ---- commands (the loops that call these are in workers.py) -------------------------------------

    def commands_due(self, *vehicle_ids: str) -> None:
        """Ask the command deliverer to look at these vehicles' queues now."""
        self._due.update(vehicle_ids)
        self.wake.set()

    def take_due(self, *, everyone: bool = False) -> list[Session]:
        """The claimed streams whose queues are due (``everyone``: every open stream, the sweep), and clear the
        wake-up. A stream still claiming its session is left out: it asks for its queue once claimed."""
        self.wake.clear()
        due, self._due = self._due, set()
        if everyone:
            due.update(self.sessions)
        return [stream for v in due if (stream := self.sessions.get(v)) is not None and stream.claimed]

    async def deliver_commands(self, sessions: list[Session]) -> None:
        """Send the queued commands of these streams, in chunks of one pipelined poll each; a chunk whose
        queues could not be read is due again (frames do not depend on it)."""
        for start in range(0, len(sessions), _POLL_CHUNK):
            chunk = sessions[start:start + _POLL_CHUNK]
            try:
                await self._deliver_chunk(chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round retries
                _log.warning("command queues unreadable: %s", exc)
                self._due.update(s.vehicle_id for s in chunk)

    async def _deliver_chunk(self, sessions: list[Session]) -> None:
        results = await self._store.poll_commands_of([(s.vehicle_id, s.command_cursor) for s in sessions])
        for session, (commands, current) in zip(sessions, results, strict=True):
            if session.closed.is_set():
                continue
            if current != session.session_id:
                # Replaced by a stream on another replica (one in this process replaced it directly).
                session.moved_away = self.sessions.get(session.vehicle_id) is session
                session.end(Aborted("a newer stream of this vehicle replaced this one", reason="STREAM_REPLACED"))
                continue
            for entry_id, command in commands:
                session.outbound.put_nowait(stream_pb2.StreamTelemetryResponse(command=command))
                session.command_cursor = entry_id

    async def shutdown(self) -> None:
        """Stop the verifier threads (at shutdown, after the streams were told to end)."""
        if self._verifiers is not None:
            self._verifiers.shutdown(wait=False, cancel_futures=True)

    # ---- IngestTelemetry ----------------------------------------------------------------------------

    async def ingest(self, vehicle_id: str, sequence: int, payload_bytes: bytes, signature: bytes, key_id: str,
                     current: VehicleKey) -> tuple[CommitResult, StoredFrame | None]:
        """Verify and store one frame; returns the commit and, for a duplicate, the frame stored first.
        A refused frame is counted and raises InvalidArgument with its reason."""
        if self.credits.full() or (self._tracking is not None and self._tracking.full()):
            # Not queued behind the streams: the truck (or the gateway, as 429 with Retry-After) tries again.
            raise ResourceExhausted("telemetry is at its bound of frames in flight; retry shortly",
                                    reason="TELEMETRY_BUSY", metadata={"retry_after_seconds": "1"})
        await self.credits.take(1)
        try:
            return await self._ingest(vehicle_id, sequence, payload_bytes, signature, key_id, current)
        finally:
            self.credits.give(1)

    async def _ingest(self, vehicle_id: str, sequence: int, payload_bytes: bytes, signature: bytes, key_id: str,
                      current: VehicleKey) -> tuple[CommitResult, StoredFrame | None]:
        keys = await self.keys(vehicle_id, current)
        # boot_id is optional on this path (the seed's shape has none), so verification must not demand it.
        outcome = verify_frame(sequence, payload_bytes, signature, key_id or current.key_id,
                               vehicle_id=vehicle_id, keys=keys, now_seconds=time.time(), config=self._config,
                               require_boot_id=False)
        if isinstance(outcome, FrameRejected):
            await self._store.commit(vehicle_id, [], received=1, rejects=Counter({outcome.reason.value: 1}))
            raise InvalidArgument(outcome.detail, reason=outcome.reason.value, metadata={
                "sequence": str(sequence)})
        result = await self._store.commit(vehicle_id, [outcome], received=1)
        if result.passed:
            raise FailedPrecondition(_PASSED_DETAIL, reason="SEQUENCE_PASSED", metadata={"sequence": str(sequence)})
        if self._tracking is not None:
            self._tracking.frames_stored(vehicle_id, [outcome])
        first = None if result.stored else await self._store.frame(vehicle_id, sequence)
        return result, first
