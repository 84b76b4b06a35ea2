"""Mission and vehicle rules. Plain Python: no gRPC, no Redis.

What lives here: the roster rules (capabilities, availability, eligibility of a vehicle for a load),
dispatch (which vehicle), fleet capacity windows, the mission state machine with its exceptions and
contingency rules, the human-in-the-loop check-in policy, proof-of-delivery verification, usage
metering, and the field checks of every request.

Domain-model rule (the project's): generated protobuf messages are plain data, so the rules here take and
change them (a Mission, a MissionException, a Vehicle) without I/O. Dataclasses are for values that have no
message (Status, Load, CapacityWindow, ...) and for the roster views dispatch ranks (Capabilities,
VehicleView; :mod:`.convert` builds them). The IntEnums below name the values this service knows, each
member taken from the generated enum, so ``int()`` and ``Enum(value)`` translate both ways.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2, geofence_pb2, health_check_pb2, lane_pb2, location_pb2
from services.runtime import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    certificate_key_id,
    from_timestamp,
    parse_name,
    to_timestamp,
)
from services.runtime.lanes import LaneFacts

__all__ = [
    "BEFORE_DEPARTURE", "DEPARTED", "HOLD", "MAX_CARGO_WEIGHT_LB", "MAX_MANIFEST_BYTES", "MAX_STOPS",
    "MISSION_SERVICE", "PROCEED", "REGION", "TERMINAL",
    "UPDATABLE_VEHICLE_FIELDS", "VEHICLE_ID", "VIN", "Action", "Availability", "Capabilities",
    "CapacityQuery", "CapacityWindow", "CheckInPoint", "CheckInPolicy", "Contingency", "DispatchPlan",
    "ExceptionKind", "Load", "ManifestFacts", "Point", "Severity", "State", "Status", "VehicleView", "acknowledge",
    "advance", "arrive", "billing_retry_delay", "capabilities_of", "capacity_query", "capacity_windows",
    "check_in_point_allowed", "check_manifest", "check_named_vehicle", "choose_contingency", "choose_vehicle",
    "complete_after_billing", "deliver", "departure_cleared", "ineligibility", "key_id_of",
    "lane_between", "location_violations", "mission_hours", "mission_status", "mission_violations", "move",
    "new_mission", "next_check_in_due", "parse_mission_name",
    "parse_vehicle_name", "plan_dispatch", "raise_exception", "raise_if", "read_manifest",
    "record_check_in", "recorded_check_ins", "refresh_check_in_due", "resolve", "resolve_exception", "resolve_open",
    "settle", "start", "text_violations", "transition", "update_vehicle", "usage",
    "validate_availability_change", "validate_capabilities", "validate_check_in", "validate_exception",
    "validate_new_vehicle", "validate_photo_digest", "validate_pre_trip_checks", "validate_proof", "validate_reason",
    "validate_resolution", "validate_vehicle_id", "validate_vehicle_update", "vehicle_violations",
    "verify_manifest_signature", "whole_minutes", "window_violations"
]

#: Vehicle ids are the fleet's own unit numbers, e.g. AU-TRK-1001 (the same as in its certificate):
#: 3 to 63 characters from [A-Z0-9-], starting with a letter (vehicle.proto).
VEHICLE_ID = re.compile(r"^[A-Z][A-Z0-9-]{2,62}$")

#: Upper bound of a vehicle's cargo capacity (US federal gross-weight limit, vehicle.proto).
MAX_CARGO_WEIGHT_LB = 80_000

def parse_vehicle_name(name: str, *, field: str = "name") -> str:
    """The id in ``vehicles/{id}``, or INVALID_ARGUMENT naming ``field``."""
    return parse_name(name, "vehicles", field=field, id_pattern=VEHICLE_ID)


def parse_mission_name(name: str, *, field: str = "name") -> str:
    """The id in ``missions/{id}``, or INVALID_ARGUMENT naming ``field``."""
    return parse_name(name, "missions", field=field)


def validate_vehicle_id(vehicle_id: str, *, field: str = "vehicle_id") -> None:
    """INVALID_ARGUMENT unless ``vehicle_id`` is a valid fleet unit number."""
    if not VEHICLE_ID.fullmatch(vehicle_id):
        raise InvalidArgument(f"{field} must be 3-63 characters of A-Z 0-9 -, starting with a letter",
                              violations=[FieldViolation(field, "3-63 of [A-Z0-9-], starting with a letter")])


# --- Geography ---------------------------------------------------------------------------------------
# Markets, distances, planning speed, night hours and known routes are the lane facts every service shares
# (services.runtime.lanes): the mission's plan and the tender's offer are one computation.

Point = tuple[float, float]

# --- Roster ------------------------------------------------------------------------------------------

_Vehicle = vehicle_pb2.Vehicle
_Mission = mission_pb2.Mission
_Exception = mission_pb2.MissionException
_CheckIn = mission_pb2.CheckIn


def _mirror(name: str, generated: EnumTypeWrapper, prefix: str, doc: str) -> type[enum.IntEnum]:
    """The generated enum as a Python IntEnum: its values without UNSPECIFIED (no mission is in it), named
    without the prefix (``State.ENROUTE``). The names and numbers are the contract's, taken from the
    descriptor: a value the proto gains is here without a change."""
    mirrored = enum.IntEnum(name, {n.removeprefix(prefix): v for n, v in generated.items() if v}, module=__name__)
    mirrored.__doc__ = doc
    return mirrored



Availability = _mirror("Availability", _Vehicle.Availability, "AVAILABILITY_", "Vehicle.Availability.")


@dataclass(frozen=True)
class Capabilities:
    """What a vehicle can haul: equipment (Equipment enum numbers), hazmat, capacity, night approval."""

    equipment: frozenset[int]
    hazmat_certified: bool
    max_cargo_weight_lb: int
    night_operations: bool


@dataclass(frozen=True)
class Load:
    """What a dispatch needs from a vehicle."""

    equipment: int
    weight_lb: int
    hazmat: bool
    night: bool


@dataclass(frozen=True)
class VehicleView:
    """The roster facts dispatch and capacity look at."""

    vehicle_id: str
    capabilities: Capabilities
    availability: Availability
    home_region: str
    #: Where the vehicle is believed to be (last reported position, else its home terminal).
    position: tuple[float, float] | None = None


def validate_capabilities(caps: Capabilities, *, prefix: str = "vehicle.capabilities") -> list[FieldViolation]:
    """Field violations of a vehicle's capabilities (empty when valid)."""
    problems = []
    if not caps.equipment or equipment_pb2.EQUIPMENT_UNSPECIFIED in caps.equipment:
        problems.append(FieldViolation(f"{prefix}.equipment", "at least one, none UNSPECIFIED"))
    if not 1 <= caps.max_cargo_weight_lb <= MAX_CARGO_WEIGHT_LB:
        problems.append(FieldViolation(f"{prefix}.max_cargo_weight_lb", f"must be 1 to {MAX_CARGO_WEIGHT_LB}"))
    return problems


