"""Usage metering for billing (measured from the mission's signed frames), stop dwell from the geofence
times telemetry derives, and the billing hand-off's retry pacing.

Miles and hours are measured by the runtime's one metering rule (services/runtime/metering.py) from the frames
telemetry stored for the mission, over the mission's planned route; each figure carries its provenance (the
frames' sequence range, count, gaps bridged, the digest of the log measured), so an invoice line can be traced
back to signed readings. Dwell at a stop is the vehicle's geofence entry → exit (telemetry's geofence_entered /
geofence_exited, recorded on the stop by :func:`record_geofence`); at the delivery stop the truck usually leaves
the fence after delivery, so dwell there runs to the proof of delivery's deliver time instead, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import FailedPrecondition, from_timestamp
from services.runtime.metering import (
    ODOMETER,
    fixes_from_payloads,
    freshness_percentiles,
    measure,
    missing_sequences,
    telemetry_log_sha256,
)

__all__ = ["MissionFrame", "billing_retry_delay", "check_frame_budget", "measured_usage", "mission_hours",
           "record_geofence", "stop_dwells", "usage", "whole_minutes"]

_Source = invoice_pb2.UsageProvenance.Source
_Basis = invoice_pb2.StopDwell.Basis


@dataclass(frozen=True)
class MissionFrame:
    """One stored frame of the mission, as metering needs it: the signed payload bytes and the receive time."""

    payload: bytes
    receive_time: datetime | None = None


# --- Dwell from geofence crossings -------------------------------------------------------------------

def record_geofence(mission: mission_pb2.Mission, stop_index: int, *, entered: bool, device_time: Timestamp) -> bool:
    """Record one of telemetry's geofence crossings on the stop: the earliest entry, and the earliest exit not
    before it (a telemetry restart may report a visit twice; the first crossing is the fact). Any state: the
    delivery stop's exit usually comes after delivery. False when nothing changes (unknown stop, unset time,
    a later crossing than the one recorded)."""
    when = from_timestamp(device_time)
    if when is None or not 0 <= stop_index < len(mission.stops):
        return False
    stop = mission.stops[stop_index]
    enter = from_timestamp(stop.geofence_enter_time)
    exit_ = from_timestamp(stop.geofence_exit_time)
    if entered:
        if enter is not None and enter <= when:
            return False
        stop.geofence_enter_time.CopyFrom(device_time)
        if exit_ is not None and exit_ < when:
            stop.ClearField("geofence_exit_time")  # that exit belonged to no entry we know
        return True
    if (enter is not None and when < enter) or (exit_ is not None and exit_ <= when):
        return False
    stop.geofence_exit_time.CopyFrom(device_time)
    return True


def whole_minutes(start: datetime, end: datetime) -> int:
    """Whole minutes from ``start`` to ``end``, rounded down, never negative."""
    return max(0, int((end - start).total_seconds() // 60))


def stop_dwells(mission: mission_pb2.Mission) -> list[invoice_pb2.StopDwell]:
    """Dwell per stop from its geofence times: entry → exit (GEOFENCE); at the last stop, entry → the proof's
    deliver time when the exit is unknown or later (GEOFENCE_ENTRY_TO_DELIVERY: detention ends at hand-over).
    A stop without a recorded entry has no dwell (nothing measured, nothing billed)."""
    dwells = []
    deliver_ts = mission.proof_of_delivery.manifest_details.deliver_time
    delivered = from_timestamp(deliver_ts)
    last = len(mission.stops) - 1
    for i, stop in enumerate(mission.stops):
        enter, exit_ = from_timestamp(stop.geofence_enter_time), from_timestamp(stop.geofence_exit_time)
        basis, end_ts = _Basis.BASIS_GEOFENCE, stop.geofence_exit_time
        if enter is not None and i == last and delivered is not None and (exit_ is None or exit_ > delivered):
            # Detention ends at hand-over; a deliver time before the entry (device clocks) counts as no dwell.
            basis, end_ts = _Basis.BASIS_GEOFENCE_ENTRY_TO_DELIVERY, (
                deliver_ts if delivered >= enter else stop.geofence_enter_time)
            exit_ = max(delivered, enter)
        if enter is None or exit_ is None:
            continue  # never entered, or still inside a pickup or intermediate stop: nothing measured yet
        dwells.append(invoice_pb2.StopDwell(stop_index=i, arrive_time=stop.geofence_enter_time, depart_time=end_ts,
                                            dwell_minutes=whole_minutes(enter, exit_), basis=basis))
    return dwells


# --- Miles and hours from the frames -------------------------------------------------------------------

def check_frame_budget(count: int, cap: int, mission_name: str) -> None:
    """FAILED_PRECONDITION MISSION_FRAMES_EXCEEDED once a mission has more frames than one measurement reads
    (HAULMESH_USAGE_MAX_FRAMES): billing such a mission needs an operator, never a silent truncation."""
    if count > cap:
        raise FailedPrecondition(
            f"{mission_name} has more than {cap} telemetry frames, the most one usage measurement reads "
            f"(HAULMESH_USAGE_MAX_FRAMES)", reason="MISSION_FRAMES_EXCEEDED",
            metadata={"mission": mission_name, "max_frames": str(cap)})


def measured_usage(mission: mission_pb2.Mission, frames: Sequence[MissionFrame], *, gap_seconds: float,
                   circuity_factor: float) -> invoice_pb2.Usage:
    """The mission's usage measured from its stored frames (runtime.metering over the planned route), with
    provenance and the stop dwells. With fewer than two position fixes nothing was measured: the usage of the
    recorded times (:func:`usage`, planned miles, no provenance), so billing bills the accepted quote and the
    invoice's line-haul does not claim a measurement."""
    fixes = fixes_from_payloads(f.payload for f in frames)
    if len(fixes) < 2:
        return usage(mission)
    route = [(p.lat, p.lon) for p in mission.planned_route]
    m = measure(fixes, gap_seconds=gap_seconds, planned_route=route, circuity_factor=circuity_factor)
    # Everything the proto's log rule covers: every frame of the mission in the measured sequence range.
    in_range: dict[int, MissionFrame] = {}
    pairs = []
    for f in frames:
        payload = frame_pb2.FramePayload.FromString(f.payload)
        if not m.frames or not m.first_sequence <= payload.sequence <= m.last_sequence:
            continue
        if in_range.setdefault(payload.sequence, f) is f:
            device = from_timestamp(payload.device_time)
            if device is not None and f.receive_time is not None:
                pairs.append((device, f.receive_time))
    p50, p95 = freshness_percentiles(pairs)
    provenance = invoice_pb2.UsageProvenance(
        mission=mission.name, vehicle=mission.vehicle, first_sequence=m.first_sequence,
        last_sequence=m.last_sequence, frame_count=m.frames,
        source=_Source.SOURCE_ODOMETER if m.source == ODOMETER else _Source.SOURCE_POSITIONS,
        telemetry_log_sha256=telemetry_log_sha256(f.payload for f in in_range.values()),
        freshness_p50_seconds=p50, freshness_p95_seconds=p95,
        frames_missing=missing_sequences(in_range, m.first_sequence, m.last_sequence) if m.frames else 0,
        gap_threshold_seconds=gap_seconds, circuity_factor=circuity_factor)
    for gap in m.gaps:
        provenance.gaps.add(after_sequence=gap.after_sequence, before_sequence=gap.before_sequence,
                            seconds=gap.seconds, bridged_miles=gap.bridged_miles)
    return invoice_pb2.Usage(lane=mission.lane, miles=m.miles, hours=m.hours, stop_dwells=stop_dwells(mission),
                             provenance=provenance)


