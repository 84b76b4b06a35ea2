"""Mission and vehicle rules. Plain Python: no gRPC, no Redis.

What lives here: the roster rules (capabilities, availability, eligibility of a vehicle for a load),
dispatch (which vehicle), fleet capacity windows, the mission state machine with its exceptions and
contingency rules, the human-in-the-loop check-in policy, proof-of-delivery verification and usage
metering. Enum values are the protobuf numbers so that the server translates with ``int()`` and
``Enum(value)``, but nothing here depends on generated code.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from services.runtime import FailedPrecondition, FieldViolation, InvalidArgument, certificate_key_id, parse_name

__all__ = [
    "MAX_CARGO_WEIGHT_LB",
    "VEHICLE_ID",
    "Availability",
    "Capabilities",
    "CapacityWindow",
    "CheckInPoint",
    "CheckInPolicy",
    "Contingency",
    "ExceptionKind",
    "Load",
    "Severity",
    "State",
    "Status",
    "VehicleView",
    "capacity_windows",
    "check_in_point_allowed",
    "choose_contingency",
    "choose_vehicle",
    "departure_cleared",
    "haversine_miles",
    "ineligibility",
    "key_id_of",
    "needs_night_operation",
    "next_check_in_due",
    "parse_mission_name",
    "parse_vehicle_name",
    "plan_route",
    "resolve_region",
    "route_miles",
    "transition",
    "validate_availability_change",
    "validate_capabilities",
    "validate_vehicle_id",
    "verify_manifest_signature",
    "whole_minutes",
]

#: Vehicle ids are the fleet's own unit numbers, e.g. AU-TRK-1001 (the same as in its certificate):
#: 3 to 63 characters from [A-Z0-9-], starting with a letter (vehicle.proto).
VEHICLE_ID = re.compile(r"^[A-Z][A-Z0-9-]{2,62}$")

#: Upper bound of a vehicle's cargo capacity (US federal gross-weight limit, vehicle.proto).
MAX_CARGO_WEIGHT_LB = 80_000

#: Planning speed of a driverless truck for deadhead and capacity estimates (interstate average incl. stops).
PLANNING_SPEED_MPH = 50.0

#: Great-circle distance times this factor approximates road distance (a common planning circuity factor).
ROAD_CIRCUITY = 1.2


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

#: The fleet's terminals: market code (lane.proto) → terminal coordinates. A location belongs to the market
#: of the nearest terminal. Deliberately a small table: the fleet serves the Sun Belt freight corridors.
TERMINALS: dict[str, tuple[float, float]] = {
    "US-TX-HOU": (29.7604, -95.3698),
    "US-TX-DAL": (32.7767, -96.7970),
    "US-TX-SAT": (29.4241, -98.4936),
    "US-TX-ELP": (31.7619, -106.4850),
    "US-TX-LRD": (27.5306, -99.4803),
    "US-AZ-PHX": (33.4484, -112.0740),
    "US-CA-LAX": (34.0522, -118.2437),
    "US-GA-ATL": (33.7490, -84.3880),
    "US-FL-JAX": (30.3322, -81.6557),
    "US-LA-MSY": (29.9511, -90.0715),
    "US-OK-OKC": (35.4676, -97.5164),
    "US-NM-ABQ": (35.0844, -106.6504),
}


def haversine_miles(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in statute miles."""
    r = 3958.7613
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(a)))


def resolve_region(lat: float, lon: float) -> str:
    """The market code of the terminal nearest to (lat, lon)."""
    return min(TERMINALS, key=lambda code: (haversine_miles(lat, lon, *TERMINALS[code]), code))


def route_miles(points: Sequence[tuple[float, float]]) -> float:
    """Planned road distance through ``points`` in order (great circle times circuity), rounded to 0.1 mile."""
    legs = sum(haversine_miles(*a, *b) for a, b in itertools.pairwise(points))
    return round(legs * ROAD_CIRCUITY, 1)


#: A known route serves a mission whose first and last stops are each within this of the route's ends.
ROUTE_MATCH_MILES = 25.0

Point = tuple[float, float]