def ineligibility(caps: Capabilities, load: Load) -> list[str]:
    """Why a vehicle with ``caps`` cannot haul ``load``; empty when it can (availability aside)."""
    reasons = []
    if load.equipment not in caps.equipment:
        reasons.append("EQUIPMENT")
    if load.hazmat and not caps.hazmat_certified:
        reasons.append("HAZMAT_CERTIFICATION")
    if load.weight_lb > caps.max_cargo_weight_lb:
        reasons.append("MAX_CARGO_WEIGHT")
    if load.night and not caps.night_operations:
        reasons.append("NIGHT_OPERATIONS")
    return reasons


def validate_availability_change(current: Availability, requested: Availability, *, on_mission: bool) -> None:
    """Operators set AVAILABLE, MAINTENANCE or OUT_OF_SERVICE; a vehicle on a mission only OUT_OF_SERVICE."""
    if requested == current:
        return
    if requested == Availability.ASSIGNED:
        raise InvalidArgument("availability ASSIGNED is set by dispatch only",
                              violations=[FieldViolation("vehicle.availability", "ASSIGNED is set by dispatch")])
    if on_mission and requested != Availability.OUT_OF_SERVICE:
        raise FailedPrecondition("the vehicle is on a mission: it can only be set OUT_OF_SERVICE",
                                 reason="VEHICLE_ASSIGNED")


#: The fields of a vehicle an operator sets (CreateVehicle, UpdateVehicle's update_mask).
UPDATABLE_VEHICLE_FIELDS = ("display_name", "capabilities", "home_region", "availability")


def capabilities_of(caps: vehicle_pb2.VehicleCapabilities) -> Capabilities:
    return Capabilities(frozenset(caps.equipment), caps.hazmat_certified, caps.max_cargo_weight_lb,
                        caps.night_operations)


def vehicle_violations(vehicle: vehicle_pb2.Vehicle, fields: Sequence[str]) -> list[FieldViolation]:
    """Field violations of the operator-set ``fields`` of ``vehicle`` (empty when valid)."""
    problems = []
    if "capabilities" in fields:
        problems += validate_capabilities(capabilities_of(vehicle.capabilities))
    if "home_region" in fields and not REGION.match(vehicle.home_region):
        problems.append(FieldViolation("vehicle.home_region", "a market code such as US-TX-HOU"))
    if "display_name" in fields:
        problems += text_violations(vehicle.display_name, 100, "vehicle.display_name")
    if "availability" in fields and vehicle.availability == _Vehicle.AVAILABILITY_ASSIGNED:
        problems.append(FieldViolation("vehicle.availability", "ASSIGNED is set by dispatch only"))
    return problems


def validate_new_vehicle(vehicle_id: str, vehicle: vehicle_pb2.Vehicle) -> None:
    """INVALID_ARGUMENT unless CreateVehicle's id and vehicle are valid."""
    validate_vehicle_id(vehicle_id)
    problems = vehicle_violations(vehicle, UPDATABLE_VEHICLE_FIELDS)
    if vehicle.vin and not VIN.fullmatch(vehicle.vin):
        problems.append(FieldViolation("vehicle.vin", "17 characters, ISO 3779 (no I, O, Q)"))
    raise_if(problems)


def validate_vehicle_update(vehicle: vehicle_pb2.Vehicle, mask: Sequence[str]) -> tuple[str, ...]:
    """The paths UpdateVehicle changes (an empty mask or ``*``: all updatable fields); INVALID_ARGUMENT for
    a path that is not updatable or an invalid value."""
    paths = tuple(mask)
    if not paths or paths == ("*",):
        paths = UPDATABLE_VEHICLE_FIELDS
    raise_if([FieldViolation("update_mask", f"{p!r} is not updatable") for p in paths
              if p not in UPDATABLE_VEHICLE_FIELDS])
    raise_if(vehicle_violations(vehicle, paths))
    return paths


def update_vehicle(vehicle: vehicle_pb2.Vehicle, given: vehicle_pb2.Vehicle, paths: Sequence[str]) -> bool:
    """Apply the ``paths`` of ``given`` to ``vehicle``; whether anything changed."""
    before = vehicle.SerializeToString(deterministic=True)
    if "availability" in paths:
        requested = Availability(given.availability or Availability.AVAILABLE)
        validate_availability_change(Availability(vehicle.availability), requested,
                                     on_mission=bool(vehicle.current_mission))
        vehicle.availability = requested
    for path in ("display_name", "home_region"):
        if path in paths:
            setattr(vehicle, path, getattr(given, path))
    if "capabilities" in paths:
        vehicle.capabilities.CopyFrom(given.capabilities)
    return vehicle.SerializeToString(deterministic=True) != before


def _position(vehicle: VehicleView, facts: LaneFacts) -> Point | None:
    if vehicle.position:
        return vehicle.position
    home = facts.market(vehicle.home_region)
    return None if home is None else (home.lat, home.lon)


def _deadhead_miles(vehicle: VehicleView, origin: Point, facts: LaneFacts) -> float:
    position = _position(vehicle, facts)
    return math.inf if position is None else facts.road_miles(position, origin)


def choose_vehicle(vehicles: Iterable[VehicleView], load: Load, origin: Point, facts: LaneFacts) -> list[VehicleView]:
    """Dispatch candidates, best first: AVAILABLE and able to haul the load, nearest to the origin.

    Ties break on the vehicle id so that dispatch is deterministic. The caller reserves the first it
    can (another dispatch may take one meanwhile) and tries the next.
    """
    fit = [v for v in vehicles if v.availability == Availability.AVAILABLE and not ineligibility(v.capabilities, load)]
    return sorted(fit, key=lambda v: (_deadhead_miles(v, origin, facts), v.vehicle_id))


@dataclass(frozen=True)
class CapacityWindow:
    """From ``start`` to ``end`` (exclusive), ``vehicle_count`` eligible vehicles can be at the origin."""

    start: datetime
    end: datetime
    vehicle_count: int


