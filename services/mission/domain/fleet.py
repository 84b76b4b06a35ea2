"""Fleet state from telemetry: what ReportFleetState may change on a vehicle and a mission, and where dispatch
believes a vehicle is. Plain Python.

The telemetry service reports, in batches, what it observed of each vehicle (:class:`Observation`): when it was
last heard, its connectivity, its newest position and the ETAs of its mission's stops. The rules:

* newest wins (:func:`apply_observation`): an observation older than what the roster holds changes nothing
  (ordered by ``last_seen_time``; at equal times OFFLINE beats ONLINE, so a retried ONLINE report cannot undo
  the OFFLINE that followed it), which makes a retried or reordered batch harmless;
* an ETA is recorded when it is the first for its stop or moved by at least the material change
  (:func:`apply_estimates`), never from a frame older than the one behind the stop's held estimate (each
  stop keeps its ``estimate_device_time``, also once passed), never on a stop already reached nor on a
  mission that arrived or ended;
* dispatch measures from the reported position while the fix itself is fresh (``last_location_time``, the
  device time of its frame, not ``last_seen_time``, which heartbeats keep fresh) (:func:`dispatch_position`),
  else from the vehicle's home terminal.

A report is checked per entry (:func:`fleet_report`): an entry with an invalid field is rejected on its own
(:class:`Rejected`), the others are applied, so one bad position cannot block the fleet's reports.

These fields are observations, not edits: they change neither a resource's ``etag`` nor its ``update_time``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime import FieldViolation, InvalidArgument, from_timestamp, to_timestamp

from .checks import location_violations, parse_mission_name, parse_vehicle_name, raise_if
from .enums import _Vehicle

__all__ = [
    "MAX_FLEET_REPORT_VEHICLES",
    "MAX_STOP_ESTIMATES",
    "ConnectivityChange",
    "Observation",
    "Rejected",
    "apply_estimates",
    "apply_observation",
    "dispatch_position",
    "fleet_report",
]

#: At most this many vehicles per ReportFleetState (mission_service.proto): one store transaction each.
MAX_FLEET_REPORT_VEHICLES = 500
#: At most this many stop estimates per vehicle (a mission has at most MAX_STOPS stops; 25 is the proto's bound).
MAX_STOP_ESTIMATES = 25

_ONLINE, _OFFLINE = _Vehicle.CONNECTIVITY_ONLINE, _Vehicle.CONNECTIVITY_OFFLINE
_STILL = (mission_pb2.Mission.STATE_DISPATCHED, mission_pb2.Mission.STATE_PRE_TRIP, mission_pb2.Mission.STATE_ENROUTE,
          mission_pb2.Mission.STATE_EXCEPTION)


@dataclass(frozen=True)
class Observation:
    """One checked entry of a ReportFleetState request."""

    vehicle_id: str
    connectivity: int
    last_seen: datetime
    location: location_pb2.Location | None
    mission_id: str
    #: (stop index, estimated arrival, device time of the frame behind it) of the mission's stops.
    estimates: tuple[tuple[int, datetime, datetime], ...]
    #: Device time of the frame ``location`` comes from (``last_seen`` when the report does not say).
    location_time: datetime | None = None


@dataclass(frozen=True)
class Rejected:
    """An entry of a ReportFleetState request that is not applied: its index, its vehicle as sent, why."""

    index: int
    vehicle: str
    violations: tuple[FieldViolation, ...]


@dataclass(frozen=True)
class ConnectivityChange:
    """A vehicle's connectivity changed (what ``vehicle_connectivity_changed`` announces)."""

    vehicle_id: str
    previous: int
    current: int
    last_seen: datetime
    location: location_pb2.Location | None
    #: The mission it is on ("" when idle: only idle vehicles' changes are announced by the mission service).
    current_mission: str


