"""Protobuf ↔ the domain's own types: roster views, capacity windows and the values list filters match.

Most rules take the generated messages themselves (see :mod:`.domain`); what is here translates the few
values the domain keeps as its own types.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2, time_window_pb2
from services.runtime import BOOL_FIELD, STRING_FIELD, TIME_FIELD, enum_field, from_timestamp, to_timestamp

from .domain import Availability, CapacityWindow, State, VehicleView, capabilities_of, dispatch_position

__all__ = ["MISSION_FILTER", "VEHICLE_FILTER", "capacity_windows", "mission_filter_values", "vehicle_filter_values",
           "vehicle_view"]


#: How old a reported position may be for dispatch to use it when the caller gives no bound.
_POSITION_MAX_AGE = timedelta(hours=6)


def vehicle_view(vehicle: vehicle_pb2.Vehicle, *, now: datetime | None = None,
                 position_max_age: timedelta = _POSITION_MAX_AGE) -> VehicleView:
    """The roster facts of a vehicle that dispatch and capacity rank (position: its last reported one while
    fresher than ``position_max_age``, else none, and its home terminal counts)."""
    position = dispatch_position(vehicle, now or datetime.now(UTC), position_max_age)
    return VehicleView(vehicle.name.removeprefix("vehicles/"), capabilities_of(vehicle.capabilities),
                       Availability(vehicle.availability or Availability.AVAILABLE), vehicle.home_region, position)


def capacity_windows(windows: list[CapacityWindow]) -> list[mission_service_pb2.CapacityWindow]:
    return [mission_service_pb2.CapacityWindow(
        window=time_window_pb2.TimeWindow(start_time=to_timestamp(w.start), end_time=to_timestamp(w.end)),
        vehicle_count=w.vehicle_count) for w in windows]


# --- List filters: the filterable fields and their values (the runtime's AIP-160 grammar) -------------

MISSION_FILTER = {
    "state": enum_field(mission_pb2.Mission.State.keys(), prefix="STATE_"), "tender": STRING_FIELD,
    "vehicle": STRING_FIELD, "load.tms_load_id": STRING_FIELD, "create_time": TIME_FIELD}
VEHICLE_FILTER = {
    "availability": enum_field(vehicle_pb2.Vehicle.Availability.keys(), prefix="AVAILABILITY_"),
    "connectivity": enum_field(vehicle_pb2.Vehicle.Connectivity.keys(), prefix="CONNECTIVITY_"),
    "home_region": STRING_FIELD, "capabilities.hazmat_certified": BOOL_FIELD,
    "capabilities.equipment": enum_field(equipment_pb2.Equipment.keys(), prefix="EQUIPMENT_", repeated=True)}


def mission_filter_values(mission: mission_pb2.Mission) -> dict[str, object]:
    return {"state": State(mission.state).name, "tender": mission.tender, "vehicle": mission.vehicle,
            "load.tms_load_id": mission.load.tms_load_id, "create_time": from_timestamp(mission.create_time)}


def vehicle_filter_values(vehicle: vehicle_pb2.Vehicle) -> dict[str, object]:
    return {"availability": Availability(vehicle.availability).name if vehicle.availability else "",
            "connectivity": vehicle_pb2.Vehicle.Connectivity.Name(vehicle.connectivity).removeprefix("CONNECTIVITY_"),
            "home_region": vehicle.home_region, "capabilities.hazmat_certified": vehicle.capabilities.hazmat_certified,
            "capabilities.equipment": {equipment_pb2.Equipment.Name(e).removeprefix("EQUIPMENT_")
                                       for e in vehicle.capabilities.equipment}}
