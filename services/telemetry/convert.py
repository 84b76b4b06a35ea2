"""Protobuf ↔ the telemetry domain's own types: the tracker's inputs and derived events (domain/), stored frames
(store.py) as TelemetryFrame, reject reasons and durations on the wire.

Only where the domain keeps types of its own; elsewhere the generated messages are the domain's data.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import duration_pb2

from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime import from_timestamp, timestamp_ms, to_timestamp

from .domain import (
    Alarm,
    Circle,
    ConnectivityLost,
    ConnectivityRestored,
    EtaUpdated,
    Fence,
    Frame,
    FrameScope,
    GeofenceDwell,
    GeofenceEntered,
    GeofenceExited,
    LatLon,
    MissionContext,
    Polygon,
    Position,
    RejectReason,
    RouteDeviation,
    SensorFault,
    Stop,
    StopType,
)
from .domain.archive import ROW_GROUP_FRAMES

if TYPE_CHECKING:
    from .store import StoredFrame

__all__ = [
    "PART_FORMAT",
    "PART_SCHEMA",
    "REJECT_REASONS",
    "ArchivedPart",
    "PartReader",
    "duration_seconds",
    "frame_from_payload",
    "mission_context_from_pb",
    "part_bytes",
    "read_part",
    "telemetry_frame",
    "to_event_payload",
]

#: RejectReason → the wire's Reject.Reason.
_KIND_NAMES = set(frame_pb2.FramePayload.Kind.values())

REJECT_REASONS = {reason: stream_pb2.Reject.Reason.Value(f"REASON_{reason.value}") for reason in RejectReason}


def duration_seconds(seconds: float) -> duration_pb2.Duration:
    """A Duration of ``seconds`` (to the nanosecond)."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def telemetry_frame(scope: FrameScope, stored: StoredFrame) -> frame_pb2.TelemetryFrame:
    """A stored frame as a TelemetryFrame of the read's scope (named under the vehicle or the mission)."""
    parent = scope.parent if scope.mission_id else f"vehicles/{scope.vehicle_id}"
    return frame_pb2.TelemetryFrame(
        name=f"{parent}/telemetryFrames/{stored.sequence}",
        signed_frame=frame_pb2.SignedFrame(sequence=stored.sequence, payload=stored.payload,
                                           signature=stored.signature, key_id=stored.key_id),
        payload=frame_pb2.FramePayload.FromString(stored.payload),
        receive_time=timestamp_ms(stored.receive_ms),
        tier=frame_pb2.TIER_ARCHIVE if stored.tier == "archive" else frame_pb2.TIER_HOT,
    )


# ---- archived parts: stored frames <-> Parquet ---------------------------------------------------------------

#: Columns of an archived part. The first five are the complete signed envelope as stored (verify ``signature``
#: over ``payload`` with the key of ``key_id``, whose certificate is in the footer's ``haulmesh.certs``); the
#: others are decoded from the payload for queries only and are never the evidence.
PART_SCHEMA = pa.schema([
    pa.field("sequence", pa.uint64(), nullable=False),
    pa.field("payload", pa.binary(), nullable=False),
    pa.field("signature", pa.binary(), nullable=False),
    pa.field("key_id", pa.string(), nullable=False),
    pa.field("receive_ms", pa.int64(), nullable=False),
    pa.field("device_time", pa.timestamp("ms", tz="UTC")),
    pa.field("kind", pa.string()),
    pa.field("mission_id", pa.string()),
    pa.field("lat", pa.float64()),
    pa.field("lon", pa.float64()),
])
#: Footer (key-value metadata) format tag of a part; a reader refuses parts of another format.
PART_FORMAT = "haulmesh.telemetry.archive.part/1"