# --- Without frames (no telemetry service wired: tests of the hand-off alone) ---------------------------

def mission_hours(start: datetime, delivered: datetime) -> float:
    """Hours from departure to delivery, never negative, rounded to 1/1000 h (3.6 s)."""
    return round(max(0.0, (delivered - start).total_seconds() / 3600), 3)


def usage(mission: mission_pb2.Mission) -> invoice_pb2.Usage:
    """Usage from the recorded times alone (no provenance): planned miles, departure-to-delivery hours, geofence
    dwell per stop. Only where no telemetry service is wired; the service measures (:func:`measured_usage`)."""
    start = from_timestamp(mission.start_time)
    delivered = (from_timestamp(mission.stops[-1].depart_time)
                 or from_timestamp(mission.proof_of_delivery.submit_time))
    return invoice_pb2.Usage(lane=mission.lane, miles=mission.route_miles,
                             hours=mission_hours(start, delivered) if start and delivered else 0.0,
                             stop_dwells=stop_dwells(mission))


def billing_retry_delay(attempts: int, sweep_seconds: float, max_backoff_seconds: float) -> float:
    """Seconds until the next billing attempt of a mission billing refused ``attempts`` times: doubling
    from the sweep interval, at most ``max_backoff_seconds``."""
    return min(max_backoff_seconds, sweep_seconds * 2 ** min(attempts, 20))