def capacity_windows(vehicles: Iterable[VehicleView], load: Load, origin: Point,
                     window_start: datetime, window_end: datetime, now: datetime, facts: LaneFacts
                     ) -> tuple[list[CapacityWindow], int]:
    """(non-overlapping windows, earliest first; number of roster vehicles whose capabilities fit).

    Each AVAILABLE eligible vehicle can be at the origin from ``now`` plus its deadhead at the planning speed
    onwards (a vehicle without a known position counts from the window start). Sorting those times
    within the pickup window gives steps: from the k-th arrival on, k vehicles can be there. Vehicles on
    a mission, in maintenance or out of service are not counted: when they free up is not known yet.
    """
    vehicles = list(vehicles)
    eligible = [v for v in vehicles if not ineligibility(v.capabilities, load)]
    arrivals = []
    for v in eligible:
        if v.availability != Availability.AVAILABLE:
            continue
        miles = _deadhead_miles(v, origin, facts)
        ready = window_start if math.isinf(miles) else now + timedelta(hours=miles / facts.planning_speed_mph)
        ready = max(ready, window_start)
        if ready < window_end:
            arrivals.append(ready.replace(microsecond=0))
    arrivals.sort()
    windows: list[CapacityWindow] = []
    for i, t in enumerate(arrivals):
        if i + 1 < len(arrivals) and arrivals[i + 1] == t:
            continue  # several vehicles arrive at once: one step
        end = arrivals[i + 1] if i + 1 < len(arrivals) else window_end
        windows.append(CapacityWindow(t, end, i + 1))
    return windows, len(eligible)


@dataclass(frozen=True)
class CapacityQuery:
    """GetFleetCapacity's question, checked: can vehicles for ``load`` be at ``origin`` in [start, end)?"""

    origin: Point
    destination: Point
    load: Load
    start: datetime
    end: datetime


def capacity_query(request: mission_service_pb2.GetFleetCapacityRequest) -> CapacityQuery:
    """The checked question of a GetFleetCapacity request, or INVALID_ARGUMENT with every violation."""
    start, end = from_timestamp(request.pickup_window.start_time), from_timestamp(request.pickup_window.end_time)
    problems = [*location_violations(request.origin.lat, request.origin.lon, "origin"),
                *location_violations(request.destination.lat, request.destination.lon, "destination"),
                *window_violations(start, end, "pickup_window", required=True)]
    if not request.equipment:
        problems.append(FieldViolation("equipment", "is required"))
    if not 1 <= request.weight_lb <= MAX_CARGO_WEIGHT_LB:
        problems.append(FieldViolation("weight_lb", f"must be 1 to {MAX_CARGO_WEIGHT_LB}"))
    raise_if(problems)
    assert start is not None and end is not None  # window_violations(required=True) refused the rest
    load = Load(request.equipment, request.weight_lb, bool(request.hazmat.un_number), request.night_operation)
    return CapacityQuery((request.origin.lat, request.origin.lon),
                         (request.destination.lat, request.destination.lon), load, start, end)


# --- Dispatch ----------------------------------------------------------------------------------------

def lane_between(origin: Point, destination: Point, facts: LaneFacts) -> lane_pb2.Lane:
    """The lane (market to market) of a move from ``origin`` to ``destination``: the markets whose service areas
    hold them (the tender's rule), else the nearest (an operator's mission outside every service area)."""
    def code(point: Point) -> str:
        return (facts.market_for(*point) or facts.nearest_market(*point)).code

    return lane_pb2.Lane(origin_region=code(origin), destination_region=code(destination))


def mission_violations(given: mission_pb2.Mission) -> list[FieldViolation]:
    """Field violations of CreateMission's mission (empty when valid)."""
    problems = []
    for path, value, collection in (("mission.tender", given.tender, "tenders"),
                                    ("mission.quote", given.quote, "quotes")):
        try:
            parse_name(value, collection, field=path)
        except InvalidArgument as exc:
            problems += exc.violations
    load = given.load
    problems += text_violations(load.tms_load_id, 100, "mission.load.tms_load_id", required=True)
    problems += text_violations(load.special_instructions, 2000, "mission.load.special_instructions")
    if not load.equipment:
        problems.append(FieldViolation("mission.load.equipment", "is required"))
    if not 1 <= load.weight_lb <= MAX_CARGO_WEIGHT_LB:
        problems.append(FieldViolation("mission.load.weight_lb", f"must be 1 to {MAX_CARGO_WEIGHT_LB}"))
    if load.HasField("hazmat") and not (load.hazmat.un_number and load.hazmat.hazard_class):
        problems.append(FieldViolation("mission.load.hazmat", "un_number and hazard_class are required"))
    stops = given.stops
    if not 2 <= len(stops) <= MAX_STOPS:
        problems.append(FieldViolation("mission.stops", f"2 to {MAX_STOPS} stops"))
    for i, stop in enumerate(stops):
        path = f"mission.stops[{i}]"
        if not stop.type:
            problems.append(FieldViolation(f"{path}.type", "is required"))
        problems += location_violations(stop.location.lat, stop.location.lon, f"{path}.location")
        problems += window_violations(from_timestamp(stop.planned_window.start_time),
                                      from_timestamp(stop.planned_window.end_time), f"{path}.planned_window",
                                      required=False)
        shape = stop.geofence.WhichOneof("shape")
        if shape == "circle" and not 10 <= stop.geofence.circle.radius_meters <= 50_000:
            problems.append(FieldViolation(f"{path}.geofence.circle.radius_meters", "must be 10 to 50000"))
        if shape == "polygon" and len(stop.geofence.polygon.vertices) < 3:
            problems.append(FieldViolation(f"{path}.geofence.polygon.vertices", "at least 3"))
    if stops and stops[0].type != mission_pb2.Stop.TYPE_PICKUP:
        problems.append(FieldViolation("mission.stops[0].type", "the first stop is the PICKUP"))
    if len(stops) >= 2 and stops[-1].type != mission_pb2.Stop.TYPE_DELIVERY:
        problems.append(FieldViolation(f"mission.stops[{len(stops) - 1}].type", "the last stop is the DELIVERY"))
    if given.vehicle:
        try:
            parse_vehicle_name(given.vehicle, field="mission.vehicle")
        except InvalidArgument as exc:
            problems += exc.violations
    return problems


@dataclass(frozen=True)
class DispatchPlan:
    """What dispatch needs to know of a requested mission before it picks a vehicle."""

    lane: lane_pb2.Lane
    route_miles: float
    load: Load
    origin: Point
    #: The road the mission follows (a known route's geometry), empty off the known routes.
    route_points: tuple[Point, ...] = ()


def plan_dispatch(given: mission_pb2.Mission, now: datetime, facts: LaneFacts) -> DispatchPlan:
    """Lane, planned route and miles (the lane facts' plan: the same miles the tender's offer quoted) and the
    load's needs (night operation over the planned pickup-to-delivery span, in the origin market's time zone)."""
    stops = given.stops
    points = [(s.location.lat, s.location.lon) for s in stops]
    origin, destination = points[0], points[-1]
    planned = facts.plan(points)
    pickup_start = from_timestamp(stops[0].planned_window.start_time) or now
    delivery_end = (from_timestamp(stops[-1].planned_window.end_time)
                    or pickup_start + facts.transit(planned.miles))
    load = Load(given.load.equipment, given.load.weight_lb, given.load.HasField("hazmat"),
                facts.touches_night(pickup_start, delivery_end, facts.timezone_at(*origin)))
    return DispatchPlan(lane_between(origin, destination, facts), planned.miles, load, origin, planned.points)


