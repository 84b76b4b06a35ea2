"""Which frames a read covers: all of a vehicle's, or those of one mission. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass

from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2

__all__ = ["FrameScope"]

_TERMINAL = {mission_pb2.Mission.STATE_COMPLETED, mission_pb2.Mission.STATE_CANCELLED,
             mission_pb2.Mission.STATE_ABORTED}


@dataclass(frozen=True)
class FrameScope:
    """Which frames a read covers: all of a vehicle's, or those of one mission (its vehicle's frames whose
    device time is in the mission's span and that name no other mission)."""

    vehicle_id: str
    #: The frames' parent in their names: `vehicles/{vehicle}` or `missions/{mission}`.
    parent: str
    mission_id: str = ""
    #: The span in device time (ms): from dispatch (else the acknowledgement) to the end, None if open.
    start_ms: int | None = None
    end_ms: int | None = None
    ended: bool = False

    @classmethod
    def of_mission(cls, mission: mission_pb2.Mission) -> FrameScope:
        vehicle_id = mission.vehicle.removeprefix("vehicles/")
        start = next((t for t in (mission.dispatch_time, mission.dispatch_ack_time) if t.ToMilliseconds()), None)
        if start is None:  # not dispatched: no vehicle has recorded anything for it
            vehicle_id = ""
        return cls(vehicle_id, mission.name, mission.name.removeprefix("missions/"),
                   start.ToMilliseconds() if start is not None else None,
                   mission.end_time.ToMilliseconds() if mission.HasField("end_time") else None,
                   mission.state in _TERMINAL)

    def holds(self, payload: frame_pb2.FramePayload) -> bool:
        if not self.mission_id:
            return True
        if payload.mission_id and payload.mission_id != self.mission_id:
            return False
        device_ms = payload.device_time.ToMilliseconds()
        return (self.start_ms is not None and device_ms >= self.start_ms
                and (self.end_ms is None or device_ms < self.end_ms))

    def beyond(self, payload: frame_pb2.FramePayload, margin_ms: int) -> bool:
        """Whether a frame lies so far after the span that no later frame of the vehicle can be in it: the
        vehicle numbers its readings in the order it takes them, so device time grows with sequence (the
        margin absorbs clock corrections)."""
        return self.end_ms is not None and payload.device_time.ToMilliseconds() >= self.end_ms + margin_ms