def plan_route(stops: Sequence[Point], routes: Sequence[Sequence[Point]]) -> list[Point]:
    """The planned road route of a mission: the first known route whose ends lie near the first and last stops,
    running from the first stop through the route's inner waypoints to the last stop; empty when no known
    route fits (a straight line between stops is no road, and measuring deviation from it would only raise
    false alarms)."""
    if len(stops) < 2:
        return []
    first, last = stops[0], stops[-1]
    for route in routes:
        if (len(route) >= 2 and haversine_miles(*first, *route[0]) <= ROUTE_MATCH_MILES
                and haversine_miles(*last, *route[-1]) <= ROUTE_MATCH_MILES):
            return [first, *route[1:-1], last]
    return []


def needs_night_operation(start: datetime, end: datetime, lon: float) -> bool:
    """True if the span [start, end] touches night (20:00-06:00 local mean solar time at ``lon``).

    Solar time (UTC + lon/15 h) needs no time-zone database and errs by at most about an hour, which is
    conservative enough for a capability filter: the tender service's lane rules are the real guardrail.
    """
    if end < start:
        return False
    offset = timedelta(hours=lon / 15.0)
    local, stop = start + offset, end + offset
    while local <= stop:
        if local.hour >= 20 or local.hour < 6:
            return True
        local = (local + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return stop.hour >= 20 or stop.hour < 6


# --- Roster ------------------------------------------------------------------------------------------

class Availability(enum.IntEnum):
    """Vehicle.Availability."""

    AVAILABLE = 1
    ASSIGNED = 2
    MAINTENANCE = 3
    OUT_OF_SERVICE = 4


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
    if not caps.equipment or 0 in caps.equipment:
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


def _position(vehicle: VehicleView) -> tuple[float, float] | None:
    return vehicle.position or TERMINALS.get(vehicle.home_region)


def _deadhead_miles(vehicle: VehicleView, origin: tuple[float, float]) -> float:
    position = _position(vehicle)
    return math.inf if position is None else haversine_miles(*position, *origin) * ROAD_CIRCUITY


def choose_vehicle(vehicles: Iterable[VehicleView], load: Load, origin: tuple[float, float]) -> list[VehicleView]:
    """Dispatch candidates, best first: AVAILABLE and able to haul the load, nearest to the origin.

    Ties break on the vehicle id so that dispatch is deterministic. The caller reserves the first it
    can (another dispatch may take one meanwhile) and tries the next.
    """
    fit = [v for v in vehicles if v.availability == Availability.AVAILABLE and not ineligibility(v.capabilities, load)]
    return sorted(fit, key=lambda v: (_deadhead_miles(v, origin), v.vehicle_id))


@dataclass(frozen=True)
class CapacityWindow:
    """From ``start`` to ``end`` (exclusive), ``vehicle_count`` eligible vehicles can be at the origin."""

    start: datetime
    end: datetime
    vehicle_count: int


def capacity_windows(vehicles: Iterable[VehicleView], load: Load, origin: tuple[float, float],
                     window_start: datetime, window_end: datetime, now: datetime
                     ) -> tuple[list[CapacityWindow], int]:
    """(non-overlapping windows, earliest first; number of roster vehicles whose capabilities fit).

    Each AVAILABLE eligible vehicle can be at the origin from ``now + deadhead / PLANNING_SPEED_MPH``
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
        miles = _deadhead_miles(v, origin)
        ready = window_start if math.isinf(miles) else now + timedelta(hours=miles / PLANNING_SPEED_MPH)
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


# --- Mission state machine ---------------------------------------------------------------------------

class State(enum.IntEnum):
    """Mission.State."""

    DISPATCHED = 1
    PRE_TRIP = 2
    ENROUTE = 3
    EXCEPTION = 4
    ARRIVED = 5
    DELIVERED = 6
    COMPLETED = 7
    CANCELLED = 8
    ABORTED = 9


TERMINAL = frozenset({State.COMPLETED, State.CANCELLED, State.ABORTED})
BEFORE_DEPARTURE = frozenset({State.DISPATCHED, State.PRE_TRIP})
DEPARTED = frozenset({State.ENROUTE, State.ARRIVED})


class ExceptionKind(enum.IntEnum):
    """MissionException.Kind."""

    SENSOR_FAULT = 1
    VEHICLE_FAULT = 2
    ROAD_CLOSURE = 3
    CONNECTIVITY_LOSS = 4
    ADVERSE_WEATHER = 5
    TRAFFIC_INCIDENT = 6
    LAW_ENFORCEMENT_STOP = 7
    PRE_TRIP_FAILURE = 8
    DISPATCH_TIMEOUT = 9
    CHECK_IN_HOLD = 10
    CARGO = 11
    OTHER = 12
    ROUTE_DEVIATION = 13


class Severity(enum.IntEnum):
    """MissionException.Severity (UNSPECIFIED is treated as WARNING)."""

    INFO = 1
    WARNING = 2
    CRITICAL = 3


class Contingency(enum.IntEnum):
    """MissionException.Contingency."""

    CONTINUE = 1
    REROUTE = 2
    HUMAN_TAKEOVER = 3
    MINIMAL_RISK_STOP = 4
    HOLD = 5


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


# --- Human in the loop -------------------------------------------------------------------------------

class CheckInPoint(enum.IntEnum):
    """CheckIn.Point."""

    DEPARTURE = 1
    ENROUTE = 2
    ARRIVAL = 3


PROCEED, HOLD = 1, 2  # CheckIn.Outcome


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


# --- Usage -------------------------------------------------------------------------------------------

def whole_minutes(start: datetime, end: datetime) -> int:
    """Whole minutes from ``start`` to ``end``, rounded down, never negative."""
    return max(0, int((end - start).total_seconds() // 60))


def mission_hours(start: datetime, delivered: datetime) -> float:
    """Hours from departure to delivery, never negative, rounded to 1/1000 h (3.6 s)."""
    return round(max(0.0, (delivered - start).total_seconds() / 3600), 3)


# --- Concurrency -------------------------------------------------------------------------------------

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


# --- List filters (AIP-160 subset) -------------------------------------------------------------------

#: A comparison: ``field op value``; the value is a bare word, a number, true/false or a "quoted" string.
_COMPARISON = re.compile(r'^\s*([a-z_][a-z_.]*)\s*(<=|>=|=|<|>)\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.:+-]+)\s*$')


@dataclass(frozen=True)
class Comparison:
    """One parsed ``field op value`` of a filter."""

    field: str
    op: str
    value: str


def parse_filter(text: str, allowed: dict[str, str | frozenset[str]]) -> list[Comparison]:
    """Comparisons joined by ``AND``; ``allowed`` maps each field to its kind: a set of enum value names
    (the field equals one), "string", "bool", ("has", values) for a repeated enum, or "time" (RFC 3339,
    also ``<`` ``<=`` ``>`` ``>=``).

    Anything else is INVALID_ARGUMENT INVALID_FILTER: an unsupported filter is refused, never ignored.
    """
    def invalid(why: str) -> InvalidArgument:
        return InvalidArgument(f"filter: {why}", reason="INVALID_FILTER", violations=[FieldViolation("filter", why)])

    if not text.strip():
        return []
    comparisons = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _COMPARISON.match(part)
        if match is None:
            raise invalid(f"cannot parse {part[:80]!r}; expected `field = value` joined by AND")
        name, op, value = match.groups()
        kind = allowed.get(name)
        if kind is None:
            raise invalid(f"{name!r} is not filterable; supported: {', '.join(sorted(allowed))}")
        if op != "=" and kind != "time":
            raise invalid(f"{name} supports only =")
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif kind in ("string", "time"):
            raise invalid(f"{name} takes a quoted value")
        if isinstance(kind, frozenset) and value not in kind:
            raise invalid(f"{name} takes one of {', '.join(sorted(kind))}")
        if kind == "bool" and value not in ("true", "false"):
            raise invalid(f"{name} takes true or false")
        if kind == "time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise invalid(f"{name} takes an RFC 3339 timestamp") from None
        comparisons.append(Comparison(name, op, value))
    return comparisons


def matches(comparisons: Sequence[Comparison], values: dict[str, object]) -> bool:
    """Whether a resource whose filterable fields are ``values`` satisfies every comparison.

    ``values``: enum fields as their names without prefix, strings, bools, sets of enum names ("has"),
    aware datetimes ("time").
    """
    for c in comparisons:
        actual = values.get(c.field)
        if isinstance(actual, bool):
            ok = actual == (c.value == "true")
        elif isinstance(actual, (set, frozenset)):
            ok = c.value in actual
        elif isinstance(actual, datetime):
            bound = datetime.fromisoformat(c.value.replace("Z", "+00:00"))
            ok = {"=": actual == bound, "<": actual < bound, "<=": actual <= bound, ">": actual > bound,
                  ">=": actual >= bound}[c.op]
        else:
            ok = actual == c.value
        if not ok:
            return False
    return True