def check_named_vehicle(vehicle: VehicleView, load: Load, name: str) -> None:
    """FAILED_PRECONDITION VEHICLE_NOT_ELIGIBLE unless the vehicle a dispatch names can take the load now."""
    lacking = ineligibility(vehicle.capabilities, load)
    if lacking or vehicle.availability != Availability.AVAILABLE:
        why = ", ".join(lacking) or f"availability {vehicle.availability.name}"
        raise FailedPrecondition(f"{name} cannot take the load: {why}", reason="VEHICLE_NOT_ELIGIBLE",
                                 metadata={"vehicle": name, "lacking": ",".join(lacking)})


def new_mission(given: mission_pb2.Mission, *, name: str, carrier_id: str, vehicle_id: str, plan: DispatchPlan,
                lane_ordinal: int, policy: CheckInPolicy, geofence_radius_meters: float, now: datetime,
                etag: str) -> mission_pb2.Mission:
    """The DISPATCHED mission for ``given`` on ``vehicle_id``: planned route, stop geofences (a circle of
    ``geofence_radius_meters`` for a stop without one) and the lane's check-in requirement."""
    stamp = to_timestamp(now)
    mission = _Mission(name=name, carrier=f"carriers/{carrier_id}", tender=given.tender, quote=given.quote,
                       vehicle=f"vehicles/{vehicle_id}", load=given.load, lane=plan.lane, route_miles=plan.route_miles,
                       state=_Mission.STATE_DISPATCHED, dispatch_time=stamp, create_time=stamp, update_time=stamp,
                       etag=etag)
    mission.planned_route.extend(location_pb2.Location(lat=lat, lon=lon) for lat, lon in plan.route_points)
    for stop in given.stops:
        added = mission.stops.add(type=stop.type, location=stop.location)
        if stop.HasField("planned_window"):
            added.planned_window.CopyFrom(stop.planned_window)
        if stop.HasField("geofence"):
            added.geofence.CopyFrom(stop.geofence)
        else:
            added.geofence.CopyFrom(geofence_pb2.Geofence(circle=geofence_pb2.Geofence.Circle(
                center=stop.location, radius_meters=geofence_radius_meters)))
    requirement = mission.check_in_requirement
    requirement.lane_mission_ordinal = lane_ordinal
    requirement.lane_mission_threshold = policy.threshold
    requirement.required = policy.required(lane_ordinal)
    if requirement.required:
        requirement.points.extend(int(p) for p in policy.points)
        requirement.enroute_interval.FromTimedelta(policy.enroute_interval)
    refresh_check_in_due(mission, policy, now)
    return mission


# --- Mission state machine ---------------------------------------------------------------------------

State = _mirror("State", _Mission.State, "STATE_", "Mission.State.")


TERMINAL = frozenset({State.COMPLETED, State.CANCELLED, State.ABORTED})
BEFORE_DEPARTURE = frozenset({State.DISPATCHED, State.PRE_TRIP})
DEPARTED = frozenset({State.ENROUTE, State.ARRIVED})


ExceptionKind = _mirror("ExceptionKind", _Exception.Kind, "KIND_", "MissionException.Kind.")


Severity = _mirror("Severity", _Exception.Severity, "SEVERITY_",
                   "MissionException.Severity (UNSPECIFIED is treated as WARNING).")


Contingency = _mirror("Contingency", _Exception.Contingency, "CONTINGENCY_", "MissionException.Contingency.")


@dataclass(frozen=True)
class Status:
    """Where a mission is: its state, the state it resumes to from EXCEPTION, its open exception kinds."""

    state: State
    resume: State | None = None
    open_exceptions: tuple[ExceptionKind, ...] = ()

    @property
    def effective(self) -> State:
        """The state the mission is in, seen through EXCEPTION."""
        return self.resume if self.state == State.EXCEPTION and self.resume else self.state

    @property
    def departed(self) -> bool:
        return self.effective not in BEFORE_DEPARTURE


class Action(enum.Enum):
    """The transitions of the operator / service API."""

    ACKNOWLEDGE = "acknowledge"
    START = "start"
    ARRIVE = "arrive"
    DELIVER = "deliver"
    COMPLETE = "complete"
    CANCEL = "cancel"
    ABORT = "abort"
    RAISE = "raise"
    RESOLVE_LAST = "resolve_last"


#: Plain transitions: action → (from states, to state).
_PLAIN: dict[Action, tuple[frozenset[State], State]] = {
    Action.ACKNOWLEDGE: (frozenset({State.DISPATCHED}), State.PRE_TRIP),
    Action.START: (frozenset({State.PRE_TRIP}), State.ENROUTE),
    Action.ARRIVE: (frozenset({State.ENROUTE}), State.ARRIVED),
    Action.DELIVER: (frozenset({State.ARRIVED}), State.DELIVERED),
    Action.COMPLETE: (frozenset({State.DELIVERED}), State.COMPLETED),
    Action.CANCEL: (BEFORE_DEPARTURE, State.CANCELLED),
    Action.ABORT: (DEPARTED, State.ABORTED),
}


def _illegal(status: Status, action: Action) -> FailedPrecondition:
    return FailedPrecondition(f"{action.value} is not allowed in state {status.state.name}"
                              + (f" (resuming to {status.resume.name})" if status.resume else ""),
                              reason="INVALID_MISSION_STATE", metadata={"state": f"STATE_{status.state.name}"})


def transition(status: Status, action: Action) -> Status | None:
    """The status after ``action``, None when the action repeats the one that produced the current state
    (a safe retry: nothing changes), or FAILED_PRECONDITION INVALID_MISSION_STATE when illegal.

    RAISE adds an open exception (the server knows which; here only the state moves). RESOLVE_LAST resolves
    the last open exception: the mission returns to ``resume``. START from EXCEPTION resolves the open
    PRE_TRIP_FAILURE exceptions.
    """
    state, resume = status.state, status.resume
    if action == Action.RAISE:
        if state in TERMINAL or state == State.DELIVERED:
            raise _illegal(status, action)
        return Status(State.EXCEPTION, resume if state == State.EXCEPTION else state, status.open_exceptions)
    if action == Action.RESOLVE_LAST:
        if state != State.EXCEPTION or resume is None:
            raise _illegal(status, action)
        return Status(resume)
    sources, target = _PLAIN[action]
    if state == target:
        return None
    if state in sources:
        return Status(target)
    if state == State.EXCEPTION and resume is not None:
        if action == Action.ARRIVE and resume == State.ENROUTE:
            return Status(State.EXCEPTION, State.ARRIVED, status.open_exceptions)
        if action == Action.ARRIVE and resume == State.ARRIVED:
            return None
        if action == Action.CANCEL and resume in BEFORE_DEPARTURE:
            return Status(State.CANCELLED)
        if action == Action.ABORT and resume in DEPARTED:
            return Status(State.ABORTED)
        if (action == Action.START and resume == State.PRE_TRIP and status.open_exceptions
                and all(k == ExceptionKind.PRE_TRIP_FAILURE for k in status.open_exceptions)):
            return Status(State.ENROUTE)
    raise _illegal(status, action)