def fleet_report(request: mission_service_pb2.ReportFleetStateRequest) -> tuple[list[Observation], list[Rejected]]:
    """The checked observations of a ReportFleetState request and the entries rejected for invalid fields
    (each on its own: the others still apply); INVALID_ARGUMENT only when the request's size is out of bounds."""
    count = len(request.vehicles)
    if not 1 <= count <= MAX_FLEET_REPORT_VEHICLES:
        raise_if([FieldViolation("vehicles", f"1 to {MAX_FLEET_REPORT_VEHICLES} entries, got {count}")])
    seen: set[str] = set()
    observations: list[Observation] = []
    rejected: list[Rejected] = []
    for i, entry in enumerate(request.vehicles):
        problems: list[FieldViolation] = []
        path = f"vehicles[{i}]"
        vehicle_id = mission_id = ""
        try:
            vehicle_id = parse_vehicle_name(entry.vehicle, field=f"{path}.vehicle")
        except InvalidArgument as exc:
            problems += exc.violations
        if vehicle_id and vehicle_id in seen:
            problems.append(FieldViolation(f"{path}.vehicle", "each vehicle at most once per report"))
        seen.add(vehicle_id)
        if entry.connectivity not in (_ONLINE, _OFFLINE):
            problems.append(FieldViolation(f"{path}.connectivity", "ONLINE or OFFLINE"))
        if not entry.HasField("last_seen_time"):
            problems.append(FieldViolation(f"{path}.last_seen_time", "is required"))
        if entry.HasField("last_location"):
            problems += location_violations(entry.last_location.lat, entry.last_location.lon, f"{path}.last_location")
        if entry.mission:
            try:
                mission_id = parse_mission_name(entry.mission, field=f"{path}.mission")
            except InvalidArgument as exc:
                problems += exc.violations
        if len(entry.stop_estimates) > MAX_STOP_ESTIMATES:
            problems.append(FieldViolation(f"{path}.stop_estimates", f"at most {MAX_STOP_ESTIMATES}"))
        if entry.stop_estimates and not entry.mission:
            problems.append(FieldViolation(f"{path}.mission", "is required with stop_estimates"))
        last_seen = from_timestamp(entry.last_seen_time) if entry.HasField("last_seen_time") else None
        estimates = []
        for j, estimate in enumerate(entry.stop_estimates):
            where = f"{path}.stop_estimates[{j}]"
            if estimate.stop_index < 0:
                problems.append(FieldViolation(f"{where}.stop_index", "must not be negative"))
            if not estimate.HasField("estimated_arrive_time"):
                problems.append(FieldViolation(f"{where}.estimated_arrive_time", "is required"))
                continue
            # Without a device time the estimate is as old as the report (the newest it can be).
            basis = from_timestamp(estimate.device_time) if estimate.HasField("device_time") else last_seen
            estimates.append((estimate.stop_index, from_timestamp(estimate.estimated_arrive_time), basis))
        if problems:
            rejected.append(Rejected(i, entry.vehicle, tuple(problems)))
            continue
        location_time = from_timestamp(entry.location_time) if entry.HasField("location_time") else last_seen
        observations.append(Observation(
            vehicle_id, entry.connectivity, last_seen,  # type: ignore[arg-type]
            entry.last_location if entry.HasField("last_location") else None, mission_id,
            tuple(estimates),  # type: ignore[arg-type]
            location_time if entry.HasField("last_location") else None))
    return observations, rejected


def _rank(seen: datetime | None, connectivity: int) -> tuple[datetime | None, int]:
    return seen, 1 if connectivity == _OFFLINE else 0


def apply_observation(vehicle: vehicle_pb2.Vehicle, seen: Observation) -> tuple[bool, ConnectivityChange | None]:
    """Record ``seen`` on ``vehicle`` if it is not older than what the vehicle holds (newest wins);
    (whether the vehicle changed, the connectivity change if any)."""
    held = from_timestamp(vehicle.last_seen_time) if vehicle.HasField("last_seen_time") else None
    if held is not None and _rank(seen.last_seen, seen.connectivity) < _rank(held, vehicle.connectivity):
        return False, None
    before = vehicle.SerializeToString(deterministic=True)
    previous = vehicle.connectivity
    vehicle.connectivity = seen.connectivity  # type: ignore[assignment]
    vehicle.last_seen_time.CopyFrom(to_timestamp(seen.last_seen))
    if seen.location is not None:
        fixed = from_timestamp(vehicle.last_location_time) if vehicle.HasField("last_location_time") else None
        if fixed is None or seen.location_time is None or seen.location_time >= fixed:  # an older fix loses
            vehicle.last_location.CopyFrom(seen.location)
            if seen.location_time is not None:
                vehicle.last_location_time.CopyFrom(to_timestamp(seen.location_time))
    changed = vehicle.SerializeToString(deterministic=True) != before
    if previous == seen.connectivity:
        return changed, None
    return changed, ConnectivityChange(seen.vehicle_id, previous, seen.connectivity, seen.last_seen,
                                       vehicle.last_location if vehicle.HasField("last_location") else None,
                                       vehicle.current_mission)