def part_bytes(vehicle_id: str, carrier_id: str, frames: list[StoredFrame], certificates: dict[str, str]) -> bytes:
    """One archived part: ``frames`` (ascending) as Parquet (zstd, page checksums), the certificates (PEM by
    key id) of the keys that signed them in the footer. Deterministic: the same frames give the same bytes with
    the same pyarrow, which lets a re-run recognise its own earlier write by digest."""
    decoded = [frame_pb2.FramePayload.FromString(f.payload) for f in frames]
    columns = {
        "sequence": [f.sequence for f in frames],
        "payload": [f.payload for f in frames],
        "signature": [f.signature for f in frames],
        "key_id": [f.key_id for f in frames],
        "receive_ms": [f.receive_ms for f in frames],
        "device_time": [p.device_time.ToMilliseconds() if p.HasField("device_time") else None for p in decoded],
        "kind": [frame_pb2.FramePayload.Kind.Name(p.kind) if p.kind in _KIND_NAMES else str(p.kind)
                 for p in decoded],
        "mission_id": [p.mission_id for p in decoded],
        "lat": [p.position.lat if p.HasField("position") else None for p in decoded],
        "lon": [p.position.lon if p.HasField("position") else None for p in decoded],
    }
    used = sorted({f.key_id for f in frames})
    metadata = {
        "haulmesh.format": PART_FORMAT,
        "haulmesh.vehicle": vehicle_id,
        "haulmesh.carrier": carrier_id,
        "haulmesh.first_sequence": str(frames[0].sequence),
        "haulmesh.last_sequence": str(frames[-1].sequence),
        "haulmesh.count": str(len(frames)),
        # The certificate that verified each key's frames: what a third party checks the signatures with.
        "haulmesh.certs": json.dumps({k: certificates.get(k, "") for k in used}, sort_keys=True),
    }
    table = pa.table(columns, schema=PART_SCHEMA.with_metadata(metadata))
    out = io.BytesIO()
    # Row groups of ROW_GROUP_FRAMES: a read of a few frames decodes one group, found by its sequence statistics.
    pq.write_table(table, out, compression="zstd", write_page_checksum=True, write_statistics=True,
                   row_group_size=ROW_GROUP_FRAMES)
    return out.getvalue()


@dataclass(frozen=True)
class ArchivedPart:
    """A part read back: its frames (tier ``archive``) and the certificates of its footer (PEM by key id)."""

    vehicle_id: str
    carrier_id: str
    frames: list[StoredFrame]
    certificates: dict[str, str]


def read_part(data: bytes) -> ArchivedPart:
    """Parse an archived part, verifying its page checksums; ValueError if it is not one."""
    from .store import StoredFrame

    try:
        table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable Parquet part: {exc}") from None
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if metadata.get("haulmesh.format") != PART_FORMAT:
        raise ValueError(f"not an archived telemetry part (format {metadata.get('haulmesh.format')!r})")
    columns = table.select(["sequence", "payload", "signature", "key_id", "receive_ms"]).to_pydict()
    frames = [StoredFrame(*row, tier="archive") for row in zip(
        columns["sequence"], columns["payload"], columns["signature"], columns["key_id"], columns["receive_ms"],
        strict=True)]
    return ArchivedPart(metadata.get("haulmesh.vehicle", ""), metadata.get("haulmesh.carrier", ""), frames,
                        json.loads(metadata.get("haulmesh.certs", "{}")))


class PartReader:
    """An archived part's bytes opened for reads by sequence: only the row groups whose sequence statistics
    overlap the range asked are decoded (a page of 1 frame from a 20,000-frame part decodes ~1,000 rows)."""

    def __init__(self, data: bytes) -> None:
        try:
            # A native buffer reader (positioned reads): no shared Python file position between reads.
            self._file = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"not a readable Parquet part: {exc}") from None
        metadata = {k.decode(): v.decode() for k, v in (self._file.schema_arrow.metadata or {}).items()}
        if metadata.get("haulmesh.format") != PART_FORMAT:
            raise ValueError(f"not an archived telemetry part (format {metadata.get('haulmesh.format')!r})")
        sequence = self._file.schema_arrow.get_field_index("sequence")
        #: (first, last) sequence of each row group, from the footer's statistics (no data read).
        self.groups: list[tuple[int, int]] = []
        for index in range(self._file.metadata.num_row_groups):
            stats = self._file.metadata.row_group(index).column(sequence).statistics
            if stats is None or not stats.has_min_max:
                raise ValueError(f"row group {index} of the part has no sequence statistics")
            self.groups.append((int(stats.min), int(stats.max)))
        #: Row groups decoded so far (a test's window on the bounded work of a read).
        self.groups_read = 0
        self._lock = threading.Lock()  # reads run in worker threads; one decode of this file at a time

    def frames(self, after: int, upper: int, count: int) -> list[StoredFrame]:
        """The part's frames with ``after`` < sequence <= ``upper`` (0: no bound), ascending, at most ``count``,
        decoding only the row groups that can hold them."""
        from .store import StoredFrame

        out: list[StoredFrame] = []
        for index, (first, last) in enumerate(self.groups):
            if last <= after:
                continue
            if (upper and first > upper) or len(out) >= count:
                break
            with self._lock:
                self.groups_read += 1
                columns = self._file.read_row_group(
                    index, columns=["sequence", "payload", "signature", "key_id", "receive_ms"]).to_pydict()
            for row in zip(columns["sequence"], columns["payload"], columns["signature"], columns["key_id"],
                           columns["receive_ms"], strict=True):
                if row[0] > after and (not upper or row[0] <= upper):
                    out.append(StoredFrame(*row, tier="archive"))
                    if len(out) >= count:
                        break
        return out