def choose_contingency(kind: ExceptionKind, severity: Severity, *, departed: bool) -> Contingency:
    """The fleet's rule for an exception raised without a contingency (RaiseMissionException)."""
    if kind in (ExceptionKind.SENSOR_FAULT, ExceptionKind.VEHICLE_FAULT, ExceptionKind.ADVERSE_WEATHER):
        return Contingency.MINIMAL_RISK_STOP if severity == Severity.CRITICAL else Contingency.CONTINUE
    if kind in (ExceptionKind.ROAD_CLOSURE, ExceptionKind.TRAFFIC_INCIDENT):
        return Contingency.REROUTE
    if kind in (ExceptionKind.LAW_ENFORCEMENT_STOP, ExceptionKind.CARGO):
        return Contingency.HUMAN_TAKEOVER
    if kind in (ExceptionKind.PRE_TRIP_FAILURE, ExceptionKind.DISPATCH_TIMEOUT, ExceptionKind.CHECK_IN_HOLD):
        return Contingency.MINIMAL_RISK_STOP if departed else Contingency.HOLD
    return Contingency.CONTINUE  # CONNECTIVITY_LOSS drives on autonomously; OTHER is monitored


# --- Mission changes ---------------------------------------------------------------------------------
# Each takes the mission as read, changes it in place and says what happened; the caller announces it.

#: Who resolves the exceptions left open when a mission is cancelled or aborted.
MISSION_SERVICE = "spiffe://haulmesh.local/service/mission"


def mission_status(mission: mission_pb2.Mission) -> Status:
    """The state-machine view of a mission: its state, resume state and open exception kinds."""
    open_kinds = tuple(ExceptionKind(e.kind) for e in mission.exceptions if not e.HasField("resolve_time"))
    return Status(State(mission.state), State(mission.resume_state) if mission.resume_state else None, open_kinds)


def move(mission: mission_pb2.Mission, status: Status) -> None:
    mission.state = int(status.state)
    mission.resume_state = int(status.resume) if status.resume else 0


def resolve(exc: mission_pb2.MissionException, resolution: str, who: str, when: datetime) -> None:
    exc.resolution = resolution
    exc.resolved_by = who
    exc.resolve_time.CopyFrom(to_timestamp(when))


def resolve_open(mission: mission_pb2.Mission, resolution: str, who: str, when: datetime
                 ) -> list[mission_pb2.MissionException]:
    """Resolve every open exception of the mission; the ones resolved, in order."""
    resolved = [exc for exc in mission.exceptions if not exc.HasField("resolve_time")]
    for exc in resolved:
        resolve(exc, resolution, who, when)
    return resolved


def settle(mission: mission_pb2.Mission, policy: CheckInPolicy, now: datetime) -> None:
    """After any change: when the next check-in is due, and the end time of a mission just ended."""
    refresh_check_in_due(mission, policy, now)
    if mission.state in TERMINAL and not mission.HasField("end_time"):
        mission.end_time.CopyFrom(to_timestamp(now))


def advance(mission: mission_pb2.Mission, action: Action, now: datetime, *, reason: str = "",
            record: Callable[[mission_pb2.Mission], None] | None = None
            ) -> list[mission_pb2.MissionException] | None:
    """A plain transition (acknowledge, arrive, complete, cancel, abort): None when it repeats the one that
    produced the current state (nothing changes), else the exceptions it resolved (a cancel or abort
    resolves those still open). ``record`` notes the transition's facts on the mission first."""
    after = transition(mission_status(mission), action)
    if after is None:
        return None
    if record is not None:
        record(mission)
    resolved = []
    if after.state in (State.CANCELLED, State.ABORTED):
        resolved = resolve_open(mission, f"mission {after.state.name.lower()}", MISSION_SERVICE, now)
        mission.state_reason = reason
    move(mission, after)
    return resolved


def acknowledge(mission: mission_pb2.Mission, ack_time: Timestamp, now: datetime
                ) -> list[mission_pb2.MissionException] | None:
    return advance(mission, Action.ACKNOWLEDGE, now, record=lambda m: m.dispatch_ack_time.CopyFrom(ack_time))


def arrive(mission: mission_pb2.Mission, arrive_time: Timestamp, now: datetime
           ) -> list[mission_pb2.MissionException] | None:
    def record(m: mission_pb2.Mission) -> None:
        last = m.stops[-1]
        last.arrive_time.CopyFrom(arrive_time)
        last.ClearField("estimated_arrive_time")

    return advance(mission, Action.ARRIVE, now, record=record)


#: Cancel and abort reasons: (at most this many characters, required).
_REASONS = {Action.CANCEL: (500, False), Action.ABORT: (1000, True)}


def validate_reason(action: Action, reason: str) -> None:
    limit, required = _REASONS[action]
    raise_if(text_violations(reason, limit, "reason", required=required))


def validate_pre_trip_checks(checks: Sequence[health_check_pb2.HealthCheckResult]) -> None:
    problems = [] if checks else [FieldViolation("pre_trip_checks", "at least one")]
    for i, check in enumerate(checks):
        problems += text_violations(check.check, 100, f"pre_trip_checks[{i}].check", required=True)
        if not check.outcome:
            problems.append(FieldViolation(f"pre_trip_checks[{i}].outcome", "is required"))
    raise_if(problems)


