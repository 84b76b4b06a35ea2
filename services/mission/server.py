"""MissionService over gRPC: translation between the wire and the roster / mission rules, nothing more.

Every transition reads the mission, asks :mod:`.domain` what the change is, and commits the new mission
with the events announcing it in one transaction (:meth:`MissionStore.update_mission`). Vehicles live in
the fleet's slot, missions in the carrier's: dispatch reserves the vehicle first and gives it back if the
mission cannot be written; terminal states free it after the mission commit (and again, idempotently,
from the event consumer, so a crash in between cannot strand a vehicle).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, invoice_pb2
from haulmesh.events.v1 import event_pb2, mission_events_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2, geofence_pb2, health_check_pb2, lane_pb2, location_pb2
from services.runtime import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    Idempotency,
    InvalidArgument,
    NotFound,
    Policy,
    caller,
    carrier,
    carrier_metadata,
    check_etag,
    decode_page,
    new_event,
    new_id,
    next_page_token,
    parse_name,
)

from . import domain
from .config import MissionSettings
from .domain import (
    Action,
    Availability,
    Capabilities,
    CheckInPoint,
    Contingency,
    ExceptionKind,
    Load,
    Severity,
    State,
    Status,
    VehicleView,
    parse_mission_name,
    parse_vehicle_name,
    raise_if,
)
from .metrics import record_dispatch_ack, record_finished
from .store import MissionStore

__all__ = ["POLICY", "MissionServicer"]

_log = logging.getLogger("haulmesh.mission")
_SERVICE = "/haulmesh.mission.v1.MissionService"
_OPERATORS = "operator/*"
Mission = mission_pb2.Mission
MissionException = mission_pb2.MissionException

#: Who may call what (mission_service.proto names the callers of each RPC): the TMS through the gateway,
#: the other services for their step of the flow, the mission's own truck for its proof of delivery,
#: and fleet operators (people and tools with an operator certificate).
POLICY = Policy({
    f"{_SERVICE}/CreateVehicle": [_OPERATORS],
    f"{_SERVICE}/GetVehicle": ["service/tender", "service/telemetry", "service/gateway", "service/billing",
                               _OPERATORS],
    f"{_SERVICE}/ListVehicles": ["service/tender", "service/telemetry", "service/gateway", "service/billing",
                                 _OPERATORS],
    f"{_SERVICE}/UpdateVehicle": [_OPERATORS],
    f"{_SERVICE}/GetFleetCapacity": ["service/tender"],
    f"{_SERVICE}/CreateMission": ["service/tender", _OPERATORS],
    f"{_SERVICE}/GetMission": ["service/gateway", "service/tender", "service/telemetry", "service/billing",
                               _OPERATORS],
    f"{_SERVICE}/ListMissions": ["service/gateway", _OPERATORS],
    f"{_SERVICE}/AcknowledgeMissionDispatch": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/StartMission": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/ArriveMission": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/SubmitProofOfDelivery": ["vehicle/*", _OPERATORS],
    f"{_SERVICE}/CompleteMission": [_OPERATORS],
    f"{_SERVICE}/CancelMission": ["service/tender", _OPERATORS],
    f"{_SERVICE}/AbortMission": [_OPERATORS],
    f"{_SERVICE}/RaiseMissionException": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/ResolveMissionException": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/RecordCheckIn": ["service/gateway", _OPERATORS],
})

#: Event types the mission service consumes itself (billing hand-off, vehicle release).
CONSUMED_TYPES = {"haulmesh.mission.v1.proof_of_delivery_submitted", "haulmesh.mission.v1.state_changed"}
_TERMINAL = {Mission.STATE_COMPLETED, Mission.STATE_CANCELLED, Mission.STATE_ABORTED}
_UPDATABLE_VEHICLE_FIELDS = ("display_name", "capabilities", "home_region", "availability")
_MAX_MANIFEST_BYTES = 64 * 1024


_MISSION_FILTER: dict[str, str | frozenset[str]] = {
    "state": frozenset(s.name for s in State), "tender": "string", "vehicle": "string",
    "load.tms_load_id": "string", "create_time": "time"}
_EQUIPMENT_NAMES = frozenset(n.removeprefix("EQUIPMENT_") for n in equipment_pb2.Equipment.keys()[1:])
_VEHICLE_FILTER: dict[str, str | frozenset[str]] = {
    "availability": frozenset(a.name for a in Availability), "connectivity": frozenset({"ONLINE", "OFFLINE"}),
    "home_region": "string", "capabilities.hazmat_certified": "bool", "capabilities.equipment": _EQUIPMENT_NAMES}


def _mission_values(mission: Mission) -> dict[str, object]:
    return {"state": State(mission.state).name, "tender": mission.tender, "vehicle": mission.vehicle,
            "load.tms_load_id": mission.load.tms_load_id, "create_time": _dt(mission.create_time)}


def _vehicle_values(vehicle: vehicle_pb2.Vehicle) -> dict[str, object]:
    return {"availability": Availability(vehicle.availability).name if vehicle.availability else "",
            "connectivity": vehicle_pb2.Vehicle.Connectivity.Name(vehicle.connectivity).removeprefix("CONNECTIVITY_"),
            "home_region": vehicle.home_region, "capabilities.hazmat_certified": vehicle.capabilities.hazmat_certified,
            "capabilities.equipment": {equipment_pb2.Equipment.Name(e).removeprefix("EQUIPMENT_")
                                       for e in vehicle.capabilities.equipment}}


# --- translation helpers -----------------------------------------------------------------------------

def _dt(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """A set Timestamp as an aware datetime; None for the unset (zero) value."""
    return ts.ToDatetime(tzinfo=UTC) if (ts.seconds or ts.nanos) else None


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _now() -> datetime:
    return datetime.now(UTC)


def _capabilities(caps: vehicle_pb2.VehicleCapabilities) -> Capabilities:
    return Capabilities(frozenset(caps.equipment), caps.hazmat_certified, caps.max_cargo_weight_lb,
                        caps.night_operations)


def _view(vehicle: vehicle_pb2.Vehicle) -> VehicleView:
    position = ((vehicle.last_location.lat, vehicle.last_location.lon)
                if vehicle.HasField("last_location") else None)
    return VehicleView(vehicle.name.removeprefix("vehicles/"), _capabilities(vehicle.capabilities),
                       Availability(vehicle.availability or Availability.AVAILABLE), vehicle.home_region, position)


def _status(mission: Mission) -> Status:
    open_kinds = tuple(ExceptionKind(e.kind) for e in mission.exceptions if not e.HasField("resolve_time"))
    return Status(State(mission.state), State(mission.resume_state) if mission.resume_state else None, open_kinds)


def _lane(lat1: float, lon1: float, lat2: float, lon2: float) -> lane_pb2.Lane:
    return lane_pb2.Lane(origin_region=domain.resolve_region(lat1, lon1),
                         destination_region=domain.resolve_region(lat2, lon2))


def _lane_key(lane: lane_pb2.Lane) -> str:
    return f"{lane.origin_region}>{lane.destination_region}"


def _check_ins(mission: Mission) -> list[tuple[CheckInPoint, int, datetime]]:
    return [(CheckInPoint(c.point), c.outcome, _dt(c.record_time) or _now()) for c in mission.check_ins]


class MissionServicer(mission_service_pb2_grpc.MissionServiceServicer):
    """Roster and mission RPCs, plus the billing hand-off and vehicle release that follow delivery."""

    def __init__(self, store: MissionStore, settings: MissionSettings,
                 billing: billing_service_pb2_grpc.BillingServiceStub | None = None) -> None:
        self._store = store
        self._settings = settings
        self._billing = billing
        self._idempotency = Idempotency(store.redis)
        self._stopping = asyncio.Event()

    # --- vehicles ------------------------------------------------------------------------------------

    async def CreateVehicle(self, request: mission_service_pb2.CreateVehicleRequest,
                            context: grpc.aio.ServicerContext) -> vehicle_pb2.Vehicle:
        domain.validate_vehicle_id(request.vehicle_id)
        given = request.vehicle
        problems = self._vehicle_violations(given, _UPDATABLE_VEHICLE_FIELDS)
        if given.vin and not domain.VIN.fullmatch(given.vin):
            problems.append(FieldViolation("vehicle.vin", "17 characters, ISO 3779 (no I, O, Q)"))
        raise_if(problems)
        vehicle = vehicle_pb2.Vehicle(
            name=f"vehicles/{request.vehicle_id}", display_name=given.display_name, vin=given.vin,
            capabilities=given.capabilities, home_region=given.home_region,
            availability=given.availability or vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE, etag=new_id())
        vehicle.create_time.GetCurrentTime()
        vehicle.update_time.CopyFrom(vehicle.create_time)
        return await self._store.create_vehicle(request.vehicle_id, vehicle)

    @staticmethod
    def _vehicle_violations(vehicle: vehicle_pb2.Vehicle, fields: tuple[str, ...]) -> list[FieldViolation]:
        problems = []
        if "capabilities" in fields:
            problems += domain.validate_capabilities(_capabilities(vehicle.capabilities))
        if "home_region" in fields and not domain.REGION.match(vehicle.home_region):
            problems.append(FieldViolation("vehicle.home_region", "a market code such as US-TX-HOU"))
        if "display_name" in fields:
            problems += domain.text_violations(vehicle.display_name, 100, "vehicle.display_name")
        if "availability" in fields and vehicle.availability == vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED:
            problems.append(FieldViolation("vehicle.availability", "ASSIGNED is set by dispatch only"))
        return problems

    async def GetVehicle(self, request: mission_service_pb2.GetVehicleRequest,
                         context: grpc.aio.ServicerContext) -> vehicle_pb2.Vehicle:
        vehicle = await self._store.get_vehicle(parse_vehicle_name(request.name))
        if vehicle is None:
            raise NotFound(f"{request.name} does not exist", reason="VEHICLE_NOT_FOUND",
                           metadata={"name": request.name})
        return vehicle

    async def ListVehicles(self, request: mission_service_pb2.ListVehiclesRequest,
                           context: grpc.aio.ServicerContext) -> mission_service_pb2.ListVehiclesResponse:
        comparisons = domain.parse_filter(request.filter, _VEHICLE_FILTER)
        query = f"vehicles|{request.filter}"
        page = decode_page(request.page_size, request.page_token, query)
        keep = (lambda v: domain.matches(comparisons, _vehicle_values(v))) if comparisons else None
        vehicles, cursor = await self._store.list_vehicles(page, keep)
        return mission_service_pb2.ListVehiclesResponse(vehicles=vehicles,
                                                        next_page_token=next_page_token(cursor, query))

    async def UpdateVehicle(self, request: mission_service_pb2.UpdateVehicleRequest,
                            context: grpc.aio.ServicerContext) -> vehicle_pb2.Vehicle:
        vehicle_id = parse_vehicle_name(request.vehicle.name, field="vehicle.name")
        paths = list(request.update_mask.paths)
        if not paths or paths == ["*"]:
            paths = list(_UPDATABLE_VEHICLE_FIELDS)
        unknown = [p for p in paths if p not in _UPDATABLE_VEHICLE_FIELDS]
        raise_if([FieldViolation("update_mask", f"{p!r} is not updatable") for p in unknown])
        given = request.vehicle
        raise_if(self._vehicle_violations(given, tuple(paths)))

        def mutate(vehicle: vehicle_pb2.Vehicle) -> bool:
            check_etag(given.etag, vehicle.etag, vehicle.name)
            before = vehicle.SerializeToString(deterministic=True)
            if "availability" in paths:
                requested = Availability(given.availability or Availability.AVAILABLE)
                domain.validate_availability_change(Availability(vehicle.availability), requested,
                                                    on_mission=bool(vehicle.current_mission))
                vehicle.availability = requested
            for path in ("display_name", "home_region"):
                if path in paths:
                    setattr(vehicle, path, getattr(given, path))
            if "capabilities" in paths:
                vehicle.capabilities.CopyFrom(given.capabilities)
            return vehicle.SerializeToString(deterministic=True) != before

        return await self._store.update_vehicle(vehicle_id, mutate)

    async def GetFleetCapacity(self, request: mission_service_pb2.GetFleetCapacityRequest,
                               context: grpc.aio.ServicerContext) -> mission_service_pb2.GetFleetCapacityResponse:
        start, end = _dt(request.pickup_window.start_time), _dt(request.pickup_window.end_time)
        problems = [*domain.location_violations(request.origin.lat, request.origin.lon, "origin"),
                    *domain.location_violations(request.destination.lat, request.destination.lon, "destination"),
                    *domain.window_violations(start, end, "pickup_window", required=True)]
        if not request.equipment:
            problems.append(FieldViolation("equipment", "is required"))
        if not 1 <= request.weight_lb <= domain.MAX_CARGO_WEIGHT_LB:
            problems.append(FieldViolation("weight_lb", f"must be 1 to {domain.MAX_CARGO_WEIGHT_LB}"))
        raise_if(problems)
        load = Load(request.equipment, request.weight_lb, bool(request.hazmat.un_number), request.night_operation)
        origin = (request.origin.lat, request.origin.lon)
        vehicles = [_view(v) for v in await self._store.all_vehicles()]
        windows, eligible = domain.capacity_windows(vehicles, load, origin, start, end, _now())
        return mission_service_pb2.GetFleetCapacityResponse(
            lane=_lane(*origin, request.destination.lat, request.destination.lon),
            windows=[mission_service_pb2.CapacityWindow(
                window={"start_time": _ts(w.start), "end_time": _ts(w.end)}, vehicle_count=w.vehicle_count)
                for w in windows],
            eligible_vehicle_count=eligible)

    # --- dispatch ------------------------------------------------------------------------------------

    async def CreateMission(self, request: mission_service_pb2.CreateMissionRequest,
                            context: grpc.aio.ServicerContext) -> Mission:
        carrier_id = carrier(context)
        return await self._idempotency.run(f"{carrier_id}:CreateMission", request.request_id, request,
                                           lambda: self._dispatch(carrier_id, request.mission), Mission)

    def _mission_violations(self, given: Mission) -> list[FieldViolation]:
        problems = []
        for path, value, collection in (("mission.tender", given.tender, "tenders"),
                                        ("mission.quote", given.quote, "quotes")):
            try:
                parse_name(value, collection, field=path)
            except InvalidArgument as exc:
                problems += exc.violations
        load = given.load
        problems += domain.text_violations(load.tms_load_id, 100, "mission.load.tms_load_id", required=True)
        problems += domain.text_violations(load.special_instructions, 2000, "mission.load.special_instructions")
        if not load.equipment:
            problems.append(FieldViolation("mission.load.equipment", "is required"))
        if not 1 <= load.weight_lb <= domain.MAX_CARGO_WEIGHT_LB:
            problems.append(FieldViolation("mission.load.weight_lb", f"must be 1 to {domain.MAX_CARGO_WEIGHT_LB}"))
        if load.HasField("hazmat") and not (load.hazmat.un_number and load.hazmat.hazard_class):
            problems.append(FieldViolation("mission.load.hazmat", "un_number and hazard_class are required"))
        stops = given.stops
        if not 2 <= len(stops) <= domain.MAX_STOPS:
            problems.append(FieldViolation("mission.stops", f"2 to {domain.MAX_STOPS} stops"))
        for i, stop in enumerate(stops):
            path = f"mission.stops[{i}]"
            if not stop.type:
                problems.append(FieldViolation(f"{path}.type", "is required"))
            problems += domain.location_violations(stop.location.lat, stop.location.lon, f"{path}.location")
            problems += domain.window_violations(_dt(stop.planned_window.start_time),
                                                 _dt(stop.planned_window.end_time), f"{path}.planned_window",
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

    async def _dispatch(self, carrier_id: str, given: Mission) -> Mission:
        raise_if(self._mission_violations(given))
        tender_id = given.tender.removeprefix("tenders/")
        existing = await self._store.mission_of_tender(carrier_id, tender_id)
        if existing:
            raise self._already_dispatched(given.tender, existing)
        stops = given.stops
        origin, destination = stops[0].location, stops[-1].location
        route = domain.route_miles([(s.location.lat, s.location.lon) for s in stops])
        pickup_start = _dt(stops[0].planned_window.start_time) or _now()
        delivery_end = (_dt(stops[-1].planned_window.end_time)
                        or pickup_start + timedelta(hours=route / domain.PLANNING_SPEED_MPH))
        load = Load(given.load.equipment, given.load.weight_lb, given.load.HasField("hazmat"),
                    domain.needs_night_operation(pickup_start, delivery_end, origin.lon))
        lane = _lane(origin.lat, origin.lon, destination.lat, destination.lon)
        candidates = await self._candidates(given.vehicle, load, (origin.lat, origin.lon))
        mission_id = new_id()
        name = f"missions/{mission_id}"
        for candidate in candidates:
            ordinal = await self._store.reserve_vehicle(candidate.vehicle_id, name, carrier_id, _lane_key(lane))
            if ordinal is not None:
                break
        else:
            if given.vehicle:
                raise FailedPrecondition(f"{given.vehicle} is not AVAILABLE", reason="VEHICLE_NOT_ELIGIBLE",
                                         metadata={"vehicle": given.vehicle})
            raise FailedPrecondition("no roster vehicle can take the load now", reason="NO_VEHICLE_AVAILABLE")
        mission = self._new_mission(carrier_id, name, given, candidate.vehicle_id, lane, route, ordinal)
        event = new_event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=mission),
                          subject=name, carrier_id=carrier_id, source="mission")
        try:
            other = await self._store.create_mission(carrier_id, mission, tender_id, event)
        except BaseException:
            await self._store.release_vehicle(candidate.vehicle_id, name, lane=_lane_key(lane))
            raise
        if other is not None:  # a concurrent dispatch of the same tender won
            await self._store.release_vehicle(candidate.vehicle_id, name, lane=_lane_key(lane))
            raise self._already_dispatched(given.tender, other)
        return mission

    @staticmethod
    def _already_dispatched(tender: str, mission_id: str) -> AlreadyExists:
        return AlreadyExists(f"{tender} already has a mission", reason="MISSION_ALREADY_EXISTS",
                             metadata={"mission": f"missions/{mission_id}"})

    async def _candidates(self, named: str, load: Load, origin: tuple[float, float]) -> list[VehicleView]:
        if not named:
            return domain.choose_vehicle([_view(v) for v in await self._store.all_vehicles()], load, origin)
        vehicle = await self._store.get_vehicle(parse_vehicle_name(named, field="mission.vehicle"))
        if vehicle is None:
            raise NotFound(f"{named} does not exist", reason="VEHICLE_NOT_FOUND", metadata={"name": named})
        view = _view(vehicle)
        lacking = domain.ineligibility(view.capabilities, load)
        if lacking or view.availability != Availability.AVAILABLE:
            why = ", ".join(lacking) or f"availability {view.availability.name}"
            raise FailedPrecondition(f"{named} cannot take the load: {why}", reason="VEHICLE_NOT_ELIGIBLE",
                                     metadata={"vehicle": named, "lacking": ",".join(lacking)})
        return [view]

    def _new_mission(self, carrier_id: str, name: str, given: Mission, vehicle_id: str, lane: lane_pb2.Lane,
                     route: float, ordinal: int) -> Mission:
        now = _now()
        policy = self._settings.check_in
        mission = Mission(name=name, carrier=f"carriers/{carrier_id}", tender=given.tender, quote=given.quote,
                          vehicle=f"vehicles/{vehicle_id}", load=given.load, lane=lane, route_miles=route,
                          state=Mission.STATE_DISPATCHED, dispatch_time=_ts(now), create_time=_ts(now),
                          update_time=_ts(now), etag=new_id())
        planned = domain.plan_route([(s.location.lat, s.location.lon) for s in given.stops], self._settings.routes)
        mission.planned_route.extend(location_pb2.Location(lat=lat, lon=lon) for lat, lon in planned)
        for stop in given.stops:
            added = mission.stops.add(type=stop.type, location=stop.location)
            if stop.HasField("planned_window"):
                added.planned_window.CopyFrom(stop.planned_window)
            if stop.HasField("geofence"):
                added.geofence.CopyFrom(stop.geofence)
            else:
                added.geofence.CopyFrom(geofence_pb2.Geofence(circle=geofence_pb2.Geofence.Circle(
                    center=stop.location, radius_meters=self._settings.geofence_radius_meters)))
        requirement = mission.check_in_requirement
        requirement.lane_mission_ordinal = ordinal
        requirement.lane_mission_threshold = policy.threshold
        requirement.required = policy.required(ordinal)
        if requirement.required:
            requirement.points.extend(int(p) for p in policy.points)
            requirement.enroute_interval.FromTimedelta(policy.enroute_interval)
        self._refresh_due(mission)
        return mission

    def _refresh_due(self, mission: Mission) -> None:
        requirement = mission.check_in_requirement
        if not requirement.required:
            return
        due = domain.next_check_in_due(
            self._settings.check_in, _status(mission), planned_pickup=_dt(mission.stops[0].planned_window.start_time)
            or _dt(mission.dispatch_time), start_time=_dt(mission.start_time),
            arrive_time=_dt(mission.stops[-1].arrive_time), check_ins=_check_ins(mission))
        if due is None:
            requirement.ClearField("next_due_time")
        else:
            requirement.next_due_time.CopyFrom(_ts(due))

    # --- reads ---------------------------------------------------------------------------------------

    async def GetMission(self, request: mission_service_pb2.GetMissionRequest,
                         context: grpc.aio.ServicerContext) -> Mission:
        carrier_id = carrier(context)
        mission = await self._store.get_mission(carrier_id, parse_mission_name(request.name))
        if mission is None:
            raise NotFound(f"{request.name} does not exist", reason="MISSION_NOT_FOUND",
                           metadata={"name": request.name})
        return mission

    async def ListMissions(self, request: mission_service_pb2.ListMissionsRequest,
                           context: grpc.aio.ServicerContext) -> mission_service_pb2.ListMissionsResponse:
        carrier_id = carrier(context)
        comparisons = domain.parse_filter(request.filter, _MISSION_FILTER)
        query = f"missions:{carrier_id}|{request.filter}"
        page = decode_page(request.page_size, request.page_token, query)
        keep = (lambda m: domain.matches(comparisons, _mission_values(m))) if comparisons else None
        missions, cursor = await self._store.list_missions(carrier_id, page, keep)
        return mission_service_pb2.ListMissionsResponse(missions=missions,
                                                        next_page_token=next_page_token(cursor, query))

    # --- transitions ---------------------------------------------------------------------------------

    async def _change(self, carrier_id: str, name: str, etag: str,
                      apply: Callable[[Mission, _Announcer], bool]) -> Mission:
        """Run ``apply`` (returns False for no change) on the mission in one transaction with its events."""
        mission_id = parse_mission_name(name)

        def mutate(mission: Mission):
            check_etag(etag, mission.etag, mission.name)
            announcer = _Announcer(carrier_id)
            before = mission.state
            if not apply(mission, announcer):
                return None
            self._refresh_due(mission)
            if mission.state in _TERMINAL and not mission.HasField("end_time"):
                mission.end_time.GetCurrentTime()
            return lambda final: announcer.build(final, before)

        mission, changed = await self._store.update_mission(carrier_id, mission_id, mutate)
        if changed and mission.state in _TERMINAL:
            record_finished(Mission.State.Name(mission.state).removeprefix("STATE_").lower())
            await self._store.release_vehicle(mission.vehicle.removeprefix("vehicles/"), mission.name)
        return mission

    async def _simple(self, context: grpc.aio.ServicerContext, name: str, etag: str, action: Action,
                      extra: Callable[[Mission], None] | None = None, reason: str = "") -> Mission:
        def apply(mission: Mission, announce: _Announcer) -> bool:
            after = domain.transition(_status(mission), action)
            if after is None:
                return False
            if extra is not None:
                extra(mission)
            if after.state in (State.CANCELLED, State.ABORTED):
                _resolve_all(mission, announce, f"mission {after.state.name.lower()}")
                mission.state_reason = reason
            _move(mission, after)
            announce.state_changed()
            return True

        return await self._change(carrier(context), name, etag, apply)

    async def AcknowledgeMissionDispatch(self, request: mission_service_pb2.AcknowledgeMissionDispatchRequest,
                                         context: grpc.aio.ServicerContext) -> Mission:
        if not request.HasField("ack_time"):
            raise_if([FieldViolation("ack_time", "is required")])
        acknowledged: list[bool] = []

        def record(mission: Mission) -> None:
            mission.dispatch_ack_time.CopyFrom(request.ack_time)
            acknowledged[:] = [True]  # only on the transition itself (a repeated ack changes nothing)

        mission = await self._simple(context, request.name, request.etag, Action.ACKNOWLEDGE, record)
        if acknowledged and mission.HasField("dispatch_time"):
            record_dispatch_ack(_seconds(mission.dispatch_time), _seconds(mission.dispatch_ack_time), time.time())
        return mission

    async def StartMission(self, request: mission_service_pb2.StartMissionRequest,
                           context: grpc.aio.ServicerContext) -> Mission:
        problems = [] if request.pre_trip_checks else [FieldViolation("pre_trip_checks", "at least one")]
        for i, check in enumerate(request.pre_trip_checks):
            problems += domain.text_violations(check.check, 100, f"pre_trip_checks[{i}].check", required=True)
            if not check.outcome:
                problems.append(FieldViolation(f"pre_trip_checks[{i}].outcome", "is required"))
        raise_if(problems)
        failed = next((c for c in request.pre_trip_checks
                       if c.blocking and c.outcome == health_check_pb2.HealthCheckResult.OUTCOME_FAIL), None)
        who = str(caller())

        def apply(mission: Mission, announce: _Announcer) -> bool:
            status = _status(mission)
            after = domain.transition(status, Action.START)
            if after is None:
                return False
            if failed is not None:
                raise FailedPrecondition(f"blocking pre-trip check {failed.check!r} failed: {failed.detail}",
                                         reason="PRE_TRIP_CHECK_FAILED", metadata={"check": failed.check})
            if mission.check_in_requirement.required and not domain.departure_cleared(
                    [(p, o) for p, o, _ in _check_ins(mission)]):
                raise FailedPrecondition("this mission needs a DEPARTURE check-in with outcome PROCEED first",
                                         reason="CHECK_IN_REQUIRED")
            now = _now()
            for exc in mission.exceptions:  # from EXCEPTION: passing checks resolve the pre-trip failures
                if not exc.HasField("resolve_time"):
                    _resolve(exc, "pre-trip checks passed", who, now)
                    announce.exception_resolved(exc)
            del mission.pre_trip_checks[:]
            mission.pre_trip_checks.extend(request.pre_trip_checks)
            mission.start_time.CopyFrom(_ts(now))
            pickup = mission.stops[0]
            if not pickup.HasField("arrive_time"):
                pickup.arrive_time.CopyFrom(mission.dispatch_ack_time if mission.HasField("dispatch_ack_time")
                                            else _ts(now))
            if not pickup.HasField("depart_time"):
                pickup.depart_time.CopyFrom(_ts(now))
            _move(mission, after)
            announce.state_changed()
            return True

        return await self._change(carrier(context), request.name, request.etag, apply)

    async def ArriveMission(self, request: mission_service_pb2.ArriveMissionRequest,
                            context: grpc.aio.ServicerContext) -> Mission:
        if not request.HasField("arrive_time"):
            raise_if([FieldViolation("arrive_time", "is required")])

        def record(mission: Mission) -> None:
            last = mission.stops[-1]
            last.arrive_time.CopyFrom(request.arrive_time)
            last.ClearField("estimated_arrive_time")

        return await self._simple(context, request.name, request.etag, Action.ARRIVE, record)

    async def CompleteMission(self, request: mission_service_pb2.CompleteMissionRequest,
                              context: grpc.aio.ServicerContext) -> Mission:
        return await self._simple(context, request.name, request.etag, Action.COMPLETE)

    async def CancelMission(self, request: mission_service_pb2.CancelMissionRequest,
                            context: grpc.aio.ServicerContext) -> Mission:
        raise_if(domain.text_violations(request.reason, 500, "reason"))
        return await self._simple(context, request.name, request.etag, Action.CANCEL, reason=request.reason)

    async def AbortMission(self, request: mission_service_pb2.AbortMissionRequest,
                           context: grpc.aio.ServicerContext) -> Mission:
        raise_if(domain.text_violations(request.reason, 1000, "reason", required=True))
        return await self._simple(context, request.name, request.etag, Action.ABORT, reason=request.reason)

    # --- exceptions and check-ins --------------------------------------------------------------------

    async def RaiseMissionException(self, request: mission_service_pb2.RaiseMissionExceptionRequest,
                                    context: grpc.aio.ServicerContext
                                    ) -> mission_service_pb2.RaiseMissionExceptionResponse:
        given = request.exception
        problems = [] if given.kind else [FieldViolation("exception.kind", "is required")]
        # A client built from newer contracts may send a value this service does not know yet.
        enums = (("kind", given.kind, ExceptionKind), ("severity", given.severity, Severity),
                 ("contingency", given.contingency, Contingency))
        problems += [FieldViolation(f"exception.{name}", f"unknown value {value}") for name, value, known in enums
                     if value and value not in {int(member) for member in known}]
        problems += domain.text_violations(given.description, 1000, "exception.description")
        if len(given.reroute_waypoints) > 100:
            problems.append(FieldViolation("exception.reroute_waypoints", "at most 100"))
        if given.reroute_waypoints and given.contingency not in (MissionException.CONTINGENCY_REROUTE, 0):
            problems.append(FieldViolation("exception.reroute_waypoints", "only for REROUTE"))
        raise_if(problems)
        carrier_id = carrier(context)
        parse_mission_name(request.name)
        who = str(caller())

        async def compute() -> mission_service_pb2.RaiseMissionExceptionResponse:
            raised: list[MissionException] = []

            def apply(mission: Mission, announce: _Announcer) -> bool:
                raised.append(_raise(mission, announce, given, who))
                return True

            mission = await self._change(carrier_id, request.name, "", apply)
            return mission_service_pb2.RaiseMissionExceptionResponse(mission=mission, exception=raised[-1])

        return await self._idempotency.run(f"{carrier_id}:RaiseMissionException", request.request_id, request,
                                           compute, mission_service_pb2.RaiseMissionExceptionResponse)

    async def ResolveMissionException(self, request: mission_service_pb2.ResolveMissionExceptionRequest,
                                      context: grpc.aio.ServicerContext
                                      ) -> mission_service_pb2.ResolveMissionExceptionResponse:
        problems = domain.text_violations(request.exception_id, 64, "exception_id", required=True)
        problems += domain.text_violations(request.resolution, 1000, "resolution", required=True)
        raise_if(problems)
        who = str(caller())
        found: list[MissionException] = []

        def apply(mission: Mission, announce: _Announcer) -> bool:
            exc = next((e for e in mission.exceptions if e.exception_id == request.exception_id), None)
            if exc is None:
                raise NotFound(f"{mission.name} has no exception {request.exception_id!r}",
                               reason="EXCEPTION_NOT_FOUND", metadata={"exception_id": request.exception_id})
            found.append(exc)
            if exc.HasField("resolve_time"):
                return False  # resolving a resolved exception succeeds without change
            _resolve(exc, request.resolution, who, _now())
            announce.exception_resolved(exc)
            if not _status(mission).open_exceptions:
                _move(mission, domain.transition(_status(mission), Action.RESOLVE_LAST))
                announce.state_changed()
            return True

        mission = await self._change(carrier(context), request.name, request.etag, apply)
        exc = next(e for e in mission.exceptions if e.exception_id == found[-1].exception_id)
        return mission_service_pb2.ResolveMissionExceptionResponse(mission=mission, exception=exc)

    async def RecordCheckIn(self, request: mission_service_pb2.RecordCheckInRequest,
                            context: grpc.aio.ServicerContext) -> mission_service_pb2.RecordCheckInResponse:
        given = request.check_in
        problems = [] if given.point else [FieldViolation("check_in.point", "is required")]
        if not given.outcome:
            problems.append(FieldViolation("check_in.outcome", "is required"))
        problems += domain.text_violations(given.notes, 1000, "check_in.notes")
        raise_if(problems)
        carrier_id = carrier(context)
        parse_mission_name(request.name)
        who = str(caller())

        async def compute() -> mission_service_pb2.RecordCheckInResponse:
            recorded: list[mission_pb2.CheckIn] = []

            def apply(mission: Mission, announce: _Announcer) -> bool:
                domain.check_in_point_allowed(_status(mission), CheckInPoint(given.point))
                check_in = mission.check_ins.add(check_in_id=f"chk-{len(mission.check_ins) + 1}", point=given.point,
                                                 outcome=given.outcome, notes=given.notes, recorded_by=who,
                                                 record_time=_ts(_now()))
                recorded.append(check_in)
                announce.check_in_recorded(check_in)
                if given.outcome == mission_pb2.CheckIn.OUTCOME_HOLD:
                    hold = MissionException(kind=MissionException.KIND_CHECK_IN_HOLD,
                                            severity=MissionException.SEVERITY_WARNING,
                                            description=f"check-in {check_in.check_in_id} HOLD: {given.notes}"[:1000])
                    _raise(mission, announce, hold, who)
                return True

            mission = await self._change(carrier_id, request.name, "", apply)
            check_in = next(c for c in mission.check_ins if c.check_in_id == recorded[-1].check_in_id)
            return mission_service_pb2.RecordCheckInResponse(mission=mission, check_in=check_in)

        return await self._idempotency.run(f"{carrier_id}:RecordCheckIn", request.request_id, request, compute,
                                           mission_service_pb2.RecordCheckInResponse)

    # --- proof of delivery ---------------------------------------------------------------------------

    async def SubmitProofOfDelivery(self, request: mission_service_pb2.SubmitProofOfDeliveryRequest,
                                    context: grpc.aio.ServicerContext) -> Mission:
        mission_id = parse_mission_name(request.name)
        proof = request.proof_of_delivery
        problems = []
        if not proof.manifest or len(proof.manifest) > _MAX_MANIFEST_BYTES:
            problems.append(FieldViolation("proof_of_delivery.manifest", "1 byte to 64 KiB"))
        if not proof.manifest_signature:
            problems.append(FieldViolation("proof_of_delivery.manifest_signature", "is required"))
        if not domain.validate_photo_digest(proof.key_id):
            problems.append(FieldViolation("proof_of_delivery.key_id", "64 lowercase hex characters"))
        if len(proof.photos) > 20:
            problems.append(FieldViolation("proof_of_delivery.photos", "at most 20"))
        for i, photo in enumerate(proof.photos):
            if not photo.uri.startswith(("https://", "s3://")) or len(photo.uri) > 2048:
                problems.append(FieldViolation(f"proof_of_delivery.photos[{i}].uri", "an https:// or s3:// URI"))
            if not domain.validate_photo_digest(photo.sha256):
                problems.append(FieldViolation(f"proof_of_delivery.photos[{i}].sha256", "64 lowercase hex"))
        raise_if(problems)
        carrier_id, certificate = await self._pod_tenant_and_certificate(context, mission_id, request.name)
        domain.verify_manifest_signature(certificate, proof.manifest, proof.manifest_signature, proof.key_id)
        try:
            manifest = mission_pb2.DeliveryManifest.FromString(proof.manifest)
        except DecodeError:
            raise InvalidArgument("the manifest is not a DeliveryManifest", reason="POD_SIGNATURE_INVALID",
                                  violations=[FieldViolation("proof_of_delivery.manifest", "not decodable")]) from None

        def apply(mission: Mission, announce: _Announcer) -> bool:
            after = domain.transition(_status(mission), Action.DELIVER)
            if after is None:
                return False
            domain.check_manifest(
                domain.ManifestFacts(manifest.mission_id, manifest.vehicle_id, manifest.tms_load_id,
                                     tuple(manifest.photo_sha256), _dt(manifest.deliver_time)),
                mission_id=mission_id, vehicle_id=mission.vehicle.removeprefix("vehicles/"),
                tms_load_id=mission.load.tms_load_id, photo_sha256=[p.sha256 for p in proof.photos])
            recorded = mission.proof_of_delivery
            recorded.CopyFrom(proof)
            recorded.manifest_details.CopyFrom(manifest)
            recorded.submit_time.GetCurrentTime()
            last = mission.stops[-1]
            delivered = max(_dt(manifest.deliver_time), _dt(last.arrive_time) or _dt(manifest.deliver_time))
            last.depart_time.CopyFrom(_ts(delivered))
            _move(mission, after)
            announce.proof_of_delivery_submitted()
            announce.state_changed()
            return True

        return await self._change(carrier_id, request.name, request.etag, apply)

    async def _pod_tenant_and_certificate(self, context: grpc.aio.ServicerContext, mission_id: str,
                                          name: str) -> tuple[str, bytes]:
        """The mission's carrier and the certificate to verify its manifest with.

        The mission's own truck: the certificate it presents on this call (pinned for later operator
        relays). An operator relaying a truck's proof: the certificate the truck last presented.
        """
        identity = caller()
        not_found = NotFound(f"{name} does not exist", reason="MISSION_NOT_FOUND", metadata={"name": name})
        if identity.kind == "vehicle":
            carrier_id = await self._store.mission_carrier(mission_id)
            mission = None if carrier_id is None else await self._store.get_mission(carrier_id, mission_id)
            if mission is None or mission.vehicle != f"vehicles/{identity.name}":
                raise not_found  # another truck's mission does not exist for this truck
            certificate = context.auth_context()["x509_pem_cert"][0]
            await self._store.pin_vehicle_certificate(identity.name, certificate)
            return carrier_id, certificate
        carrier_id = carrier(context)
        mission = await self._store.get_mission(carrier_id, mission_id)
        if mission is None:
            raise not_found
        certificate = await self._store.vehicle_certificate(mission.vehicle.removeprefix("vehicles/"))
        if certificate is None:
            raise InvalidArgument(f"no certificate of {mission.vehicle} is on file to verify the manifest with",
                                  reason="POD_SIGNATURE_INVALID",
                                  violations=[FieldViolation("proof_of_delivery.key_id", "vehicle key unknown")])
        return carrier_id, certificate

    # --- after delivery: billing and vehicle release -------------------------------------------------

    async def handle_event(self, event: event_pb2.Event) -> None:
        """Consumer of the service's own events: bill delivered missions, free vehicles at terminal states."""
        carrier_id = event.carrier.removeprefix("carriers/")
        kind = event.WhichOneof("data")
        if kind == "mission_proof_of_delivery_submitted":
            try:
                await self.bill(carrier_id, event.subject.removeprefix("missions/"))
            except grpc.aio.AioRpcError as exc:
                # Billing is down or refused: the sweeper retries with backoff; the event is done.
                _log.warning("billing %s failed (%s); the sweeper will retry", event.subject, exc.code().name)
        elif kind == "mission_state_changed" and event.mission_state_changed.mission.state in _TERMINAL:
            mission = event.mission_state_changed.mission
            await self._store.release_vehicle(mission.vehicle.removeprefix("vehicles/"), mission.name)

    async def bill(self, carrier_id: str, mission_id: str) -> Mission | None:
        """Record a DELIVERED mission's usage with billing, then complete it (idempotent both sides)."""
        mission = await self._store.get_mission(carrier_id, mission_id)
        if mission is None or mission.state != Mission.STATE_DELIVERED or self._billing is None:
            return mission
        await self._billing.RecordUsage(
            billing_service_pb2.RecordUsageRequest(mission=mission.name, tender=mission.tender, quote=mission.quote,
                                                   tms_load_id=mission.load.tms_load_id, usage=_usage(mission)),
            metadata=carrier_metadata(carrier_id))
        return await self._change(carrier_id, mission.name, "", self._complete_after_billing)

    @staticmethod
    def _complete_after_billing(mission: Mission, announce: _Announcer) -> bool:
        if mission.state != Mission.STATE_DELIVERED:
            return False  # an operator completed it meanwhile
        _move(mission, domain.transition(_status(mission), Action.COMPLETE))
        mission.state_reason = "usage recorded by billing"
        announce.state_changed()
        return True

    async def sweep_billing(self) -> None:
        """Companion loop: retry billing of delivered missions the consumer could not complete."""
        settings = self._settings
        while not self._stopping.is_set():
            for carrier_id, mission_id in await self._store.due_for_billing():
                try:
                    await self.bill(carrier_id, mission_id)
                except Exception as exc:  # any failure: try again later, never drop the mission
                    attempts = await self._store.billing_attempts(carrier_id, mission_id)
                    delay = min(settings.billing_max_backoff_seconds,
                                settings.billing_sweep_seconds * 2 ** min(attempts, 20))
                    _log.warning("billing %s/%s failed (attempt %d, next in %.0fs): %s", carrier_id, mission_id,
                                 attempts, delay, exc)
                    await self._store.postpone_billing(carrier_id, mission_id, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), settings.billing_sweep_seconds)
            except TimeoutError:
                pass

    async def stop_sweeping(self) -> None:
        self._stopping.set()