# ---- the tracker's inputs and the derived events ---------------------------------------------------------

_KINDS = {frame_pb2.FramePayload.KIND_POSITION: "position", frame_pb2.FramePayload.KIND_HEALTH: "health",
          frame_pb2.FramePayload.KIND_ALARM: "alarm", frame_pb2.FramePayload.KIND_FAULT: "fault",
          frame_pb2.FramePayload.KIND_EVENT: "event"}
_SEVERITIES = {frame_pb2.Alarm.SEVERITY_INFO: "info", frame_pb2.Alarm.SEVERITY_CRITICAL: "critical"}
_STOP_TYPES = {mission_pb2.Stop.TYPE_PICKUP: StopType.PICKUP, mission_pb2.Stop.TYPE_DELIVERY: StopType.DELIVERY}
_STOP_TYPES_PB = {v: k for k, v in _STOP_TYPES.items()}


def frame_from_payload(payload: frame_pb2.FramePayload) -> Frame:
    """The tracker's view of a decoded (already verified) FramePayload."""
    position = None
    if payload.HasField("position"):
        p = payload.position
        position = Position(p.lat, p.lon, p.speed_kph, p.heading_deg, p.accuracy_meters)
    sensors = {k: v for k, v in (("lidar", payload.sensors.lidar_status), ("camera", payload.sensors.camera_health),
                                 ("radar", payload.sensors.radar_status)) if v}
    alarm = None
    if payload.HasField("alarm"):
        a = payload.alarm
        alarm = Alarm(a.code, _SEVERITIES.get(a.severity, "warning"), a.component, a.description, a.cleared)
    # A verified payload's device time is set (and within the clock window), so never None here.
    return Frame(vehicle_id=payload.vehicle_id, sequence=payload.sequence,
                 device_time=from_timestamp(payload.device_time),  # type: ignore[arg-type]
                 kind=_KINDS.get(payload.kind, "position"), position=position, sensors=sensors, alarm=alarm,
                 mission_id=payload.mission_id)


def _fence_from_pb(stop: mission_pb2.Stop) -> Fence:
    shape = stop.geofence.WhichOneof("shape")
    if shape == "polygon":
        return Polygon(tuple(LatLon(v.lat, v.lon) for v in stop.geofence.polygon.vertices))
    if shape == "circle":
        c = stop.geofence.circle
        return Circle(LatLon(c.center.lat, c.center.lon), c.radius_meters)
    return Circle(LatLon(stop.location.lat, stop.location.lon), 500.0)  # the mission service's default


def mission_context_from_pb(mission: mission_pb2.Mission, *, route: list[LatLon] | tuple[LatLon, ...] = (),
                            corridor_width_m: float = 1000.0) -> MissionContext:
    """The tracker's view of a Mission (stops, fences, windows, recorded arrivals/departures)."""
    stops = []
    for i, s in enumerate(mission.stops):
        stops.append(Stop(
            index=i, type=_STOP_TYPES.get(s.type, StopType.DELIVERY), location=LatLon(s.location.lat, s.location.lon),
            fence=_fence_from_pb(s),
            window_end=from_timestamp(s.planned_window.end_time) if s.planned_window.HasField("end_time") else None,
            arrive_time=from_timestamp(s.arrive_time) if s.HasField("arrive_time") else None,
            depart_time=from_timestamp(s.depart_time) if s.HasField("depart_time") else None))
    return MissionContext(mission_id=mission.name.removeprefix("missions/"),
                          vehicle_id=mission.vehicle.removeprefix("vehicles/"), stops=tuple(stops),
                          route=tuple(route), corridor_width_m=corridor_width_m)