def start(mission: mission_pb2.Mission, checks: Sequence[health_check_pb2.HealthCheckResult], who: str,
          now: datetime) -> list[mission_pb2.MissionException] | None:
    """Depart after pre-trip ``checks``: None when already started, else the exceptions resolved (from
    EXCEPTION, passing checks resolve the pre-trip failures). A failed blocking check, or a required
    DEPARTURE check-in without PROCEED, refuses with FAILED_PRECONDITION."""
    after = transition(mission_status(mission), Action.START)
    if after is None:
        return None
    failed = next((c for c in checks
                   if c.blocking and c.outcome == health_check_pb2.HealthCheckResult.OUTCOME_FAIL), None)
    if failed is not None:
        raise FailedPrecondition(f"blocking pre-trip check {failed.check!r} failed: {failed.detail}",
                                 reason="PRE_TRIP_CHECK_FAILED", metadata={"check": failed.check})
    if mission.check_in_requirement.required and not departure_cleared(
            [(p, o) for p, o, _ in recorded_check_ins(mission, now)]):
        raise FailedPrecondition("this mission needs a DEPARTURE check-in with outcome PROCEED first",
                                 reason="CHECK_IN_REQUIRED")
    resolved = resolve_open(mission, "pre-trip checks passed", who, now)
    del mission.pre_trip_checks[:]
    mission.pre_trip_checks.extend(checks)
    mission.start_time.CopyFrom(to_timestamp(now))
    pickup = mission.stops[0]
    if not pickup.HasField("arrive_time"):
        pickup.arrive_time.CopyFrom(mission.dispatch_ack_time if mission.HasField("dispatch_ack_time")
                                    else to_timestamp(now))
    if not pickup.HasField("depart_time"):
        pickup.depart_time.CopyFrom(to_timestamp(now))
    move(mission, after)
    return resolved


def complete_after_billing(mission: mission_pb2.Mission) -> bool:
    """DELIVERED → COMPLETED once billing recorded the usage; False if an operator completed it meanwhile."""
    if mission.state != State.DELIVERED:
        return False
    after = transition(mission_status(mission), Action.COMPLETE)
    assert after is not None  # DELIVERED → COMPLETED is a move, never a repeat
    move(mission, after)
    mission.state_reason = "usage recorded by billing"
    return True


def validate_exception(given: mission_pb2.MissionException) -> None:
    """INVALID_ARGUMENT unless RaiseMissionException's exception is valid and its enums known here."""
    problems = [] if given.kind else [FieldViolation("exception.kind", "is required")]
    # A client built from newer contracts may send a value this service does not know yet.
    enums = (("kind", given.kind, ExceptionKind), ("severity", given.severity, Severity),
             ("contingency", given.contingency, Contingency))
    problems += [FieldViolation(f"exception.{name}", f"unknown value {value}") for name, value, known in enums
                 if value and value not in {int(member) for member in known}]
    problems += text_violations(given.description, 1000, "exception.description")
    if len(given.reroute_waypoints) > 100:
        problems.append(FieldViolation("exception.reroute_waypoints", "at most 100"))
    if given.reroute_waypoints and given.contingency not in (Contingency.REROUTE, 0):
        problems.append(FieldViolation("exception.reroute_waypoints", "only for REROUTE"))
    raise_if(problems)


def raise_exception(mission: mission_pb2.Mission, given: mission_pb2.MissionException, who: str, now: datetime
                    ) -> tuple[mission_pb2.MissionException, bool]:
    """Record ``given`` as a new open exception (the fleet's contingency when none is given; a REROUTE with
    waypoints replaces the planned route) and move the mission to EXCEPTION. Returns the exception as
    recorded and whether the mission's state changed."""
    status = mission_status(mission)
    after = transition(status, Action.RAISE)
    assert after is not None  # RAISE always moves or refuses
    severity = Severity(given.severity or Severity.WARNING)
    contingency = given.contingency or choose_contingency(ExceptionKind(given.kind), severity,
                                                          departed=status.departed)
    exc = mission.exceptions.add(
        exception_id=f"exc-{len(mission.exceptions) + 1}", kind=given.kind, severity=int(severity),
        contingency=int(Contingency(contingency)), description=given.description,
        reroute_waypoints=given.reroute_waypoints, frame_sequence=given.frame_sequence, raised_by=who,
        raise_time=to_timestamp(now))
    if given.HasField("location"):
        exc.location.CopyFrom(given.location)
    if exc.contingency == Contingency.REROUTE and given.reroute_waypoints:
        # The new plan: from where the vehicle was told to go, on to the destination.
        del mission.planned_route[:]
        mission.planned_route.extend([*given.reroute_waypoints, mission.stops[-1].location])
    move(mission, after)
    return exc, after.state != status.state


def validate_resolution(exception_id: str, resolution: str) -> None:
    raise_if(text_violations(exception_id, 64, "exception_id", required=True)
             + text_violations(resolution, 1000, "resolution", required=True))


def resolve_exception(mission: mission_pb2.Mission, exception_id: str, resolution: str, who: str, now: datetime
                      ) -> tuple[mission_pb2.MissionException, bool] | None:
    """Resolve one exception (NOT_FOUND if the mission has no such exception); resolving the last open one
    returns the mission to its resume state. None when it was resolved already (that succeeds without
    change), else the exception and whether the mission's state changed."""
    exc = next((e for e in mission.exceptions if e.exception_id == exception_id), None)
    if exc is None:
        raise NotFound(f"{mission.name} has no exception {exception_id!r}", reason="EXCEPTION_NOT_FOUND",
                       metadata={"exception_id": exception_id})
    if exc.HasField("resolve_time"):
        return None
    resolve(exc, resolution, who, now)
    if mission_status(mission).open_exceptions:
        return exc, False
    after = transition(mission_status(mission), Action.RESOLVE_LAST)
    assert after is not None  # RESOLVE_LAST always moves or refuses
    move(mission, after)
    return exc, True


# --- Human in the loop -------------------------------------------------------------------------------

CheckInPoint = _mirror("CheckInPoint", _CheckIn.Point, "POINT_", "CheckIn.Point.")


PROCEED, HOLD = _CheckIn.OUTCOME_PROCEED, _CheckIn.OUTCOME_HOLD


@dataclass(frozen=True)
class CheckInPolicy:
    """The pilot policy: a lane's first ``threshold`` missions need check-ins every ``enroute_interval``."""

    threshold: int = 30
    enroute_interval: timedelta = timedelta(hours=1)
    points: tuple[CheckInPoint, ...] = field(default=(CheckInPoint.DEPARTURE, CheckInPoint.ENROUTE,
                                                      CheckInPoint.ARRIVAL))

    def required(self, lane_ordinal: int) -> bool:
        return 1 <= lane_ordinal <= self.threshold


def check_in_point_allowed(status: Status, point: CheckInPoint) -> None:
    """A check-in is recorded at the point the mission is at; anything else is INVALID_MISSION_STATE."""
    effective = status.effective
    allowed = {CheckInPoint.DEPARTURE: BEFORE_DEPARTURE, CheckInPoint.ENROUTE: frozenset({State.ENROUTE}),
               CheckInPoint.ARRIVAL: frozenset({State.ARRIVED})}[point]
    if status.state in TERMINAL or effective not in allowed:
        raise FailedPrecondition(f"a {point.name} check-in is not possible in state {status.state.name}",
                                 reason="INVALID_MISSION_STATE", metadata={"state": f"STATE_{status.state.name}"})


