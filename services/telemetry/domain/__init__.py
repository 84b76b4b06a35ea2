"""The telemetry service's rules: plain Python, no gRPC, no Redis, no I/O, no environment.

* frames.py: frame verification and the sequencing rules;
* scope.py: which frames a read (by vehicle or by mission) covers;
* commands.py: the command to a truck each mission event calls for;
* actions.py: the mission service call each of telemetry's own events calls for;
* the derived events: inputs.py (what the tracker reads), geometry.py and geofence.py, tracking.py (the
  per-vehicle tracker: geofence, ETA, corridor, sensors), liveness.py, events.py (what they derive).

Generated protobuf messages are plain data here (docs/decisions.md); dataclasses only where no message fits.
"""

from .commands import ASSIGN_PREFIX, COMMAND_EVENT_TYPES, assignment_command, command_for
from .events import (
    ConnectivityLost,
    ConnectivityRestored,
    EtaUpdated,
    GeofenceDwell,
    GeofenceEntered,
    GeofenceExited,
    RouteDeviation,
    SensorFault,
)
from .frames import (
    MAX_PAYLOAD_BYTES,
    MAX_SIGNATURE_BYTES,
    BatchPlan,
    FrameRejected,
    RejectReason,
    VehicleKey,
    Verified,
    key_from_spki,
    key_id_of,
    order_batch,
    plan_sequences,
    vehicle_key,
    verify_frame,
)
from .geofence import Circle, Fence, Polygon
from .geometry import METERS_PER_MILE, LatLon, Route
from .inputs import Alarm, Frame, MissionContext, Position, Stop, StopType
from .liveness import Liveness
from .scope import FrameScope
from .tracking import DerivedSettings, VehicleTracker, fault_kind

__all__ = [
    "ASSIGN_PREFIX",
    "COMMAND_EVENT_TYPES",
    "MAX_PAYLOAD_BYTES",
    "MAX_SIGNATURE_BYTES",
    "METERS_PER_MILE",
    "Alarm",
    "BatchPlan",
    "Circle",
    "ConnectivityLost",
    "ConnectivityRestored",
    "DerivedSettings",
    "EtaUpdated",
    "Fence",
    "Frame",
    "FrameRejected",
    "FrameScope",
    "GeofenceDwell",
    "GeofenceEntered",
    "GeofenceExited",
    "LatLon",
    "Liveness",
    "MissionContext",
    "Polygon",
    "Position",
    "RejectReason",
    "Route",
    "RouteDeviation",
    "SensorFault",
    "Stop",
    "StopType",
    "VehicleKey",
    "VehicleTracker",
    "Verified",
    "assignment_command",
    "command_for",
    "fault_kind",
    "key_from_spki",
    "key_id_of",
    "order_batch",
    "plan_sequences",
    "vehicle_key",
    "verify_frame",
]
