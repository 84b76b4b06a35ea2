"""Fleet state to the roster: the :class:`~..domain.FleetBook` of this process, reported to the mission service in
batches through ``MissionService.ReportFleetState``.

Frames, heartbeats and Hellos only update memory (:class:`FleetReporter` is fed by usecases/tracking.py); a
companion loop (workers.py) reports what changed every ``flush_seconds`` (HAULMESH_TELEMETRY_FLEET_FLUSH_SECONDS,
10 s by default), and at once when a vehicle's connectivity changed (that early round carries only the
connectivity changes). So a truck sending 10 frames a second costs the roster one write per flush, not ten a
second. A round sends what was due when it began (the book's generation mark), never what arrived while it ran.

A report that fails is given back to the book (with what the roster had been told before restored) and the
reporter backs off: no round, not even for a connectivity change, until a delay that doubles per consecutive
failure (1 s, capped at 60 s, jittered) has passed. The mission service keeps the newest of what it is told, so
a retried batch is harmless. Entries the mission service rejects (it applies the valid ones and lists the
others) are logged and dropped: sending them again would not make them valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from haulmesh.mission.v1 import mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime import to_timestamp

from ..domain.fleet import OFFLINE, FleetBook, FleetReport, retry_delay
from ..domain.geometry import LatLon
from ..metrics import FLEET_REPORTS

__all__ = ["MAX_REPORT_VEHICLES", "FleetReporter"]

_log = logging.getLogger("haulmesh.telemetry.fleet")

#: Vehicles per ReportFleetState (the RPC's bound, mission_service.proto).
MAX_REPORT_VEHICLES = 500
_RPC_TIMEOUT_SECONDS = 10.0
#: Backoff after a failed report: the first delay and its cap.
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0


def observation(report: FleetReport) -> mission_service_pb2.VehicleObservation:
    """One vehicle's entry of a ReportFleetState request."""
    entry = mission_service_pb2.VehicleObservation(
        vehicle=f"vehicles/{report.vehicle_id}", mission=report.mission,
        connectivity=(vehicle_pb2.Vehicle.CONNECTIVITY_OFFLINE if report.connectivity == OFFLINE
                      else vehicle_pb2.Vehicle.CONNECTIVITY_ONLINE),
        last_seen_time=to_timestamp(report.last_seen))
    if report.location is not None:
        entry.last_location.CopyFrom(location_pb2.Location(lat=report.location.lat, lon=report.location.lon))
        if report.location_time is not None:
            entry.location_time.CopyFrom(to_timestamp(report.location_time))
    if report.mission:
        for stop, (eta, device_time) in sorted(report.estimates.items()):
            entry.stop_estimates.add(stop_index=stop, estimated_arrive_time=to_timestamp(eta),
                                     device_time=to_timestamp(device_time))
    return entry


class FleetReporter:
    """This process's fleet book and the loop that reports it (``mission_stub()`` gives the MissionService stub)."""

    def __init__(self, mission_stub: Callable[[], Any], *, flush_seconds: float = 10.0,
                 retry_base_seconds: float = RETRY_BASE_SECONDS, retry_cap_seconds: float = RETRY_CAP_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.book = FleetBook()
        self._stub = mission_stub
        self._flush_seconds = flush_seconds
        self._retry_base, self._retry_cap = retry_base_seconds, retry_cap_seconds
        self._clock = clock
        self._due = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Consecutive failed reports, and the clock time before which no report is tried.
        self._failures = 0
        self._resume_at = 0.0
        #: Reports sent (RPCs) and vehicles in them, for tests and logs (the metrics count them too).
        self.reports = 0
        self.vehicles_reported = 0
        #: Reports tried (sent or failed).
        self.attempts = 0

    # ---- inputs (memory only) ---------------------------------------------------------------------------

    def heard(self, vehicle_id: str, at: datetime, *, location: LatLon | None = None,
              location_time: datetime | None = None) -> None:
        if self.book.heard(vehicle_id, at, location=location, location_time=location_time):
            self._due.set()  # came online: the roster hears of it now

    def estimate(self, vehicle_id: str, mission: str, stop_index: int, eta: datetime, device_time: datetime) -> None:
        self.book.estimate(vehicle_id, mission, stop_index, eta, device_time)

    def offline(self, vehicle_id: str, last_seen: datetime, silent_since: datetime) -> None:
        if self.book.offline(vehicle_id, last_seen, silent_since):
            self._due.set()

    def forget(self, vehicle_id: str) -> None:
        self.book.forget(vehicle_id)

    # ---- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Report everything due every ``flush_seconds``, the connectivity changes at once, and nothing while
        backing off after a failure, until :meth:`stop`."""
        next_round = self._clock() + self._flush_seconds
        while not self._stopping.is_set():
            now = self._clock()
            if now < self._resume_at:  # backing off: not even a connectivity change goes now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._resume_at - now)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), max(0.0, next_round - now))
            if self._stopping.is_set():
                break
            self._due.clear()
            periodic = self._clock() >= next_round
            await self.flush(urgent_only=not periodic)
            if periodic:
                next_round = self._clock() + self._flush_seconds
        if self._clock() >= self._resume_at:
            await self.flush()  # what the last round did not carry (best effort at shutdown)

    async def stop(self) -> None:
        self._stopping.set()
        self._due.set()

    async def flush(self, *, urgent_only: bool = False) -> int:
        """Report what is due now (only the connectivity changes with ``urgent_only``), in batches: what
        became due while this runs waits for the next round. Returns how many vehicles were reported."""
        sent = 0
        through = self.book.mark()
        while batch := self.book.take(MAX_REPORT_VEHICLES, through=through, urgent_only=urgent_only):
            request = mission_service_pb2.ReportFleetStateRequest(vehicles=[observation(r) for r in batch])
            self.attempts += 1
            try:
                response = await self._stub().ReportFleetState(request, timeout=_RPC_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                self.book.give_back(batch)
                raise
            except Exception as exc:  # the mission service is away: keep it, and wait before trying again
                self.book.give_back(batch)
                FLEET_REPORTS.labels("failed").inc()
                self._failures += 1
                delay = retry_delay(self._failures, base_seconds=self._retry_base, cap_seconds=self._retry_cap,
                                    draw=random.random())  # noqa: S311 - jitter, not security
                self._resume_at = self._clock() + delay
                _log.warning("fleet state report of %d vehicles failed (%s); retried in %.1f s",
                             len(batch), exc, delay)
                return sent
            self._failures, self._resume_at = 0, 0.0
            for rejected in getattr(response, "rejected_vehicles", ()):
                _log.warning("fleet state of %s rejected by the mission service: %s", rejected.vehicle,
                             "; ".join(f"{v.field}: {v.description}" for v in rejected.field_violations))
            FLEET_REPORTS.labels("sent").inc()
            self.reports += 1
            self.vehicles_reported += len(batch)
            sent += len(batch)
        return sent