def departure_cleared(check_ins: Sequence[tuple[CheckInPoint, int]]) -> bool:
    """True if the latest DEPARTURE check-in says PROCEED (a later HOLD takes a PROCEED back)."""
    outcomes = [outcome for point, outcome in check_ins if point == CheckInPoint.DEPARTURE]
    return bool(outcomes) and outcomes[-1] == PROCEED


def next_check_in_due(policy: CheckInPolicy, state: Status, *, planned_pickup: datetime | None,
                      start_time: datetime | None, arrive_time: datetime | None,
                      check_ins: Sequence[tuple[CheckInPoint, int, datetime]]) -> datetime | None:
    """When the next required check-in is due, None when none is pending.

    DEPARTURE: due at the planned pickup (or now-ish: the pickup start) until a PROCEED is recorded.
    ENROUTE: every ``enroute_interval`` after departure or the latest en-route check-in.
    ARRIVAL: due on arrival until recorded. Nothing after delivery or at a terminal state.
    """
    effective = state.effective
    if state.state in TERMINAL or effective == State.DELIVERED:
        return None
    if effective in BEFORE_DEPARTURE:
        if departure_cleared([(p, o) for p, o, _ in check_ins]):
            return None
        return planned_pickup
    if effective == State.ENROUTE and start_time is not None:
        enroute = [t for p, _, t in check_ins if p == CheckInPoint.ENROUTE]
        return max([start_time, *enroute]) + policy.enroute_interval
    if effective == State.ARRIVED:
        if any(p == CheckInPoint.ARRIVAL for p, _, _ in check_ins):
            return None
        return arrive_time
    return None


def recorded_check_ins(mission: mission_pb2.Mission, now: datetime) -> list[tuple[CheckInPoint, int, datetime]]:
    """The mission's check-ins as (point, outcome, record time; ``now`` when unrecorded)."""
    return [(CheckInPoint(c.point), c.outcome, from_timestamp(c.record_time) or now) for c in mission.check_ins]


def refresh_check_in_due(mission: mission_pb2.Mission, policy: CheckInPolicy, now: datetime) -> None:
    """Set (or clear) the mission's ``check_in_requirement.next_due_time`` from its current state."""
    requirement = mission.check_in_requirement
    if not requirement.required:
        return
    due = next_check_in_due(
        policy, mission_status(mission),
        planned_pickup=from_timestamp(mission.stops[0].planned_window.start_time)
        or from_timestamp(mission.dispatch_time), start_time=from_timestamp(mission.start_time),
        arrive_time=from_timestamp(mission.stops[-1].arrive_time), check_ins=recorded_check_ins(mission, now))
    if due is None:
        requirement.ClearField("next_due_time")
    else:
        requirement.next_due_time.CopyFrom(to_timestamp(due))


def validate_check_in(given: mission_pb2.CheckIn) -> None:
    problems = [] if given.point else [FieldViolation("check_in.point", "is required")]
    if not given.outcome:
        problems.append(FieldViolation("check_in.outcome", "is required"))
    problems += text_violations(given.notes, 1000, "check_in.notes")
    raise_if(problems)


def record_check_in(mission: mission_pb2.Mission, given: mission_pb2.CheckIn, who: str, now: datetime
                    ) -> tuple[mission_pb2.CheckIn, mission_pb2.MissionException | None]:
    """Record a check-in at the point the mission is at; with it, the CHECK_IN_HOLD exception to raise when
    its outcome is HOLD (None otherwise)."""
    check_in_point_allowed(mission_status(mission), CheckInPoint(given.point))
    check_in = mission.check_ins.add(check_in_id=f"chk-{len(mission.check_ins) + 1}", point=given.point,
                                     outcome=given.outcome, notes=given.notes, recorded_by=who,
                                     record_time=to_timestamp(now))
    if given.outcome != HOLD:
        return check_in, None
    return check_in, _Exception(kind=_Exception.KIND_CHECK_IN_HOLD, severity=_Exception.SEVERITY_WARNING,
                                description=f"check-in {check_in.check_in_id} HOLD: {given.notes}"[:1000])


# --- Proof of delivery -------------------------------------------------------------------------------

def key_id_of(certificate_pem: bytes) -> str:
    """Lowercase hex SHA-256 of the certificate's DER SubjectPublicKeyInfo (the frames' key id)."""
    return certificate_key_id(certificate_pem)


