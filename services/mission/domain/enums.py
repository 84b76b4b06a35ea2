"""The contract's enums as Python IntEnums (names and numbers from the generated descriptors), and the
state sets the rules speak of."""

from __future__ import annotations

import enum

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, vehicle_pb2

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


State = _mirror("State", _Mission.State, "STATE_", "Mission.State.")


TERMINAL = frozenset({State.COMPLETED, State.CANCELLED, State.ABORTED})
BEFORE_DEPARTURE = frozenset({State.DISPATCHED, State.PRE_TRIP})
DEPARTED = frozenset({State.ENROUTE, State.ARRIVED})


ExceptionKind = _mirror("ExceptionKind", _Exception.Kind, "KIND_", "MissionException.Kind.")


Severity = _mirror("Severity", _Exception.Severity, "SEVERITY_",
                   "MissionException.Severity (UNSPECIFIED is treated as WARNING).")


Contingency = _mirror("Contingency", _Exception.Contingency, "CONTINGENCY_", "MissionException.Contingency.")


CheckInPoint = _mirror("CheckInPoint", _CheckIn.Point, "POINT_", "CheckIn.Point.")


PROCEED, HOLD = _CheckIn.OUTCOME_PROCEED, _CheckIn.OUTCOME_HOLD


TakeoverStep = _mirror("TakeoverStep", mission_service_pb2.AcknowledgeMissionTakeoverRequest.Step, "STEP_",
                       "AcknowledgeMissionTakeoverRequest.Step: a step of a human takeover the vehicle confirms.")
