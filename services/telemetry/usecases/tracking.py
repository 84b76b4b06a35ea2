"""Following missions from their trucks' frames: the derived events, published through the outbox.

Frames reach :class:`MissionTracking` after they are durable (never on the acknowledgement path), and wait in
its queue until its one worker derives them, in rounds: a round takes everything queued, reads the missions of the
vehicles whose cached one is stale in one pipelined round trip, then derives each commit's frames in order. The
queue is bounded (``max_backlog_frames``): the streams stop reading while it is full (:meth:`wait_room`), so a
worker slower than the trucks (a slow store, a CPU-starved process) pauses ingest instead of holding every
frame in memory (docs/capacity.md, "Memory bound per telemetry process"). For a
vehicle on a mission it keeps a :class:`~..domain.VehicleTracker` and publishes what it derives — geofence
enter / exit / dwell, ETA updates, route deviations, sensor faults — plus one event per HEALTH, ALARM and
FAULT frame, to the mission's carrier's event stream (webhooks deliver the public ones to the TMS; the
telemetry service's own consumer, :mod:`.missions`, turns the internal ones into mission transitions).

Which mission a vehicle is on comes from the mission service's ``dispatched`` and ``state_changed`` events
(:meth:`MissionTracking.on_mission_event`), kept per vehicle in the store and cached here for
``_MISSION_CACHE_SECONDS`` (replicas that did not consume the event learn of it within that time).

Liveness: every frame, heartbeat and Hello is a sign of life; a periodic sweep reports a vehicle silent for
the liveness timeout as lost, once per outage across replicas (a marker in the store taken with SET NX), and
whoever takes the marker back — this process when frames resume, or any replica on the truck's next Hello
— reports it restored, exactly once. The sweep covers the vehicles that streamed to this process and, from
the store's heard index, those that streamed to a replica that is gone.

Fleet state: with a :class:`~.fleet.FleetReporter`, every frame, heartbeat and Hello also updates the
vehicle's entry in memory (last position, last heard), every derived ETA its mission stop's, and every vehicle
the sweep finds silent, on a mission or idle, is marked offline; the reporter sends the roster batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from haulmesh.events.v1 import event_pb2
from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime import new_event

from .. import metrics
from ..convert import frame_from_payload, mission_context_from_pb, to_event_payload
from ..domain import (
    ConnectivityLost,
    ConnectivityRestored,
    DerivedSettings,
    EtaUpdated,
    LatLon,
    Liveness,
    SensorFault,
    VehicleTracker,
    Verified,
)
from ..domain.actions import DEVICE_EVENT_REPORTS
from ..store import TelemetryStore
from .fleet import FleetReporter

__all__ = ["MISSION_EVENT_TYPES", "MissionTracking"]

_log = logging.getLogger("haulmesh.telemetry.tracking")

DISPATCHED = "haulmesh.mission.v1.dispatched"
STATE_CHANGED = "haulmesh.mission.v1.state_changed"
#: The mission service's events that say which mission a vehicle is on.
MISSION_EVENT_TYPES = frozenset({DISPATCHED, STATE_CHANGED})
_ENDED = {mission_pb2.Mission.STATE_COMPLETED, mission_pb2.Mission.STATE_CANCELLED, mission_pb2.Mission.STATE_ABORTED}
_MISSION_CACHE_SECONDS = 5.0
#: Frames waiting to be derived at which the streams stop reading (TelemetryConfig.max_tracking_frames).
DEFAULT_MAX_BACKLOG_FRAMES = 10_000
#: Events per publish transaction of a round (a replayed backlog can derive thousands at once).
_PUBLISH_CHUNK = 500
_SOURCE = "telemetry"
_KIND = frame_pb2.FramePayload


@dataclass
class _Current:
    """What this process knows of a vehicle's mission."""

    checked: float
    carrier_id: str = ""
    mission: mission_pb2.Mission | None = None
    tracker: VehicleTracker | None = None


