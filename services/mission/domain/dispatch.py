"""Dispatch: a requested mission checked, planned on the lane facts (lane, route, miles, night) and built."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from haulmesh.mission.v1 import mission_pb2
from haulmesh.type.v1 import geofence_pb2, lane_pb2, location_pb2
from services.runtime import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    from_timestamp,
    parse_name,
    to_timestamp,
)
from services.runtime.lanes import LaneFacts

from .checkins import CheckInPolicy, refresh_check_in_due
from .checks import (
    MAX_CARGO_WEIGHT_LB,
    MAX_STOPS,
    Point,
    location_violations,
    parse_vehicle_name,
    text_violations,
    window_violations,
)
from .enums import Availability, _Mission
from .roster import Load, VehicleView, ineligibility

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
