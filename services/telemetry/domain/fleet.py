"""Fleet state, accumulated: what the roster should learn of each vehicle, without a write per frame. Plain Python.

One :class:`FleetBook` per telemetry process. Every frame, heartbeat and Hello only updates memory (the last
position, when the vehicle was last heard); derived ETAs are kept per stop of its mission; the liveness sweep
marks vehicles offline. :meth:`FleetBook.take` hands out what changed since the last report, in batches, for
the mission service's ReportFleetState; a connectivity change (first heard here, or silent too long) makes a
report due at once (:meth:`FleetBook.heard` and :meth:`FleetBook.offline` return True), everything else waits
for the periodic flush. A vehicle reported offline leaves the book, so it holds the vehicles streaming here.

A flush sends what was due when it began, never what changed while it ran (:meth:`FleetBook.mark` and the
``through`` of :meth:`FleetBook.take`): under continuous traffic every vehicle is dirty again a frame later, and
draining "until nothing is dirty" would write the roster per frame. A position that is no fix at all (NaN, out
of range, or the (0, 0) an unset message decodes to) is not kept: it would make the roster refuse the vehicle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from .geometry import LatLon

__all__ = ["FleetBook", "FleetReport", "retry_delay", "valid_fix"]

ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True, slots=True)
class FleetReport:
    """What to report of one vehicle (one VehicleObservation)."""

    vehicle_id: str
    connectivity: str
    last_seen: datetime
    location: LatLon | None
    location_time: datetime | None
    mission: str
    #: stop index → (estimated arrival, device time of the frame behind it)
    estimates: dict[int, tuple[datetime, datetime]]
    #: The connectivity the roster had been told before this report ("" for never): a report given back
    #: restores it, so a failed report does not make the next frame look like news.
    was_reported: str = ""
    #: Whether this report carried a connectivity change (due at once).
    urgent: bool = False


@dataclass(slots=True)
class _Entry:
    last_seen: datetime
    connectivity: str = ONLINE
    reported: str = ""  # the connectivity last reported ("" for never)
    location: LatLon | None = None
    location_time: datetime | None = None
    mission: str = ""
    estimates: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)
    dirty: bool = True
    #: The generation (:meth:`FleetBook.mark`) in which the entry became dirty: a flush takes only entries
    #: dirty since before it began.
    since: int = 0
    #: A connectivity change waits to be reported (so it is announced as news once, not per frame).
    urgent: bool = False


def valid_fix(location: LatLon) -> bool:
    """Whether ``location`` is a position at all: finite, in WGS 84 range, not the (0, 0) of no fix."""
    lat, lon = location.lat, location.lon
    return (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
            and not (lat == 0 and lon == 0))


class FleetBook:
    """The vehicles' latest state since the last report (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def heard(self, vehicle_id: str, at: datetime, *, location: LatLon | None = None,
              location_time: datetime | None = None) -> bool:
        """A frame (with its position and device time), heartbeat or Hello at ``at`` (server time); True when
        this is news for the roster that should not wait (the vehicle was not known online)."""
        entry = self._entries.get(vehicle_id)
        if entry is None:
            entry = self._entries[vehicle_id] = _Entry(last_seen=at, since=self._generation)
        entry.last_seen = max(entry.last_seen, at)
        entry.connectivity = ONLINE
        if location is not None and not valid_fix(location):
            location = None  # no fix (or a broken one): the vehicle was heard, its position is unknown
        if location is not None and (entry.location_time is None or location_time is None
                                     or location_time >= entry.location_time):
            entry.location, entry.location_time = location, location_time
        self._dirty(entry)
        return self._news(entry)

    def _dirty(self, entry: _Entry) -> None:
        if not entry.dirty:
            entry.dirty, entry.since = True, self._generation

    def mark(self) -> int:
        """Begin a flush: the generation to pass as ``through`` to :meth:`take` (what changes from now on
        waits for the next flush)."""
        mark = self._generation
        self._generation += 1
        return mark

    def estimate(self, vehicle_id: str, mission: str, stop_index: int, eta: datetime, device_time: datetime) -> None:
        """The latest ETA of a stop of the vehicle's mission (a new mission drops the previous one's)."""
        entry = self._entries.get(vehicle_id)
        if entry is None:
            return  # only vehicles heard here are on the book (their frames are what the ETA comes from)
        if entry.mission != mission:
            entry.mission, entry.estimates = mission, {}
        held = entry.estimates.get(stop_index)
        if held is None or device_time >= held[1]:
            entry.estimates[stop_index] = (eta, device_time)
            self._dirty(entry)

    def offline(self, vehicle_id: str, last_seen: datetime, silent_since: datetime) -> bool:
        """The vehicle was last heard at ``last_seen`` and nothing came since ``silent_since`` (now minus the
        liveness timeout); True when its going offline is news (report now).

        A vehicle this process never heard (it streamed to a replica that is gone) is put on the book for this
        one report."""
        entry = self._entries.get(vehicle_id)
        if entry is None:
            entry = self._entries[vehicle_id] = _Entry(last_seen=last_seen, since=self._generation)
        elif entry.last_seen > silent_since:
            return False  # a frame came here since: not offline
        entry.last_seen = max(entry.last_seen, last_seen)
        entry.connectivity = OFFLINE
        self._dirty(entry)
        return self._news(entry)

    @staticmethod
    def _news(entry: _Entry) -> bool:
        """Whether the entry's connectivity differs from the one reported and was not already news."""
        if entry.reported == entry.connectivity or entry.urgent:
            return False
        entry.urgent = True
        return True

    def forget(self, vehicle_id: str) -> None:
        """The vehicle's stream moved to another replica, which reports it from now on."""
        self._entries.pop(vehicle_id, None)

    def take(self, limit: int, *, through: int | None = None, urgent_only: bool = False) -> list[FleetReport]:
        """Up to ``limit`` vehicles that changed since they were last taken (and, with ``through`` from
        :meth:`mark`, became due no later than that generation; with ``urgent_only``, only connectivity
        changes), marked reported (offline ones leave the book). :meth:`give_back` undoes it for a report
        that could not be made."""
        reports = []
        for vehicle_id, entry in list(self._entries.items()):
            if len(reports) == limit:
                break
            if not entry.dirty or (through is not None and entry.since > through) or (urgent_only and not entry.urgent):
                continue
            reports.append(FleetReport(vehicle_id, entry.connectivity, entry.last_seen, entry.location,
                                       entry.location_time, entry.mission, dict(entry.estimates),
                                       was_reported=entry.reported, urgent=entry.urgent))
            entry.dirty, entry.urgent, entry.reported = False, False, entry.connectivity
            entry.estimates.clear()  # sent: only newer estimates go in the next report
            if entry.connectivity == OFFLINE:
                del self._entries[vehicle_id]
        return reports

    def give_back(self, reports: list[FleetReport]) -> None:
        """Reports that did not reach the roster: due again (unless newer news replaced them), with what the
        roster had been told before restored (so the next frame is not news that triggers an immediate
        retry; the reporter's backoff decides when the retry is)."""
        for report in reports:
            entry = self._entries.get(report.vehicle_id)
            if entry is None:
                if report.connectivity == OFFLINE:
                    self._entries[report.vehicle_id] = _Entry(
                        last_seen=report.last_seen, connectivity=OFFLINE, reported=report.was_reported,
                        location=report.location, location_time=report.location_time, mission=report.mission,
                        estimates=report.estimates, since=self._generation, urgent=report.urgent)
                continue
            self._dirty(entry)
            entry.reported = report.was_reported
            entry.urgent = entry.urgent or entry.connectivity != entry.reported
            if entry.mission == report.mission:
                for stop, held in report.estimates.items():
                    entry.estimates.setdefault(stop, held)

    def due(self) -> int:
        """How many vehicles have something to report."""
        return sum(1 for e in self._entries.values() if e.dirty)


def retry_delay(failures: int, *, base_seconds: float, cap_seconds: float, draw: float) -> float:
    """How long to wait after ``failures`` (≥ 1) consecutive failed reports: ``base_seconds`` doubled per
    failure, capped at ``cap_seconds``, scaled by a factor in [0.5, 1] from ``draw`` (uniform in [0, 1)) so
    that replicas that failed together do not retry together."""
    delay = min(cap_seconds, base_seconds * 2 ** min(max(failures, 1) - 1, 30))
    return delay * (1 - 0.5 * draw)
