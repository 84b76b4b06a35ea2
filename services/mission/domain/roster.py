"""The roster: vehicles' capabilities and availability, eligibility for a load, the nearest vehicle, fleet
capacity windows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from haulmesh.mission.v1 import mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2
from services.runtime import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    from_timestamp,
)
from services.runtime.lanes import LaneFacts

from .checks import (
    MAX_CARGO_WEIGHT_LB,
    REGION,
    VIN,
    Point,
    location_violations,
    raise_if,
    text_violations,
    validate_vehicle_id,
    window_violations,
)
from .enums import Availability, _Vehicle

# --- Roster ------------------------------------------------------------------------------------------

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