# --- mission mutations shared by the RPCs ------------------------------------------------------------

def _move(mission: Mission, status: Status) -> None:
    mission.state = int(status.state)
    mission.resume_state = int(status.resume) if status.resume else 0


def _resolve(exc: MissionException, resolution: str, who: str, when: datetime) -> None:
    exc.resolution = resolution
    exc.resolved_by = who
    exc.resolve_time.CopyFrom(_ts(when))


def _resolve_all(mission: Mission, announce: _Announcer, resolution: str) -> None:
    now = _now()
    for exc in mission.exceptions:
        if not exc.HasField("resolve_time"):
            _resolve(exc, resolution, "spiffe://haulmesh.local/service/mission", now)
            announce.exception_resolved(exc)


def _raise(mission: Mission, announce: _Announcer, given: MissionException, who: str) -> MissionException:
    status = _status(mission)
    after = domain.transition(status, Action.RAISE)
    severity = Severity(given.severity or Severity.WARNING)
    contingency = given.contingency or domain.choose_contingency(ExceptionKind(given.kind), severity,
                                                                 departed=status.departed)
    exc = mission.exceptions.add(
        exception_id=f"exc-{len(mission.exceptions) + 1}", kind=given.kind, severity=int(severity),
        contingency=int(Contingency(contingency)), description=given.description,
        reroute_waypoints=given.reroute_waypoints, frame_sequence=given.frame_sequence, raised_by=who,
        raise_time=_ts(_now()))
    if given.HasField("location"):
        exc.location.CopyFrom(given.location)
    if exc.contingency == Contingency.REROUTE and given.reroute_waypoints:
        # The new plan: from where the vehicle was told to go, on to the destination.
        del mission.planned_route[:]
        mission.planned_route.extend([*given.reroute_waypoints, mission.stops[-1].location])
    announce.exception_raised(exc)
    if after.state != status.state:
        announce.state_changed()
    _move(mission, after)
    return exc