def apply_estimates(mission: mission_pb2.Mission, estimates: tuple[tuple[int, datetime, datetime], ...],
                    min_change: timedelta) -> bool:
    """Record the stops' estimated arrivals that are new or moved by at least ``min_change``; whether any was.

    ``estimates`` are (stop index, estimated arrival, device time of the frame behind it). An estimate from a
    frame older than the stop's ``estimate_device_time`` is ignored (a retried older report must neither
    overwrite a newer ETA nor revive a passed stop's). Stops already reached and missions past their drive
    (ARRIVED on, or ended) keep what they have. The mission's own ``estimated_arrive_time`` is its last stop's.
    """
    if mission.state not in _STILL:
        return False
    last = len(mission.stops) - 1

    def current(index: int, basis: datetime) -> bool:
        stop = mission.stops[index]
        held = from_timestamp(stop.estimate_device_time) if stop.HasField("estimate_device_time") else None
        return held is None or basis >= held

    fresh = [(i, eta, basis) for i, eta, basis in estimates if 0 <= i <= last and current(i, basis)]
    if not fresh:
        return False  # none such (a report from before a reroute, say), or only older than held: nothing new
    changed = False
    # Telemetry estimates the next stop not reached, in order: the stops before the latest one estimated were
    # reached (a pickup's arrival is not recorded on the mission), so their estimates are over. They keep the
    # device time that showed it, so an older estimate of theirs cannot come back.
    reached, basis_of_reached = max(((i, basis) for i, _, basis in fresh), key=lambda e: e[0])
    for stop in mission.stops[:reached]:
        if stop.HasField("estimated_arrive_time"):
            stop.ClearField("estimated_arrive_time")
            changed = True
        if not stop.HasField("estimate_device_time") or from_timestamp(stop.estimate_device_time) < basis_of_reached:
            stop.estimate_device_time.CopyFrom(to_timestamp(basis_of_reached))
            changed = True
    for index, eta, basis in fresh:
        if index < reached:
            continue  # a stop passed since
        stop = mission.stops[index]
        if stop.HasField("arrive_time"):
            continue
        if stop.HasField("estimated_arrive_time"):
            held = from_timestamp(stop.estimated_arrive_time)
            if held is not None and abs(eta - held) < min_change:
                continue
        stamp = to_timestamp(eta)
        stop.estimated_arrive_time.CopyFrom(stamp)
        stop.estimate_device_time.CopyFrom(to_timestamp(basis))
        if index == last:
            mission.estimated_arrive_time.CopyFrom(stamp)
        changed = True
    return changed


def dispatch_position(vehicle: vehicle_pb2.Vehicle, now: datetime, max_age: timedelta) -> tuple[float, float] | None:
    """Where dispatch measures the vehicle from: its reported position while the fix is at most ``max_age``
    old (by ``last_location_time``, the fix's own time: heartbeats keep ``last_seen_time`` fresh with an old
    fix); None (then its home terminal is used) when it never reported one, the fix is older, or its time
    is unknown (a record from before ``last_location_time`` existed)."""
    if not (vehicle.HasField("last_location") and vehicle.HasField("last_location_time")):
        return None
    fixed = from_timestamp(vehicle.last_location_time)
    if fixed is None or now - fixed > max_age:
        return None
    return vehicle.last_location.lat, vehicle.last_location.lon
