"""Metering from signed telemetry: miles and hours driven, measured from a vehicle's stored frames.

One computation for everyone who needs the figure: the mission service bills with it, the evidence pack's
verifier recomputes the invoice's miles with it, the KPI report measures cost per mile with it. Plain Python
and the generated contracts: no gRPC, no Redis, no service.

Rules (issue 10, "usage from the evidence"):

- **Miles.** The great-circle sum between consecutive position fixes, in sequence order; or, when *every* fix
  carries a signed odometer reading that never decreases, the odometer difference last - first. The odometer
  wins when it is complete because it counts the wheels on the road: curves between fixes and the road
  driven through a dead zone, which a chord sum cuts and a bridge can only estimate. Both are signed by the
  same vehicle key, so neither is more trustworthy; one missing or decreasing reading (a swapped unit, a
  reset) and the positions are used for the whole measurement, never a mix.
- **Gaps.** Two consecutive fixes more than ``gap_seconds`` apart (device time) are a gap: the distance
  between them is bridged along the planned route (the route polyline's length between the two fixes'
  projections onto it, never less than the straight line between them, since no road is shorter), or, with
  no route, the straight line times the lane facts' circuity factor. Every gap is listed with what it added.
- **Hours.** Device time of the first fix to the last, never negative.
- **Rounding.** Miles to 0.1, hours to 0.001 (3.6 s), gap seconds to 0.001, bridged miles to 0.1; the sum is
  taken unrounded and rounded once.
- **The telemetry log digest** (mission.proto, ``DeliveryManifest.telemetry_log_sha256``): SHA-256 over the
  concatenation, in ascending sequence, of (4-byte big-endian length of the payload || the payload bytes).
  The edge client carries a copy of this rule (it may not import services); one shared vector,
  ``tests/contracts/pod_telemetry_log_vector.json``, is checked against both.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from haulmesh.telemetry.v1 import frame_pb2

from ._geo import great_circle_miles
from ._time import from_timestamp

__all__ = [
    "DEFAULT_CIRCUITY_FACTOR",
    "ODOMETER",
    "POSITIONS",
    "Fix",
    "Gap",
    "Measurement",
    "fixes_from_payloads",
    "freshness_percentiles",
    "measure",
    "missing_sequences",
    "route_miles_between",
    "telemetry_log_sha256",
]

#: Measurement sources.
POSITIONS = "POSITIONS"
ODOMETER = "ODOMETER"
#: The circuity factor of the shipped lane facts (services/runtime/lanes.json); callers pass their
#: ``LaneFacts.circuity_factor``.
DEFAULT_CIRCUITY_FACTOR = 1.13


@dataclass(frozen=True)
class Fix:
    """One position fix from a signed frame."""

    sequence: int
    device_time: datetime
    lat: float
    lon: float
    #: The frame's signed odometer reading in statute miles; None when the frame carries none (0 on the wire:
    #: proto3 has no presence for a plain double, and no truck in service reads exactly 0).
    odometer_miles: float | None = None


@dataclass(frozen=True)
class Gap:
    """Two consecutive fixes further apart in time than the gap threshold, and the miles bridged between."""

    after_sequence: int
    before_sequence: int
    seconds: float
    bridged_miles: float


@dataclass(frozen=True)
class Measurement:
    """Miles and hours measured from fixes, with what they rest on."""

    miles: float
    hours: float
    #: Sequence range measured (0, 0 with no fixes).
    first_sequence: int
    last_sequence: int
    #: Distinct fixes measured.
    frames: int
    gaps: tuple[Gap, ...]
    #: POSITIONS or ODOMETER.
    source: str

    @property
    def bridged_miles(self) -> float:
        """Miles the gaps added (0 when the odometer measured)."""
        return round(sum(g.bridged_miles for g in self.gaps), 1) if self.source == POSITIONS else 0.0


# --- Frames → fixes, and the telemetry log digest -------------------------------------------------------

def _decode(payloads: Iterable[bytes]) -> list[tuple[frame_pb2.FramePayload, bytes]]:
    decoded = []
    for raw in payloads:
        payload = frame_pb2.FramePayload.FromString(raw)
        decoded.append((payload, bytes(raw)))
    return decoded


def _in_sequence(decoded: list[tuple[frame_pb2.FramePayload, bytes]]) -> list[tuple[frame_pb2.FramePayload, bytes]]:
    """Ascending sequence, a frame given twice counted once; ValueError on two different payloads for one
    sequence (a signed log cannot hold both)."""
    by_sequence: dict[int, tuple[frame_pb2.FramePayload, bytes]] = {}
    for payload, raw in decoded:
        seen = by_sequence.setdefault(payload.sequence, (payload, raw))
        if seen[1] != raw:
            raise ValueError(f"two different payloads for sequence {payload.sequence}")
    return [by_sequence[s] for s in sorted(by_sequence)]


def fixes_from_payloads(payloads: Iterable[bytes]) -> list[Fix]:
    """The position fixes of serialized FramePayloads (frames with a position and a device time), in
    ascending sequence, each sequence once. ValueError on an undecodable payload or a conflicting duplicate."""
    fixes = []
    for payload, _ in _in_sequence(_decode(payloads)):
        device_time = from_timestamp(payload.device_time) if payload.HasField("device_time") else None
        if not payload.HasField("position") or device_time is None:
            continue
        fixes.append(Fix(sequence=payload.sequence, device_time=device_time, lat=payload.position.lat,
                         lon=payload.position.lon, odometer_miles=payload.odometer_miles or None))
    return fixes


def telemetry_log_sha256(payloads: Iterable[bytes]) -> str:
    """Lowercase hex SHA-256 of a telemetry log: over the payloads in ascending sequence (each sequence once),
    the concatenation of (4-byte big-endian length || payload bytes). The caller chooses which frames (the
    proto: the mission's frames from the first to the last sequence)."""
    digest = hashlib.sha256()
    for _, raw in _in_sequence(_decode(payloads)):
        digest.update(struct.pack(">I", len(raw)))
        digest.update(raw)
    return digest.hexdigest()


# --- Measuring -------------------------------------------------------------------------------------------

def _project(point: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(fraction along a→b of the point's projection, squared planar distance in degrees²), on a local
    equirectangular plane: exact enough to pick the nearest segment of a road polyline."""
    scale = math.cos(math.radians((a[0] + b[0]) / 2))
    ax, ay, bx, by = a[1] * scale, a[0], b[1] * scale, b[0]
    px, py = point[1] * scale, point[0]
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    qx, qy = ax + t * dx, ay + t * dy
    return t, (px - qx) ** 2 + (py - qy) ** 2


def _along(route: Sequence[tuple[float, float]], cumulative: Sequence[float], point: tuple[float, float]) -> float:
    """Miles along the route to the point's projection on its nearest segment."""
    best = (math.inf, 0.0)
    for i in range(len(route) - 1):
        t, d2 = _project(point, route[i], route[i + 1])
        if d2 < best[0]:
            best = (d2, cumulative[i] + t * (cumulative[i + 1] - cumulative[i]))
    return best[1]


def _cumulative(route: Sequence[tuple[float, float]]) -> list[float]:
    miles = [0.0]
    for a, b in itertools.pairwise(route):
        miles.append(miles[-1] + great_circle_miles(*a, *b))
    return miles


def route_miles_between(route: Sequence[tuple[float, float]], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Miles along the route polyline between the projections of ``a`` and ``b`` (either order)."""
    cumulative = _cumulative(route)
    return abs(_along(route, cumulative, b) - _along(route, cumulative, a))


def measure(fixes: Sequence[Fix], *, gap_seconds: float, planned_route: Sequence[tuple[float, float]] = (),
            circuity_factor: float = DEFAULT_CIRCUITY_FACTOR) -> Measurement:
    """Miles and hours from fixes (any order; a sequence given twice counts once), by the module's rules.

    ``gap_seconds`` > 0: the longest normal spacing of fixes; ``planned_route``: (lat, lon) points of the
    mission's road, used to bridge gaps; ``circuity_factor``: road miles per straight-line mile without one.
    """
    if not gap_seconds > 0:
        raise ValueError("gap_seconds must be > 0")
    ordered = sorted({f.sequence: f for f in fixes}.values(), key=lambda f: f.sequence)
    if not ordered:
        return Measurement(0.0, 0.0, 0, 0, 0, (), POSITIONS)
    route = [(float(lat), float(lon)) for lat, lon in planned_route]
    cumulative = _cumulative(route) if len(route) >= 2 else []
    readings = [f.odometer_miles for f in ordered]
    odometer = (len(ordered) >= 2 and all(r is not None for r in readings)
                and all(b >= a for a, b in itertools.pairwise(readings)))  # type: ignore[operator]
    miles, gaps = 0.0, []
    for a, b in itertools.pairwise(ordered):
        straight = great_circle_miles(a.lat, a.lon, b.lat, b.lon)
        seconds = (b.device_time - a.device_time).total_seconds()
        if seconds > gap_seconds:
            if odometer:
                bridged = b.odometer_miles - a.odometer_miles  # type: ignore[operator]
            elif cumulative:
                along = abs(_along(route, cumulative, (b.lat, b.lon)) - _along(route, cumulative, (a.lat, a.lon)))
                bridged = max(straight, along)
            else:
                bridged = straight * circuity_factor
            gaps.append(Gap(a.sequence, b.sequence, round(seconds, 3), round(bridged, 1)))
            miles += bridged
        else:
            miles += straight
    if odometer:
        miles = ordered[-1].odometer_miles - ordered[0].odometer_miles  # type: ignore[operator]
    hours = max(0.0, (ordered[-1].device_time - ordered[0].device_time).total_seconds() / 3600)
    return Measurement(miles=round(miles, 1), hours=round(hours, 3), first_sequence=ordered[0].sequence,
                       last_sequence=ordered[-1].sequence, frames=len(ordered), gaps=tuple(gaps),
                       source=ODOMETER if odometer else POSITIONS)


# --- Provenance figures for the KPI report ----------------------------------------------------------------

def missing_sequences(sequences: Iterable[int], first: int, last: int) -> int:
    """How many sequences in [first, last] are not among ``sequences`` (holes in a vehicle's log)."""
    if last < first:
        return 0
    present = {s for s in sequences if first <= s <= last}
    return (last - first + 1) - len(present)


def freshness_percentiles(pairs: Iterable[tuple[datetime, datetime]]) -> tuple[float, float]:
    """(p50, p95) of receive time - device time in seconds over (device_time, receive_time) pairs, nearest
    rank, rounded to 0.001 s; (0, 0) with none. A replayed spool shows here as a long tail, by design."""
    delays = sorted((received - device).total_seconds() for device, received in pairs)
    if not delays:
        return 0.0, 0.0

    def rank(p: float) -> float:
        return round(delays[max(0, math.ceil(p * len(delays)) - 1)], 3)

    return rank(0.50), rank(0.95)