def _usage(mission: Mission) -> invoice_pb2.Usage:
    """Metered usage from the recorded times: planned miles, departure-to-delivery hours, dwell per stop."""
    start = _dt(mission.start_time)
    delivered = _dt(mission.stops[-1].depart_time) or _dt(mission.proof_of_delivery.submit_time)
    usage = invoice_pb2.Usage(lane=mission.lane, miles=mission.route_miles,
                              hours=domain.mission_hours(start, delivered) if start and delivered else 0.0)
    for i, stop in enumerate(mission.stops):
        arrive, depart = _dt(stop.arrive_time), _dt(stop.depart_time)
        if arrive and depart:
            usage.stop_dwells.add(stop_index=i, arrive_time=stop.arrive_time, depart_time=stop.depart_time,
                                  dwell_minutes=domain.whole_minutes(arrive, depart))
    return usage


class _Announcer:
    """Collects the events of one change; they are built from the committed (stamped) mission."""

    def __init__(self, carrier_id: str) -> None:
        self._carrier = carrier_id
        self._pending: list[Callable[[Mission, int], event_pb2.Event]] = []

    def _add(self, field: str, payload: Callable[[Mission, int], object]) -> None:
        self._pending.append(lambda m, before: new_event(field, payload(m, before), subject=m.name,
                                                         carrier_id=self._carrier, source="mission"))

    def state_changed(self) -> None:
        self._add("mission_state_changed",
                  lambda m, before: mission_events_pb2.MissionStateChanged(mission=m, previous_state=before))

    def exception_raised(self, exc: MissionException) -> None:
        snapshot = MissionException()
        snapshot.CopyFrom(exc)
        self._add("mission_exception_raised", lambda m, _: mission_events_pb2.MissionExceptionRaised(
            mission=m.name, tender=m.tender, exception=snapshot))

    def exception_resolved(self, exc: MissionException) -> None:
        snapshot = MissionException()
        snapshot.CopyFrom(exc)
        self._add("mission_exception_resolved", lambda m, _: mission_events_pb2.MissionExceptionResolved(
            mission=m.name, tender=m.tender, exception=snapshot))

    def check_in_recorded(self, check_in: mission_pb2.CheckIn) -> None:
        snapshot = mission_pb2.CheckIn()
        snapshot.CopyFrom(check_in)
        self._add("mission_check_in_recorded",
                  lambda m, _: mission_events_pb2.CheckInRecorded(mission=m.name, check_in=snapshot))

    def proof_of_delivery_submitted(self) -> None:
        self._add("mission_proof_of_delivery_submitted", lambda m, _: mission_events_pb2.ProofOfDeliverySubmitted(
            mission=m.name, tender=m.tender, tms_load_id=m.load.tms_load_id, proof_of_delivery=m.proof_of_delivery))

    def build(self, mission: Mission, before: int) -> list[event_pb2.Event]:
        return [make(mission, before) for make in self._pending]