def verify_manifest_signature(certificate_pem: bytes, manifest: bytes, signature: bytes, key_id: str) -> None:
    """INVALID_ARGUMENT POD_SIGNATURE_INVALID unless ``signature`` is the certificate key's ECDSA P-256 /
    SHA-256 signature over exactly ``manifest`` and ``key_id`` names that key."""
    def invalid(why: str, path: str) -> InvalidArgument:
        return InvalidArgument(f"proof of delivery rejected: {why}", reason="POD_SIGNATURE_INVALID",
                               violations=[FieldViolation(f"proof_of_delivery.{path}", why)])

    cert = x509.load_pem_x509_certificate(certificate_pem)
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise invalid("the vehicle certificate key is not ECDSA P-256", "key_id")
    if key_id != key_id_of(certificate_pem):
        raise invalid("key_id is not the vehicle certificate's key", "key_id")
    try:
        public_key.verify(signature, manifest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise invalid("the signature does not verify over the manifest bytes", "manifest_signature") from None


@dataclass(frozen=True)
class ManifestFacts:
    """The parts of a decoded DeliveryManifest the rules check."""

    mission_id: str
    vehicle_id: str
    tms_load_id: str
    photo_sha256: tuple[str, ...]
    deliver_time: datetime | None


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_manifest(facts: ManifestFacts, *, mission_id: str, vehicle_id: str, tms_load_id: str,
                   photo_sha256: Sequence[str]) -> None:
    """The manifest must name this mission, its vehicle and load, and list the photos' digests in order."""
    problems = []
    if facts.mission_id != mission_id:
        problems.append(FieldViolation("proof_of_delivery.manifest", "names another mission"))
    if facts.vehicle_id != vehicle_id:
        problems.append(FieldViolation("proof_of_delivery.manifest", "names another vehicle"))
    if facts.tms_load_id != tms_load_id:
        problems.append(FieldViolation("proof_of_delivery.manifest", "names another load"))
    if facts.deliver_time is None:
        problems.append(FieldViolation("proof_of_delivery.manifest", "deliver_time is required"))
    if tuple(photo_sha256) != facts.photo_sha256:
        problems.append(FieldViolation("proof_of_delivery.photos", "sha256 values differ from the manifest's"))
    if problems:
        raise InvalidArgument("the delivery manifest does not match the mission", reason="POD_SIGNATURE_INVALID",
                              violations=problems)


def validate_photo_digest(value: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(value))


#: Largest signed DeliveryManifest a truck may submit.
MAX_MANIFEST_BYTES = 64 * 1024


def validate_proof(proof: mission_pb2.ProofOfDelivery) -> None:
    """INVALID_ARGUMENT unless the proof's fields are well-formed (the signature is checked later)."""
    problems = []
    if not proof.manifest or len(proof.manifest) > MAX_MANIFEST_BYTES:
        problems.append(FieldViolation("proof_of_delivery.manifest", "1 byte to 64 KiB"))
    if not proof.manifest_signature:
        problems.append(FieldViolation("proof_of_delivery.manifest_signature", "is required"))
    if not validate_photo_digest(proof.key_id):
        problems.append(FieldViolation("proof_of_delivery.key_id", "64 lowercase hex characters"))
    if len(proof.photos) > 20:
        problems.append(FieldViolation("proof_of_delivery.photos", "at most 20"))
    for i, photo in enumerate(proof.photos):
        if not photo.uri.startswith(("https://", "s3://")) or len(photo.uri) > 2048:
            problems.append(FieldViolation(f"proof_of_delivery.photos[{i}].uri", "an https:// or s3:// URI"))
        if not validate_photo_digest(photo.sha256):
            problems.append(FieldViolation(f"proof_of_delivery.photos[{i}].sha256", "64 lowercase hex"))
    raise_if(problems)


def read_manifest(proof: mission_pb2.ProofOfDelivery, certificate_pem: bytes) -> mission_pb2.DeliveryManifest:
    """The manifest of a proof whose signature the vehicle's certificate verifies; INVALID_ARGUMENT
    POD_SIGNATURE_INVALID otherwise."""
    verify_manifest_signature(certificate_pem, proof.manifest, proof.manifest_signature, proof.key_id)
    try:
        return mission_pb2.DeliveryManifest.FromString(proof.manifest)
    except DecodeError:
        raise InvalidArgument("the manifest is not a DeliveryManifest", reason="POD_SIGNATURE_INVALID",
                              violations=[FieldViolation("proof_of_delivery.manifest", "not decodable")]) from None


def deliver(mission: mission_pb2.Mission, proof: mission_pb2.ProofOfDelivery,
            manifest: mission_pb2.DeliveryManifest, now: datetime) -> bool:
    """Record the proof (its manifest must match the mission) and move ARRIVED → DELIVERED; False when
    already delivered. The last stop is departed at delivery (never before its arrival)."""
    after = transition(mission_status(mission), Action.DELIVER)
    if after is None:
        return False
    check_manifest(
        ManifestFacts(manifest.mission_id, manifest.vehicle_id, manifest.tms_load_id, tuple(manifest.photo_sha256),
                      from_timestamp(manifest.deliver_time)),
        mission_id=mission.name.removeprefix("missions/"), vehicle_id=mission.vehicle.removeprefix("vehicles/"),
        tms_load_id=mission.load.tms_load_id, photo_sha256=[p.sha256 for p in proof.photos])
    recorded = mission.proof_of_delivery
    recorded.CopyFrom(proof)
    recorded.manifest_details.CopyFrom(manifest)
    recorded.submit_time.CopyFrom(to_timestamp(now))
    last = mission.stops[-1]
    delivered = from_timestamp(manifest.deliver_time)
    assert delivered is not None  # check_manifest refused a manifest without one
    last.depart_time.CopyFrom(to_timestamp(max(delivered, from_timestamp(last.arrive_time) or delivered)))
    move(mission, after)
    return True


# --- Usage -------------------------------------------------------------------------------------------

def whole_minutes(start: datetime, end: datetime) -> int:
    """Whole minutes from ``start`` to ``end``, rounded down, never negative."""
    return max(0, int((end - start).total_seconds() // 60))


def mission_hours(start: datetime, delivered: datetime) -> float:
    """Hours from departure to delivery, never negative, rounded to 1/1000 h (3.6 s)."""
    return round(max(0.0, (delivered - start).total_seconds() / 3600), 3)


def usage(mission: mission_pb2.Mission) -> invoice_pb2.Usage:
    """Metered usage from the recorded times: planned miles, departure-to-delivery hours, dwell per stop."""
    start = from_timestamp(mission.start_time)
    delivered = (from_timestamp(mission.stops[-1].depart_time)
                 or from_timestamp(mission.proof_of_delivery.submit_time))
    metered = invoice_pb2.Usage(lane=mission.lane, miles=mission.route_miles,
                                hours=mission_hours(start, delivered) if start and delivered else 0.0)
    for i, stop in enumerate(mission.stops):
        arrive, depart = from_timestamp(stop.arrive_time), from_timestamp(stop.depart_time)
        if arrive and depart:
            metered.stop_dwells.add(stop_index=i, arrive_time=stop.arrive_time, depart_time=stop.depart_time,
                                    dwell_minutes=whole_minutes(arrive, depart))
    return metered


def billing_retry_delay(attempts: int, sweep_seconds: float, max_backoff_seconds: float) -> float:
    """Seconds until the next billing attempt of a mission billing refused ``attempts`` times: doubling
    from the sweep interval, at most ``max_backoff_seconds``."""
    return min(max_backoff_seconds, sweep_seconds * 2 ** min(attempts, 20))


# --- Input checks shared by the RPCs -----------------------------------------------------------------

REGION = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}-[A-Z]{3}$")
VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
MAX_STOPS = 10


def location_violations(lat: float, lon: float, path: str) -> list[FieldViolation]:
    """A WGS 84 position, not the (0, 0) that an unset message decodes to."""
    problems = []
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        problems.append(FieldViolation(f"{path}.lat", "must be -90 to 90"))
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        problems.append(FieldViolation(f"{path}.lon", "must be -180 to 180"))
    if lat == 0 and lon == 0:
        problems.append(FieldViolation(path, "is required"))
    return problems


def text_violations(value: str, limit: int, path: str, *, required: bool = False) -> list[FieldViolation]:
    if required and not value.strip():
        return [FieldViolation(path, "is required")]
    if len(value) > limit:
        return [FieldViolation(path, f"at most {limit} characters")]
    return []


def window_violations(start: datetime | None, end: datetime | None, path: str, *, required: bool
                      ) -> list[FieldViolation]:
    if start is None and end is None:
        return [FieldViolation(path, "is required")] if required else []
    if start is None or end is None:
        return [FieldViolation(path, "start_time and end_time are both required")]
    if end <= start:
        return [FieldViolation(f"{path}.end_time", "must be after start_time")]
    return []


def raise_if(problems: list[FieldViolation], what: str = "the request has invalid fields") -> None:
    """INVALID_ARGUMENT with every violation, if there are any."""
    if problems:
        raise InvalidArgument(f"{what}: " + "; ".join(f"{p.field} {p.description}" for p in problems[:5]),
                              violations=problems)