def _event(payload_field: str, payload: object, *, subject: str, carrier_id: str) -> event_pb2.Event:
    return new_event(payload_field, payload, subject=subject, carrier_id=carrier_id,  # type: ignore[arg-type]
                     source=_SOURCE)


def _field_of(event_type: str) -> str:
    """``haulmesh.telemetry.v1.geofence_entered`` → the Event.data field ``telemetry_geofence_entered``."""
    return "telemetry_" + event_type.rsplit(".", 1)[1]


class MissionTracking:
    """Derived events of the vehicles streaming to this process (see the module docstring)."""

    def __init__(self, store: TelemetryStore, *, liveness_timeout_seconds: float,
                 settings: DerivedSettings | None = None, fleet: FleetReporter | None = None,
                 max_backlog_frames: int = DEFAULT_MAX_BACKLOG_FRAMES) -> None:
        self._store = store
        self._fleet = fleet
        self._settings = settings or DerivedSettings()
        self._liveness = Liveness(timedelta(seconds=liveness_timeout_seconds))
        self._vehicles: dict[str, _Current] = {}
        #: Stored frames waiting to be derived, in commit order (one worker keeps each vehicle's order). Each
        #: frame holds its payload decoded (≈ 2 KB with its bytes): this queue is what must stay bounded.
        self._queue: deque[tuple[str, list[Verified], int | None]] = deque()
        self._queued = asyncio.Event()
        #: Frames in ``_queue``; the streams stop reading while it is at ``max_backlog_frames`` (:meth:`full`).
        self.backlog_frames = 0
        self.max_backlog_frames = max_backlog_frames
        self._room = asyncio.Event()
        self._room.set()
        self._worker: asyncio.Task[None] | None = None
        self.published = 0

    # ---- the bound -----------------------------------------------------------------------------------

    def full(self) -> bool:
        """Frames waiting to be derived reached the bound: nothing more should be read from trucks."""
        return self.backlog_frames >= self.max_backlog_frames

    async def wait_room(self) -> None:
        """Return once the backlog is below its bound (a stream's reader waits here before it reads)."""
        while self.full():
            await self._room.wait()

    def _put(self, vehicle_id: str, frames: list[Verified], vehicle_last: int | None) -> None:
        # Never refused (the frames are stored; their events must follow): the bound is kept by the readers,
        # which stop reading while it is reached. It can be passed by what was in flight then (docs/capacity.md).
        self._queue.append((vehicle_id, frames, vehicle_last))
        self._count(len(frames))
        self._queued.set()
        self._ensure_worker()

    def _count(self, frames: int) -> None:
        self.backlog_frames += frames
        metrics.record_tracking_backlog(self.backlog_frames)
        if self.full():
            self._room.clear()
        else:
            self._room.set()

    # ---- inputs from the streams ---------------------------------------------------------------------

    def frames_stored(self, vehicle_id: str, frames: list[Verified]) -> None:
        """Durable frames of a vehicle, in sequence order (duplicates included: the tracker skips them)."""
        if not frames:
            return
        last = frames[-1].payload
        where = LatLon(last.position.lat, last.position.lon) if last.HasField("position") else None
        now = datetime.now(UTC)
        restored = self._liveness.heard(vehicle_id, now, sequence=frames[-1].sequence, location=where)
        if self._fleet is not None:  # memory only: the reporter sends the roster one batch per flush
            self._fleet.heard(vehicle_id, now, location=where,
                              location_time=last.device_time.ToDatetime(tzinfo=UTC) if where else None)
        self._put(vehicle_id, frames, None)
        if restored is not None:
            self._put(vehicle_id, [], None)  # no frames: look for the lost marker

    def heartbeat(self, vehicle_id: str, heartbeat: stream_pb2.Heartbeat) -> None:
        """A heartbeat is a sign of life too (a parked truck sends no frames)."""
        if self._fleet is not None:
            self._fleet.heard(vehicle_id, datetime.now(UTC))
        if self._liveness.heard(vehicle_id, datetime.now(UTC), sequence=heartbeat.last_sequence) is not None:
            self._put(vehicle_id, [], None)

    def connected(self, vehicle_id: str, vehicle_last_sequence: int) -> None:
        """A Hello: if the vehicle was reported lost (by any replica), it is restored now."""
        self._liveness.heard(vehicle_id, datetime.now(UTC))
        if self._fleet is not None:
            self._fleet.heard(vehicle_id, datetime.now(UTC))
        self._put(vehicle_id, [], vehicle_last_sequence)

    def moved_away(self, vehicle_id: str) -> None:
        """The vehicle's stream moved to another replica, which watches it from now on."""
        self._liveness.forget(vehicle_id)
        if self._fleet is not None:
            self._fleet.forget(vehicle_id)

    async def command_acknowledged(self, vehicle_id: str, ack: stream_pb2.CommandAck, carrier_id: str,
                                   mission: str) -> None:
        """Announce a truck's answer to a command (internal event; the actions consumer acts on it)."""
        if not carrier_id:
            return
        payload = tev.CommandAcknowledged(vehicle=f"vehicles/{vehicle_id}", mission=mission, ack=ack)
        payload.receive_time.GetCurrentTime()
        await self._publish(carrier_id, [_event("telemetry_command_acknowledged", payload,
                                                subject=mission or f"vehicles/{vehicle_id}", carrier_id=carrier_id)])

    # ---- the mission directory -----------------------------------------------------------------------

    async def on_mission_event(self, event: event_pb2.Event) -> None:
        """Consumer of the mission service's dispatched / state_changed events."""
        which = event.WhichOneof("data")
        mission = getattr(event, which).mission if which in ("mission_dispatched", "mission_state_changed") else None
        if mission is None or not mission.vehicle:
            return
        vehicle_id = mission.vehicle.removeprefix("vehicles/")
        carrier_id = event.carrier.removeprefix("carriers/")
        ended = mission.state in _ENDED
        update_ms = mission.update_time.ToMilliseconds()
        if await self._store.set_mission(vehicle_id, carrier_id, mission.name, update_ms,
                                         None if ended else mission.SerializeToString()):
            # The carrier's fleet index (fleet watches) follows; redelivered, the event indexes it again.
            await self._store.index_fleet(carrier_id, vehicle_id, update_ms, running=not ended)
        current = self._vehicles.get(vehicle_id)
        if current is not None:
            current.checked = 0.0  # re-read at the next frame; the tracker's state is kept if the mission is

    def _stale(self, vehicle_id: str, now: float) -> bool:
        current = self._vehicles.get(vehicle_id)
        return current is None or now - current.checked >= _MISSION_CACHE_SECONDS

    async def _current(self, vehicle_id: str) -> _Current:
        now = time.monotonic()
        if not self._stale(vehicle_id, now):
            return self._vehicles[vehicle_id]
        return self._learn(vehicle_id, await self._store.mission(vehicle_id), now)

    async def _refresh(self, vehicle_ids: set[str]) -> None:
        """Read the missions of those of ``vehicle_ids`` whose cached one is stale, in one pipelined round trip
        (a round of hundreds of trucks costs one store latency, not one per truck)."""
        now = time.monotonic()
        stale = [v for v in vehicle_ids if self._stale(v, now)]
        if stale:
            for vehicle_id, found in zip(stale, await self._store.missions(stale), strict=True):
                self._learn(vehicle_id, found, now)

    def _learn(self, vehicle_id: str, found: tuple[str, bytes] | None, now: float) -> _Current:
        """Cache what the store holds of the vehicle's mission (``found``, read at ``now``)."""
        current = self._vehicles.get(vehicle_id)
        if found is None:
            current = _Current(checked=now)
        else:
            carrier_id, raw = found
            mission = mission_pb2.Mission.FromString(raw)
            if (current is not None and current.mission is not None and current.mission.name == mission.name
                    and current.mission.planned_route == mission.planned_route):
                current.checked, current.mission = now, mission  # same mission and plan: keep the tracker's state
            else:  # a new mission, or a reroute: recorded arrivals/departures carry over through the mission
                route = [LatLon(p.lat, p.lon) for p in mission.planned_route]
                tracker = VehicleTracker(mission_context_from_pb(mission, route=route), self._settings)
                current = _Current(checked=now, carrier_id=carrier_id, mission=mission, tracker=tracker)
        self._vehicles[vehicle_id] = current
        return current

    # ---- the worker ----------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
            # A round: everything queued so far, the stale missions among them read at once, and which of the
            # vehicles to look at for a restoration hold a lost marker (hundreds of trucks reconnecting at once
            # after a store fault must not cost a round trip each: the backlog's bound would pause every stream).
            round_ = list(self._queue)
            self._queue.clear()
            held = sum(len(frames) for _, frames, _ in round_)
            try:
                await self._round(round_)
            finally:
                # The round's frames stay counted until its events are published and the round let go of them:
                # counted off earlier, the streams resumed while this round still held them (2x the bound alive).
                round_ = []
                self._count(-held)

    async def _round(self, round_: list[tuple[str, list[Verified], int | None]]) -> None:
        """Derive and publish one round (see :meth:`_work`)."""
        marked: set[str] | None = None
        try:
            await self._refresh({vehicle_id for vehicle_id, frames, _ in round_ if frames})
            looked_at = list(dict.fromkeys(vehicle_id for vehicle_id, frames, _ in round_ if not frames))
            marked = {v for v, lost in zip(looked_at, await self._store.lost_of(looked_at), strict=True) if lost}
        except asyncio.CancelledError:
            raise
        except Exception:  # each vehicle's own reads below try again
            _log.warning("reading the missions of %d vehicles failed", len(round_), exc_info=True)
        # The round's events, in order, published once per carrier at its end (one transaction each, not
        # one round trip per commit of a truck on a mission).
        out: list[tuple[str, list[event_pb2.Event]]] = []
        for vehicle_id, frames, vehicle_last in round_:
            try:
                if not frames and marked is not None and vehicle_id not in marked:
                    continue  # no lost marker (read this round): nothing to restore
                await self._derive(vehicle_id, frames, vehicle_last, out)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The frames are stored; only their derived events are lost (logged, never silently).
                _log.exception("deriving events of %s failed", vehicle_id)
        await self._publish_round(out)

    async def _publish_round(self, out: list[tuple[str, list[event_pb2.Event]]]) -> None:
        by_carrier: dict[str, list[event_pb2.Event]] = {}
        for carrier_id, events in out:  # each carrier's events keep their order; carriers' streams are apart
            by_carrier.setdefault(carrier_id, []).extend(events)
        for carrier_id, events in by_carrier.items():
            for start in range(0, len(events), _PUBLISH_CHUNK):
                try:
                    await self._publish(carrier_id, events[start:start + _PUBLISH_CHUNK])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("publishing %d derived events of carrier %s failed", len(events), carrier_id)
                    break

    async def _derive(self, vehicle_id: str, frames: list[Verified], vehicle_last: int | None,
                      out: list[tuple[str, list[event_pb2.Event]]]) -> None:
        """Derive the events of one commit's frames (or, without frames, a restoration) into ``out``."""
        if not frames:
            await self._maybe_restored(vehicle_id, vehicle_last, out)
            return
        current = await self._current(vehicle_id)
        if current.tracker is None or current.mission is None:
            return
        mission_name = current.mission.name
        now = datetime.now(UTC)
        events: list[event_pb2.Event] = []
        for verified in frames:
            payload = verified.payload
            for derived in current.tracker.update(frame_from_payload(payload), now=now):
                if isinstance(derived, SensorFault) and derived.source == "fault_frame":
                    continue  # the FAULT frame itself is announced below, with its whole alarm
                if isinstance(derived, EtaUpdated) and self._fleet is not None:
                    self._fleet.estimate(vehicle_id, mission_name, derived.stop_index,
                                         derived.estimated_arrive_time, derived.device_time)
                event_type, message = to_event_payload(derived)
                events.append(_event(_field_of(event_type), message, subject=mission_name,
                                     carrier_id=current.carrier_id))
            events.extend(self._frame_events(vehicle_id, verified, mission_name, current.carrier_id))
        if events:
            out.append((current.carrier_id, events))

    @staticmethod
    def _frame_events(vehicle_id: str, verified: Verified, mission: str, carrier_id: str) -> list[event_pb2.Event]:
        payload = verified.payload
        vehicle = f"vehicles/{vehicle_id}"
        if payload.kind == _KIND.KIND_HEALTH:
            data = tev.HealthReported(vehicle=vehicle, mission=mission, frame_sequence=verified.sequence,
                                      device_time=payload.device_time, checks=payload.health_checks)
            return [_event("telemetry_health_reported", data, subject=mission, carrier_id=carrier_id)]
        if payload.kind in (_KIND.KIND_FAULT, _KIND.KIND_ALARM) and payload.HasField("alarm"):
            data = tev.FaultReported(vehicle=vehicle, mission=mission, frame_sequence=verified.sequence,
                                     device_time=payload.device_time, kind=payload.kind, alarm=payload.alarm)
            if payload.HasField("position"):
                data.location.lat, data.location.lon = payload.position.lat, payload.position.lon
            return [_event("telemetry_fault_reported", data, subject=mission, carrier_id=carrier_id)]
        if payload.HasField("event") and payload.event.code in DEVICE_EVENT_REPORTS:
            field, message = DEVICE_EVENT_REPORTS[payload.event.code]
            report = message(vehicle=vehicle, mission=mission, frame_sequence=verified.sequence,
                             device_time=payload.device_time, detail=payload.event.detail)
            if payload.HasField("position"):
                report.location.lat, report.location.lon = payload.position.lat, payload.position.lon
            return [_event(field, report, subject=mission, carrier_id=carrier_id)]
        return []

    async def _publish(self, carrier_id: str, events: list[event_pb2.Event]) -> None:
        await self._store.publish(carrier_id, events)
        self.published += len(events)

    # ---- liveness ------------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Report vehicles silent for longer than the timeout as lost; returns how many were announced.

        The candidates are the vehicles that streamed to this process and went silent (it knows their last
        position), and any other the store's heard index holds as silent: a truck whose replica died while
        it was out of coverage is watched by no process, and is found there. Their state is read in a few
        pipelined round trips, so a whole depot of trucks switching off at once costs little; only those
        on a mission are announced, one by one.
        """
        cutoff_ms = int((time.time() - self._liveness.timeout.total_seconds()) * 1000)
        local = {lost.vehicle_id: lost for lost in self._liveness.sweep(datetime.now(UTC))}
        try:
            silent = await self._store.silent_since(cutoff_ms)
            candidates = [*local, *(v for v in silent if not self._liveness.watches(v))]
            silences = await self._store.silence_of(candidates)
        except Exception:
            for vehicle_id in local:  # the store is unreachable: nothing was announced, try again next sweep
                self._liveness.report_again(vehicle_id)
            raise
        announced, heard_since, dealt_with = 0, {}, []
        for vehicle_id in candidates:
            silence = silences[vehicle_id]
            if silence.last_heard_ms > cutoff_ms:
                # Heard since: another replica holds its new stream, or its frames kept it alive (the heard
                # index is kept by Hellos and heartbeats only).
                if vehicle_id in local:
                    self._liveness.heard(vehicle_id, datetime.fromtimestamp(silence.last_heard_ms / 1000, UTC))
                else:
                    heard_since[vehicle_id] = silence.last_heard_ms
                continue
            dealt_with.append(vehicle_id)
            if self._fleet is not None:  # on a mission or idle: the roster shows it offline
                self._fleet.offline(vehicle_id, datetime.fromtimestamp(silence.last_heard_ms / 1000, UTC),
                                    datetime.fromtimestamp(cutoff_ms / 1000, UTC))
            if not silence.on_mission:
                continue  # nobody to tell: liveness of an idle truck is in its heartbeat record
            try:
                lost = local.get(vehicle_id) or await self._from_store(vehicle_id, silence.last_heard_ms)
                announced += await self._report_lost(lost)
            except Exception:
                _log.exception("announcing %s lost failed", vehicle_id)
                dealt_with.pop()  # the next sweep tries again
                self._liveness.report_again(vehicle_id)
        await self._store.heard_at(heard_since)
        await self._store.forget_heard(dealt_with, cutoff_ms)
        return announced

    async def _from_store(self, vehicle_id: str, last_heard_ms: int) -> ConnectivityLost:
        """The loss of a vehicle no stream of this process watched: last sequence and position from the store."""
        last_sequence = await self._store.high_water(vehicle_id)
        last = await self._store.frame(vehicle_id, last_sequence) if last_sequence else None
        where = None
        if last is not None:
            payload = frame_pb2.FramePayload.FromString(last.payload)
            if payload.HasField("position"):
                where = LatLon(payload.position.lat, payload.position.lon)
        return ConnectivityLost(vehicle_id=vehicle_id, mission_id="",
                                last_seen_time=datetime.fromtimestamp(last_heard_ms / 1000, UTC),
                                last_sequence=last_sequence, last_location=where, detected_time=datetime.now(UTC))

    async def _report_lost(self, lost: ConnectivityLost) -> int:
        """Announce the loss for the vehicle's current mission, once per outage across replicas (1 if this
        call announced it)."""
        vehicle_id = lost.vehicle_id
        current = await self._current(vehicle_id)
        if current.mission is None:
            return 0  # nobody to tell: liveness of an idle truck is in its heartbeat record
        lost = ConnectivityLost(vehicle_id=vehicle_id, mission_id=current.mission.name.removeprefix("missions/"),
                                last_seen_time=lost.last_seen_time, last_sequence=lost.last_sequence,
                                last_location=lost.last_location, detected_time=lost.detected_time)
        marker = json.dumps({"carrier": current.carrier_id, "mission": current.mission.name,
                             "last_seen_ms": int(lost.last_seen_time.timestamp() * 1000),
                             "last_sequence": lost.last_sequence}).encode()
        if not await self._store.mark_lost(vehicle_id, marker):
            return 0
        event_type, message = to_event_payload(lost)
        await self._publish(current.carrier_id, [_event(_field_of(event_type), message, subject=current.mission.name,
                                                        carrier_id=current.carrier_id)])
        _log.info("vehicle %s lost (last heard %s)", vehicle_id, lost.last_seen_time.isoformat())
        return 1

    async def _maybe_restored(self, vehicle_id: str, vehicle_last: int | None,
                              out: list[tuple[str, list[event_pb2.Event]]]) -> None:
        raw = await self._store.take_lost(vehicle_id)
        if raw is None:
            return
        marker = json.loads(raw)
        now = datetime.now(UTC)
        last_seen = datetime.fromtimestamp(marker["last_seen_ms"] / 1000, UTC)
        high_water = await self._store.high_water(vehicle_id)
        restored = ConnectivityRestored(vehicle_id=vehicle_id, mission_id=marker["mission"].removeprefix("missions/"),
                                        outage=max(timedelta(0), now - last_seen), restored_time=now,
                                        high_water_sequence=high_water,
                                        vehicle_last_sequence=high_water if vehicle_last is None else vehicle_last)
        event_type, message = to_event_payload(restored)
        out.append((marker["carrier"], [_event(_field_of(event_type), message, subject=marker["mission"],
                                               carrier_id=marker["carrier"])]))
        _log.info("vehicle %s restored after %.1f s", vehicle_id, restored.outage.total_seconds())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