def _dur(d: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(d)
    return out


def _loc(p: LatLon | None) -> location_pb2.Location | None:
    return None if p is None else location_pb2.Location(lat=p.lat, lon=p.lon)


def _names(event: object) -> tuple[str, str]:
    mission, vehicle = getattr(event, "mission_id", ""), getattr(event, "vehicle_id", "")
    return (f"missions/{mission}" if mission else ""), f"vehicles/{vehicle}"


def to_event_payload(event: object) -> tuple[str, object]:
    """``(event_type, haulmesh.events.v1 payload)`` of a derived event.

    A SensorFault becomes ``fault_reported`` (its component is the sensor, or the FAULT frame's own
    component), a RouteDeviation ``route_deviated``; the mission exceptions they call for are raised by the
    consumer of those events (usecases/missions.py).
    """
    mission, vehicle = _names(event)
    prefix = "haulmesh.telemetry.v1."
    if isinstance(event, GeofenceEntered | GeofenceExited | GeofenceDwell):
        ctx = tev.GeofenceContext(mission=mission, vehicle=vehicle, stop_index=event.stop_index,
                                  stop_type=_STOP_TYPES_PB[event.stop_type], location=_loc(event.location),
                                  device_time=to_timestamp(event.device_time), frame_sequence=event.frame_sequence)
        if isinstance(event, GeofenceEntered):
            return prefix + "geofence_entered", tev.GeofenceEntered(context=ctx)
        if isinstance(event, GeofenceExited):
            return prefix + "geofence_exited", tev.GeofenceExited(context=ctx, dwell=_dur(event.dwell))
        return prefix + "geofence_dwell", tev.GeofenceDwell(context=ctx, dwell=_dur(event.dwell),
                                                            threshold=_dur(event.threshold))
    if isinstance(event, EtaUpdated):
        msg = tev.EtaUpdated(mission=mission, vehicle=vehicle, stop_index=event.stop_index,
                             estimated_arrive_time=to_timestamp(event.estimated_arrive_time),
                             remaining_miles=event.remaining_miles, late=event.late,
                             frame_sequence=event.frame_sequence, confidence=event.confidence,
                             device_time=to_timestamp(event.device_time))
        if event.previous_estimated_arrive_time is not None:
            msg.previous_estimated_arrive_time.CopyFrom(to_timestamp(event.previous_estimated_arrive_time))
        return prefix + "eta_updated", msg
    if isinstance(event, ConnectivityLost):
        return prefix + "connectivity_lost", tev.ConnectivityLost(
            vehicle=vehicle, mission=mission, last_seen_time=to_timestamp(event.last_seen_time),
            last_sequence=event.last_sequence, last_location=_loc(event.last_location))
    if isinstance(event, ConnectivityRestored):
        return prefix + "connectivity_restored", tev.ConnectivityRestored(
            vehicle=vehicle, mission=mission, outage=_dur(event.outage),
            high_water_sequence=event.high_water_sequence, vehicle_last_sequence=event.vehicle_last_sequence)
    if isinstance(event, RouteDeviation):
        return prefix + "route_deviated", tev.RouteDeviated(
            vehicle=vehicle, mission=mission, distance_meters=event.distance_m,
            corridor_width_meters=event.corridor_width_m, frames=event.frames, location=_loc(event.location),
            device_time=to_timestamp(event.device_time), frame_sequence=event.frame_sequence)
    if isinstance(event, SensorFault):
        # A sensor's status change is announced like a FAULT frame, with the sensor as the component, so one
        # event type carries every fault the mission service may turn into an exception.
        critical = event.severity == "critical"
        severity = frame_pb2.Alarm.SEVERITY_CRITICAL if critical else frame_pb2.Alarm.SEVERITY_WARNING
        return prefix + "fault_reported", tev.FaultReported(
            vehicle=vehicle, mission=mission, frame_sequence=event.frame_sequence,
            device_time=to_timestamp(event.device_time),
            kind=frame_pb2.FramePayload.KIND_FAULT, location=_loc(event.location),
            alarm=frame_pb2.Alarm(code=event.code, severity=severity, description=event.description[:1000],
                                  component=event.component,
                                  cleared=event.cleared))
    raise TypeError(f"{type(event).__name__} has no telemetry event payload")
