"""Reads of stored frames: a page of a vehicle's or a mission's frames, and live watches (replay, then follow).

A mission's scope (its vehicle and time span) is resolved by the mission service, which answers NOT_FOUND for
another carrier's mission, and remembered for a moment; where a mission read starts scanning is the sequence
floor of its span (:meth:`Reads.floor`).

Watches are capped (:class:`WatchSlots`): each holds a blocking XREAD on the watches' own store pool, so the
cap per process keeps them within that pool, and the cap per tenant keeps one carrier (or one operator tool)
from taking every slot. One beyond a cap is refused RESOURCE_EXHAUSTED with a retry hint.

A fleet watch (:meth:`Reads.follow_fleet`) follows every vehicle running one of a carrier's missions with one
blocking XREAD over all their streams (a single watch slot, a single connection of the pool). Its vehicles come
from the carrier's fleet index in the store (kept from the mission service's events, see store.py), looked up
again every :data:`FLEET_REFRESH_SECONDS` (the lookup shared by the carrier's watches in this process), at most
:data:`MAX_FLEET_VEHICLES` per watch. Each vehicle's frames are those of its mission's scope, as a mission watch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
from google.protobuf.message import DecodeError

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2
from services.runtime import FailedPrecondition, NotFound, ResourceExhausted, Unavailable, carrier_metadata

from ..config import TelemetryConfig
from ..convert import telemetry_frame
from ..domain import FrameScope
from ..store import TelemetryStore
from .archive import TieredFrames

__all__ = ["FLEET_REFRESH_SECONDS", "MAX_FLEET_VEHICLES", "Reads", "WatchSlots"]

_log = logging.getLogger("haulmesh.telemetry")

#: How long a resolved mission is reused (list pages and watch polls in a row ask for the same one).
_MISSION_CACHE_SECONDS = 2.0
_MISSION_CACHE_SIZE = 4096
#: How often a mission watch asks the mission service whether the mission has ended.
_MISSION_POLL_SECONDS = 3.0
#: Vehicles one fleet watch follows at most (the carrier's missions changed last): one XREAD names them all.
MAX_FLEET_VEHICLES = 500
#: How often a fleet watch looks its vehicles up again (missions dispatched and ended meanwhile).
FLEET_REFRESH_SECONDS = 3.0
#: A vehicle that joins a running fleet watch is read from the start of its mission, at most this many frames back.
FLEET_CATCH_UP_FRAMES = 300
#: After a read that brought frames, a fleet watch waits this long before the next: frames of hundreds of trucks
#: come in one XREAD every 100 ms instead of one (naming every stream) per frame.
FLEET_COALESCE_SECONDS = 0.1


class WatchSlots:
    """Concurrent watches of this process, at most ``per_process`` in all and ``per_tenant`` per tenant."""

    def __init__(self, per_process: int, per_tenant: int, retry_after_seconds: float) -> None:
        self.per_process = per_process
        self.per_tenant = per_tenant
        self.retry_after_seconds = retry_after_seconds
        self._open: Counter[str] = Counter()
        self.total = 0

    def open(self, tenant: str) -> int:
        """Watches ``tenant`` holds now."""
        return self._open[tenant]

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """A slot for one watch of ``tenant`` while the block runs; RESOURCE_EXHAUSTED (with RetryInfo) beyond
        a cap (the tenant's checked first: its hint is the one the caller can act on). Single-threaded asyncio:
        the check and the count need no lock."""
        if self._open[tenant] >= self.per_tenant:
            raise ResourceExhausted(f"at most {self.per_tenant} concurrent watches per tenant; close one or retry "
                                    "later", reason="TOO_MANY_WATCHES", retry_after_seconds=self.retry_after_seconds,
                                    metadata={"limit": str(self.per_tenant), "scope": "tenant"})
        if self.total >= self.per_process:
            raise ResourceExhausted(f"this telemetry process serves at most {self.per_process} watches; retry later",
                                    reason="TOO_MANY_WATCHES", retry_after_seconds=self.retry_after_seconds,
                                    metadata={"limit": str(self.per_process), "scope": "process"})
        self._open[tenant] += 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            self._open[tenant] -= 1
            if not self._open[tenant]:
                del self._open[tenant]


class Reads:
    """Frame reads. ``mission`` gives a MissionService stub (per call: the channel follows certificate
    rotation); without it, mission-scoped reads answer FAILED_PRECONDITION MISSION_SCOPE_UNSUPPORTED."""

    def __init__(self, store: TelemetryStore, config: TelemetryConfig,
                 mission: Callable[[], mission_service_pb2_grpc.MissionServiceStub] | None = None,
                 tiered: TieredFrames | None = None) -> None:
        self._store = store
        #: Pages and floors read across the archive and the hot stream (by sequence, one token).
        self._tiered = tiered or TieredFrames(store, None)
        self._config = config
        self._mission_stub = mission
        #: Resolved missions by (carrier, mission id), with when they were resolved (monotonic seconds).
        self._missions: dict[tuple[str, str], tuple[float, FrameScope]] = {}
        #: Sequence floors of mission spans by (vehicle, span start): valid forever once computed.
        self._floors: dict[tuple[str, int], int] = {}
        #: Fleets by carrier, with when they were looked up (monotonic seconds): shared by its fleet watches.
        self._fleets: dict[str, tuple[float, dict[str, FrameScope]]] = {}
        self._fleet_indexed = False
        #: The caps on concurrent watches (see the module docstring).
        self.watches = WatchSlots(config.max_watches_per_process, config.max_watches_per_tenant,
                                  config.watch_retry_after_seconds)

    @property
    def _skew_ms(self) -> int:
        return int(self._config.clock_skew_seconds * 1000)

    async def list_frames(self, scope: FrameScope, request: telemetry_service_pb2.ListTelemetryFramesRequest,
                          page_after: str, size: int) -> tuple[list[frame_pb2.TelemetryFrame], int, bool]:
        """A page of the scope's frames after the page token's sequence (``page_after``, "" on the first page)
        that pass the request's filters, archived and hot alike: ``(frames, cursor, exhausted)``, the cursor the
        last sequence read."""
        after = max(int(page_after or 0), request.min_sequence - 1 if request.min_sequence else 0)
        if not page_after and scope.start_ms is not None:
            after = max(after, await self.floor(scope))
        start_ms = request.start_time.ToMilliseconds() if request.HasField("start_time") else None
        end_ms = request.end_time.ToMilliseconds() if request.HasField("end_time") else None
        kinds = set(request.kinds)
        out: list[frame_pb2.TelemetryFrame] = []
        cursor, scanned, exhausted = after, 0, False
        # Filters on device time and kind are applied while scanning by sequence; the scan per page is
        # bounded so a sparse filter cannot make one call read a whole stream (the token resumes it).
        while len(out) < size and scanned < 10 * size and not exhausted:
            chunk = await self._tiered.frames(scope.vehicle_id, after=cursor, through=request.max_sequence,
                                             count=size - len(out))
            if not chunk:
                exhausted = True
                break
            for stored in chunk:
                scanned += 1
                frame = telemetry_frame(scope, stored)
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
        if not exhausted and len(out) == size:
            following = await self._tiered.frames(scope.vehicle_id, after=cursor, through=request.max_sequence,
                                                 count=1)
            exhausted = not following or scope.beyond(telemetry_frame(scope, following[0]).payload, self._skew_ms)
        return out, cursor, exhausted

    async def certificates(self, vehicle_id: str) -> list[tuple[str, bytes, int]]:
        """``(key id, certificate PEM, first seen ms)`` of the certificates the vehicle authenticated with."""
        return await self._store.certificates(vehicle_id)

    async def watch_cursor(self, scope: FrameScope, after_sequence: int) -> int:
        """Where a watch starts: after the requested sequence (never below a mission's floor: replay), else at
        the current high-water mark (live only)."""
        if not after_sequence:
            return await self._store.high_water(scope.vehicle_id)
        if scope.start_ms is not None:
            return max(after_sequence, await self.floor(scope))
        return after_sequence

    async def mission_ended(self, carrier_id: str, name: str, mission_id: str) -> bool:
        """Whether a watched mission has ended; a blip of the mission service must not end the carrier's watch."""
        try:
            return (await self.mission_scope(carrier_id, name, mission_id)).ended
        except Unavailable as exc:
            _log.warning("watch of %s: %s; asking again later", name, exc.message)
            return False

    async def follow(self, scope: FrameScope, cursor: int, kinds: set[int], done: Callable[[], bool],
                     ended: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[frame_pb2.TelemetryFrame]:
        """The scope's frames after ``cursor`` as they are stored, until ``done()``; XREAD from an id returns
        every later entry, so replay and live join without gap or duplicate. With ``ended``, asked every few
        seconds: once it says so, what is stored by then is sent and the stream ends."""
        # Replay of what was archived (and maybe trimmed) first; the hot stream's XREAD below cannot see it.
        while not done():
            replay = await self._tiered.frames(scope.vehicle_id, after=cursor, count=500)
            archived = [item for item in replay if item.tier == "archive"]
            for item in archived:
                cursor = item.sequence
                frame = telemetry_frame(scope, item)
                if scope.holds(frame.payload) and not (kinds and frame.payload.kind not in kinds):
                    yield frame
            if len(archived) < len(replay) or not archived:
                break
        loop = asyncio.get_running_loop()
        next_check, final = loop.time(), False
        while not done():
            if ended is not None and not final and loop.time() >= next_check:
                final = await ended()
                next_check = loop.time() + _MISSION_POLL_SECONDS
            # After the end the reads do not block: they drain what was stored by then.
            stored = await (self._tiered.frames(scope.vehicle_id, after=cursor, count=500) if final else
                            self._store.wait_frames(scope.vehicle_id, cursor, block_ms=2000))
            if not final and stored and stored[0].sequence > cursor + 1:
                # The hot stream skips sequences after the cursor: gaps the truck never filled, or frames archived
                # and trimmed just ahead of the cursor (between the replay above and this read). The tiered reader
                # tells them apart, so a trimmed stretch is read from its parts, never skipped.
                stored = await self._tiered.frames(scope.vehicle_id, after=cursor, count=500)
            for item in stored:
                cursor = item.sequence
                frame = telemetry_frame(scope, item)
                if scope.holds(frame.payload) and not (kinds and frame.payload.kind not in kinds):
                    yield frame
            if final and not stored:
                return

    async def fleet(self, carrier_id: str) -> dict[str, FrameScope]:
        """Vehicle -> its mission's scope, for the vehicles running one of the carrier's missions (at most
        :data:`MAX_FLEET_VEHICLES`); looked up at most once per :data:`FLEET_REFRESH_SECONDS` per carrier."""
        now = time.monotonic()
        cached = self._fleets.get(carrier_id)
        if cached is not None and now - cached[0] < FLEET_REFRESH_SECONDS * 0.9:
            return cached[1]
        if not self._fleet_indexed:  # missions recorded before the fleet index existed (once per store)
            indexed = await self._store.index_fleets_once()
            if indexed:
                _log.info("fleet index built: %d vehicles on missions", indexed)
            self._fleet_indexed = True
        scopes = {}
        for vehicle_id, raw in await self._store.fleet(carrier_id, MAX_FLEET_VEHICLES):
            try:
                scope = FrameScope.of_mission(mission_pb2.Mission.FromString(raw))
            except DecodeError:
                _log.warning("fleet of %s: the mission of %s is unreadable; skipped", carrier_id, vehicle_id)
                continue
            if scope.vehicle_id == vehicle_id and not scope.ended:
                scopes[vehicle_id] = scope
        if len(self._fleets) >= _MISSION_CACHE_SIZE:
            self._fleets.pop(next(iter(self._fleets)))
        self._fleets[carrier_id] = (now, scopes)
        return scopes

    async def follow_fleet(self, carrier_id: str, kinds: set[int],
                           done: Callable[[], bool]) -> AsyncIterator[frame_pb2.TelemetryFrame]:
        """Frames of the carrier's fleet as they are stored, until ``done()`` (see the module docstring): live
        from the vehicles' high-water marks at the start; a vehicle that joins later from its mission's start
        (its floor), at most :data:`FLEET_CATCH_UP_FRAMES` back, so nothing it recorded before the lookup found it
        is missed."""
        loop = asyncio.get_running_loop()
        scopes: dict[str, FrameScope] = {}
        cursors: dict[str, int] = {}
        started, next_refresh = False, loop.time()
        while not done():
            if loop.time() >= next_refresh:
                current = await self.fleet(carrier_id)
                for vehicle_id in cursors.keys() - current.keys():
                    del cursors[vehicle_id], scopes[vehicle_id]
                for vehicle_id, scope in current.items():
                    if vehicle_id not in cursors:
                        cursors[vehicle_id] = await self._fleet_cursor(scope, live=not started)
                    scopes[vehicle_id] = scope
                started, next_refresh = True, loop.time() + FLEET_REFRESH_SECONDS
            block_ms = max(1, int((next_refresh - loop.time()) * 1000))
            if not cursors:
                await asyncio.sleep(min(block_ms / 1000, 1.0))
                continue
            found = await self._store.wait_fleet_frames(cursors, block_ms=min(block_ms, 2000))
            for vehicle_id, stored in found:
                scope = scopes[vehicle_id]
                for item in stored:
                    cursors[vehicle_id] = item.sequence
                    frame = telemetry_frame(scope, item)
                    if scope.holds(frame.payload) and not (kinds and frame.payload.kind not in kinds):
                        yield frame
            if found:
                await asyncio.sleep(FLEET_COALESCE_SECONDS)

    async def _fleet_cursor(self, scope: FrameScope, *, live: bool) -> int:
        high_water = await self._store.high_water(scope.vehicle_id)
        if live or scope.start_ms is None:
            return high_water
        return max(await self.floor(scope), high_water - FLEET_CATCH_UP_FRAMES, 0)

    async def mission_scope(self, carrier_id: str, name: str, mission_id: str) -> FrameScope:
        """The vehicle and time span of mission ``name`` (id ``mission_id``) of the carrier, resolved by the
        mission service (which answers NOT_FOUND for another carrier's mission); remembered for a moment."""
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
        scope = FrameScope.of_mission(mission)
        if len(self._missions) >= _MISSION_CACHE_SIZE:
            self._missions.pop(next(iter(self._missions)))
        self._missions[key] = (now, scope)
        return scope

    async def floor(self, scope: FrameScope) -> int:
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
            probe = await self._tiered.frames(scope.vehicle_id, after=mid - 1, count=1)
            if probe and probe[0].receive_ms < threshold:
                lo = probe[0].sequence
            else:
                hi = mid - 1
        if len(self._floors) >= _MISSION_CACHE_SIZE:
            self._floors.pop(next(iter(self._floors)))
        self._floors[key] = lo
        return lo
