"""Which 214 statuses to send, and when: the mesh's events as AT7 status events, by a partner's preferences.

:func:`milestones` is one pure step, ``(state, event, preferences, now) → (status events to send, new state)``:
the caller keeps :class:`MilestoneState` per shipment (a plain value: :meth:`MilestoneState.to_dict`), passes it
back with the next event, and writes what comes out with :func:`status_214` (:func:`shipment_status` builds the
:class:`ShipmentStatus`). Inputs are the ``haulmesh.events.v1.Event`` envelopes the service consumes and, for
positions, the frames' ``haulmesh.telemetry.v1.FramePayload``.

The milestones of a shipment are ranked in visiting order: at each stop its arrival, then (delivery stops) the
delivery, then the departure: X3 / AF at a pickup, X1 / D1 / CD at a delivery. A milestone is sent at most once
and never after a later one, so replays, duplicates and out-of-order streams (telemetry's geofence events and
mission's state changes travel on different streams) can neither repeat nor reorder them:

* ``telemetry.geofence_entered`` → the stop's arrival (X3 / X1) at the frame's device time and position;
  ``geofence_exited`` → its departure (AF / CD), with the arrival first when it was missed (entry = exit - dwell)
  and, at a delivery stop before the last, the delivery (D1: the drop is done when the truck leaves it);
* ``mission.state_changed`` carries the mission: every milestone its stops prove (geofence times, the pickup's
  arrival at dispatch acknowledgement and departure at StartMission, ENROUTE; the delivery at the proof of
  delivery's deliver time, DELIVERED / COMPLETED) that is not yet reached is sent, in order. ``dispatched``,
  ``CANCELLED`` and ``ABORTED`` say nothing in a 214 (the 990 accepted the load; no AT7-01 of 004010 cancels);
* ``mission.exception_raised`` → SD with the kind's reason (:data:`EXCEPTION_REASONS`, via
  :func:`exception_event`) and a K1 remark, once per exception id; an INFO exception (the mission continues as
  planned) is not a delay, and nothing is said after the delivery;
* ``telemetry.eta_updated`` for a delivery stop not yet reached → AG with the estimate when the partner wants ETAs
  and the estimate moved by at least its threshold since the last AG for that stop (the first always goes); an
  update from a frame no newer than one already considered changes nothing;
* frames with a position while en route (departed the first stop, not yet arrived at the last) → X6 when the
  partner's cadence has passed in device time since the last X6, and the frame is fresh (no older than one
  cadence at ``now``: a backlog replayed after an outage is history, not a position to report).

Times are the events' own (device time of the frame, the mission's recorded times), in the stop's zone; a
milestone time after ``now`` is sent as ``now`` (partners refuse future-dated statuses: TMW's
RestrictFuture214Dates), an ETA is a future time by nature. Positions follow the partner's choice: lat/lon
(MS1-04..07) or city/state (the 204's stop place for stop events; en route, the caller's ``locate`` lookup, and
lat/lon when it has none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import location_pb2

from ._load_tender import LoadTender
from ._set_214 import STATUS_CODES
from ._status import (
    ARRIVED_AT_DELIVERY,
    ARRIVED_AT_PICKUP,
    DELIVERED,
    DEPARTED_DELIVERY,
    DEPARTED_PICKUP,
    EN_ROUTE,
    ESTIMATED_DELIVERY,
    SHIPMENT_DELAYED,
    CityState,
    Coordinates,
    Equipment,
    ShipmentReference,
    ShipmentStatus,
    StatusError,
    StatusEvent,
    clean_text,
    eta_event,
    exception_event,
)

__all__ = [
    "MILESTONE_EVENTS",
    "MilestoneState",
    "PositionFormat",
    "StatusPreferences",
    "StopPlan",
    "equipment_for",
    "milestones",
    "shipment_status",
    "start_milestones",
    "stop_plans",
]

#: AT7-01 codes a partner may want (the partner config's ``status.events``): the stop milestones, X6 (positions at
#: the cadence), AG (ETAs beyond the threshold) and SD (exceptions).
MILESTONE_EVENTS = frozenset(STATUS_CODES)
_NORMAL = "NS"
_MAX_MINUTES = 7 * 24 * 60
#: Exception ids remembered per shipment (a mission raises a handful; the bound keeps a state small whatever comes).
_MAX_EXCEPTIONS = 256
_ARRIVE, _DELIVER, _DEPART = 0, 1, 2


class PositionFormat(StrEnum):
    """How MS1 says where: latitude/longitude (DDDMMSS) or city and state."""

    LATLON = "latlon"
    CITYSTATE = "citystate"


@dataclass(frozen=True)
class StatusPreferences:
    """A partner's 214 habits: the AT7-01 ``events`` it wants (of :data:`MILESTONE_EVENTS`; X6 and AG included
    here turn positions and ETAs on), the X6 cadence in minutes, the ETA threshold in minutes (an AG goes when the
    estimate moved at least this much), and the MS1 position format."""

    events: frozenset[str] = frozenset({ARRIVED_AT_PICKUP, DEPARTED_PICKUP, ARRIVED_AT_DELIVERY, DELIVERED})
    position_minutes: int = 60
    eta_threshold_minutes: int = 30
    position: PositionFormat = PositionFormat.LATLON

    def __post_init__(self) -> None:
        events = self.events
        if isinstance(events, str) or not isinstance(events, Iterable) or not set(events) <= MILESTONE_EVENTS:
            raise StatusError(f"events: {events!r} is not a set of {', '.join(sorted(MILESTONE_EVENTS))}")
        object.__setattr__(self, "events", frozenset(events))
        for name in ("position_minutes", "eta_threshold_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_MINUTES:
                raise StatusError(f"{name}: {value!r} is not a whole number of minutes from 1 to {_MAX_MINUTES}")
        try:
            object.__setattr__(self, "position", PositionFormat(self.position))
        except ValueError as error:
            raise StatusError(f"position: {self.position!r} is not latlon or citystate") from error

    @property
    def eta_wanted(self) -> bool:
        return ESTIMATED_DELIVERY in self.events

    @property
    def positions_wanted(self) -> bool:
        return EN_ROUTE in self.events


@dataclass(frozen=True)
class StopPlan:
    """One stop of the shipment, in the mission's stop order: the 204's S5-01 ``sequence``, whether it is a
    pickup, its IANA ``zone`` (the stop's local time is what a 214 sends) and its 204 place for city/state."""

    sequence: int
    pickup: bool
    zone: str
    place: CityState | None = None


@dataclass(frozen=True)
class MilestoneState:
    """What has been said for one shipment: the latest milestone rank reached (sent, or passed unwanted), the
    exceptions reported, the device time of the last X6, and per delivery stop the last AG estimate sent and the
    newest frame time an estimate was considered for. Built by :func:`start_milestones`."""

    mission: str
    shipment_id: str
    stops: tuple[StopPlan, ...]
    equipment: Equipment | None = None
    reached: int = -1
    exceptions: tuple[str, ...] = ()
    position_time: datetime | None = None
    #: (stop index, last estimate sent or None, device time of the newest estimate considered).
    etas: tuple[tuple[int, datetime | None, datetime], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values for the store; :meth:`from_dict` reads them back."""
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None
        return {
            "mission": self.mission, "shipment_id": self.shipment_id,
            "stops": [{"sequence": s.sequence, "pickup": s.pickup, "zone": s.zone,
                       "place": [s.place.city, s.place.state, s.place.country] if s.place else None}
                      for s in self.stops],
            "equipment": [self.equipment.scac, self.equipment.number, self.equipment.kind] if self.equipment else None,
            "reached": self.reached, "exceptions": list(self.exceptions), "position_time": when(self.position_time),
            "etas": [[i, when(sent), when(considered)] for i, sent, considered in self.etas],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MilestoneState:
        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None
        stops = tuple(StopPlan(s["sequence"], s["pickup"], s["zone"], CityState(*s["place"]) if s["place"] else None)
                      for s in data["stops"])
        equipment = Equipment(*data["equipment"]) if data.get("equipment") else None
        etas = tuple((int(i), when(sent), datetime.fromisoformat(considered))
                     for i, sent, considered in data.get("etas", ()))
        return cls(data["mission"], data["shipment_id"], stops, equipment, int(data.get("reached", -1)),
                   tuple(data.get("exceptions", ())), when(data.get("position_time")), etas)


def start_milestones(mission: str, shipment_id: str, stops: Sequence[StopPlan], *,
                     equipment: Equipment | None = None) -> MilestoneState:
    """The state of a shipment before anything was said: ``mission`` is ``missions/{id}``, ``shipment_id`` the
    204's B2-04, ``stops`` in the mission's stop order (see :func:`stop_plans`)."""
    if not mission.startswith("missions/") or len(mission) == len("missions/"):
        raise StatusError(f"mission: {mission!r} is not missions/{{mission}}")
    if len(stops) < 2:
        raise StatusError("a shipment has at least two stops")
    for stop in stops:
        try:
            ZoneInfo(stop.zone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise StatusError(f"stop {stop.sequence}: unknown zone {stop.zone!r}") from error
    return MilestoneState(mission, shipment_id, tuple(stops), equipment)


def stop_plans(tender: LoadTender, zones: Sequence[str]) -> tuple[StopPlan, ...]:
    """The 204's stops as plans (``zones``: each stop's IANA zone, in the same order), with their N4 city and
    state when the 204 gives them in a shape MS1 can carry."""
    if len(zones) != len(tender.stops):
        raise StatusError(f"{len(zones)} zones for {len(tender.stops)} stops")
    plans = []
    for stop, zone in zip(tender.stops, zones, strict=True):
        place = stop.place
        city = None
        if place and 2 <= len(clean_text(place.city)) <= 30 and re.fullmatch(r"[A-Z]{2}", place.state) and (
                not place.country or re.fullmatch(r"[A-Z]{2,3}", place.country)):
            city = CityState(place.city, place.state, place.country)  # else MS1 says lat/lon: never a bad MS1
        plans.append(StopPlan(stop.sequence, stop.is_pickup, zone, city))
    return tuple(plans)


def equipment_for(vehicle: str, scac: str) -> Equipment:
    """MS2 for a Haulmesh vehicle (``vehicles/AU-TRK-1001`` or ``AU-TRK-1001``): the number is its letters and
    digits, the last 10 (MS2-02's length), ``AUTRK1001``."""
    number = "".join(c for c in vehicle.removeprefix("vehicles/") if c.isascii() and c.isalnum())[-10:]
    return Equipment(scac, number or "UNKNOWN")


def shipment_status(state: MilestoneState, events: Sequence[StatusEvent], *, scac: str,
                    references: Sequence[ShipmentReference] = ()) -> ShipmentStatus:
    """The 214's content for ``events``: B10 with the mission id as our PRO and the 204's B2-04."""
    return ShipmentStatus(state.shipment_id, state.mission.removeprefix("missions/"), scac, tuple(events),
                          tuple(references))


# --- the step ------------------------------------------------------------------------------------------------------

Locate = Callable[[float, float], "CityState | None"]
ZoneAt = Callable[[float, float], str]


@dataclass
class _Step:
    """One call's working values: the state as it grows, what goes out."""

    state: MilestoneState
    prefs: StatusPreferences
    now: datetime
    locate: Locate | None
    zone_at: ZoneAt | None
    out: list[StatusEvent] = field(default_factory=list)

    # -- places and times --
    def stop_location(self, index: int, point: location_pb2.Location | None) -> CityState | Coordinates | None:
        place = self.state.stops[index].place
        if self.prefs.position is PositionFormat.CITYSTATE and place is not None:
            return place
        return self.position(point)

    def position(self, point: location_pb2.Location | frame_pb2.Position | None) -> CityState | Coordinates | None:
        if point is None:
            return None
        lat, lon = (point.lat, point.lon)
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180) or (
                lat == 0 and lon == 0):
            return None  # unset or impossible: say no position rather than a wrong one
        if self.prefs.position is PositionFormat.CITYSTATE and self.locate is not None:
            found = self.locate(lat, lon)
            if found is not None:
                return found
        return Coordinates(lat, lon)

    def en_route_zone(self, point: location_pb2.Location | frame_pb2.Position | None) -> str:
        if point is not None and self.zone_at is not None and (point.lat or point.lon):
            return self.zone_at(point.lat, point.lon)
        upcoming = next((i for i in range(len(self.state.stops)) if _rank(i, _ARRIVE) > self.state.reached),
                        len(self.state.stops) - 1)
        return self.state.stops[upcoming].zone

    def past(self, time: datetime) -> datetime:
        return min(time, self.now)

    # -- milestones --
    def milestone(self, index: int, step: int, time: datetime | None,
                  point: location_pb2.Location | None = None) -> None:
        """Send the stop's milestone if it is after everything reached (and wanted); either way it is reached."""
        rank = _rank(index, step)
        if time is None or rank <= self.state.reached or not 0 <= index < len(self.state.stops):
            return
        stop = self.state.stops[index]
        code = _code(stop.pickup, step)
        if code is None:
            return
        self.state = replace(self.state, reached=rank)
        if code in self.prefs.events:
            self.out.append(StatusEvent(code, self.past(time), _NORMAL, stop.zone, self.stop_location(index, point),
                                        stop.sequence, self.state.equipment))


def _rank(index: int, step: int) -> int:
    return 3 * index + step


def _code(pickup: bool, step: int) -> str | None:
    if pickup:
        return {_ARRIVE: ARRIVED_AT_PICKUP, _DEPART: DEPARTED_PICKUP}.get(step)
    return {_ARRIVE: ARRIVED_AT_DELIVERY, _DELIVER: DELIVERED, _DEPART: DEPARTED_DELIVERY}[step]


def _time(message, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


def _mission_id(name: str) -> str:
    return name if name.startswith("missions/") else f"missions/{name}"


# --- events --------------------------------------------------------------------------------------------------------


def _geofence(step: _Step, context, *, exited: bool, dwell: timedelta | None = None) -> None:
    index = context.stop_index
    if _mission_id(context.mission) != step.state.mission or not 0 <= index < len(step.state.stops):
        return
    time = _time(context, "device_time")
    point = context.location if context.HasField("location") else None
    if not exited:
        step.milestone(index, _ARRIVE, time, point)
        return
    if time is not None and dwell:
        step.milestone(index, _ARRIVE, time - dwell, point)
    if not step.state.stops[index].pickup and index < len(step.state.stops) - 1:
        step.milestone(index, _DELIVER, time, point)  # a drop before the last stop is done when the truck leaves
    step.milestone(index, _DEPART, time, point)


def _mission(step: _Step, mission: mission_pb2.Mission) -> None:
    """Every milestone the mission's recorded times prove, in order."""
    if mission.name != step.state.mission:
        return
    last = len(step.state.stops) - 1
    delivered = None
    if mission.HasField("proof_of_delivery"):
        delivered = _time(mission.proof_of_delivery.manifest_details, "deliver_time")
    for index, stop in enumerate(mission.stops[:last + 1]):
        point = stop.location if stop.HasField("location") else None
        step.milestone(index, _ARRIVE, _time(stop, "geofence_enter_time") or _time(stop, "arrive_time"), point)
        if step.state.stops[index].pickup:
            step.milestone(index, _DEPART, _time(stop, "depart_time") or _time(stop, "geofence_exit_time"), point)
            continue
        if index == last:  # the delivery is the proof of delivery (the stop's depart time is set from it)
            step.milestone(index, _DELIVER, delivered or _time(stop, "depart_time"), point)
        else:
            step.milestone(index, _DELIVER, _time(stop, "geofence_exit_time"), point)
        step.milestone(index, _DEPART, _time(stop, "geofence_exit_time"), point)


def _exception(step: _Step, mission: str, exception: mission_pb2.MissionException) -> None:
    state = step.state
    if _mission_id(mission) != state.mission or not exception.exception_id:
        return
    if exception.exception_id in state.exceptions or exception.severity == mission_pb2.MissionException.SEVERITY_INFO:
        return
    step.state = replace(state, exceptions=(*state.exceptions, exception.exception_id)[-_MAX_EXCEPTIONS:])
    if state.reached >= _rank(len(state.stops) - 1, _DELIVER) or SHIPMENT_DELAYED not in step.prefs.events:
        return
    time = _time(exception, "raise_time")
    if time is None:
        return
    point = exception.location if exception.HasField("location") else None
    kind = mission_pb2.MissionException.Kind.Name(exception.kind) if exception.kind in \
        mission_pb2.MissionException.Kind.values() else "KIND_OTHER"
    step.out.append(exception_event(kind, step.past(time), description=exception.description,
                                    zone=step.en_route_zone(point), location=step.position(point),
                                    equipment=state.equipment))


def _eta(step: _Step, update) -> None:
    state, index = step.state, update.stop_index
    if _mission_id(update.mission) != state.mission or not 0 <= index < len(state.stops) \
            or state.stops[index].pickup or _rank(index, _ARRIVE) <= state.reached or not step.prefs.eta_wanted:
        return
    estimate = _time(update, "estimated_arrive_time")
    considered = _time(update, "device_time")
    if estimate is None or considered is None:
        return
    previous = next((e for e in state.etas if e[0] == index), None)
    if previous is not None and considered <= previous[2]:
        return  # an estimate from a frame no newer than one already weighed (a replay or a retried report)
    last_sent = previous[1] if previous else None
    threshold = timedelta(minutes=step.prefs.eta_threshold_minutes)
    send = last_sent is None or abs(estimate - last_sent) >= threshold
    others = tuple(e for e in state.etas if e[0] != index)
    step.state = replace(state, etas=(*others, (index, estimate if send else last_sent, considered)))
    if send:
        stop = state.stops[index]
        step.out.append(eta_event(estimate, zone=stop.zone, stop_sequence=stop.sequence, equipment=state.equipment))


def _frame(step: _Step, frame: frame_pb2.FramePayload) -> None:
    state, prefs = step.state, step.prefs
    if not frame.mission_id or _mission_id(frame.mission_id) != state.mission or not frame.HasField("position") \
            or not prefs.positions_wanted:
        return
    departed = state.reached >= _rank(0, _DEPART)
    arrived = state.reached >= _rank(len(state.stops) - 1, _ARRIVE)
    time = _time(frame, "device_time")
    if not departed or arrived or time is None:
        return
    cadence = timedelta(minutes=prefs.position_minutes)
    if state.position_time is not None and time - state.position_time < cadence:
        return
    if step.now - time > cadence:
        return  # a replayed backlog: history, not where the truck is
    location = step.position(frame.position)
    if location is None:
        return
    step.state = replace(state, position_time=time)
    step.out.append(StatusEvent(EN_ROUTE, step.past(time), _NORMAL, step.en_route_zone(frame.position), location,
                                None, state.equipment))


def milestones(state: MilestoneState, event: event_pb2.Event | frame_pb2.FramePayload,
               preferences: StatusPreferences, now: datetime, *, locate: Locate | None = None,
               zone_at: ZoneAt | None = None) -> tuple[tuple[StatusEvent, ...], MilestoneState]:
    """The status events ``event`` makes due for the shipment of ``state``, and the state after it.

    ``event`` is an ``Event`` envelope (mission and telemetry events; others, and other missions', say nothing) or
    a ``FramePayload`` (a position). ``now`` is an aware time. ``locate`` turns a latitude and longitude into a
    city and state (for partners that want them en route); ``zone_at`` gives a position's IANA zone (en-route
    statuses are sent in local time; without it, the next stop's zone). The same event twice says nothing the
    second time."""
    if now.utcoffset() is None:
        raise StatusError("now must be an aware datetime")
    step = _Step(state, preferences, now, locate, zone_at)
    if isinstance(event, frame_pb2.FramePayload):
        _frame(step, event)
        return tuple(step.out), step.state
    kind = event.WhichOneof("data")
    if kind == "telemetry_geofence_entered":
        _geofence(step, event.telemetry_geofence_entered.context, exited=False)
    elif kind == "telemetry_geofence_exited":
        exited = event.telemetry_geofence_exited
        dwell = exited.dwell.ToTimedelta() if exited.HasField("dwell") else None
        _geofence(step, exited.context, exited=True, dwell=dwell)
    elif kind == "mission_state_changed":
        _mission(step, event.mission_state_changed.mission)
    elif kind == "mission_exception_raised":
        raised = event.mission_exception_raised
        _exception(step, raised.mission, raised.exception)
    elif kind == "telemetry_eta_updated":
        _eta(step, event.telemetry_eta_updated)
    return tuple(step.out), step.state
