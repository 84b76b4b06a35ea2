"""Fleet state to the roster: the :class:`~..domain.FleetBook` of this process, reported to the mission service in
batches through ``MissionService.ReportFleetState``.

Frames, heartbeats and Hellos only update memory (:class:`FleetReporter` is fed by usecases/tracking.py); a
companion loop (workers.py) reports what changed every ``flush_seconds`` (HAULMESH_TELEMETRY_FLEET_FLUSH_SECONDS,
10 s by default), and at once when a vehicle's connectivity changed. So a truck sending 10 frames a second costs
the roster one write per flush, not ten a second. A report that fails is given back to the book and retried at
the next round; the mission service keeps the newest of what it is told, so a retried batch is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from haulmesh.mission.v1 import mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime import to_timestamp

from ..domain.fleet import OFFLINE, FleetBook, FleetReport
from ..domain.geometry import LatLon
from ..metrics import FLEET_REPORTS

__all__ = ["MAX_REPORT_VEHICLES", "FleetReporter"]

_log = logging.getLogger("haulmesh.telemetry.fleet")

#: Vehicles per ReportFleetState (the RPC's bound, mission_service.proto).
MAX_REPORT_VEHICLES = 500
_RPC_TIMEOUT_SECONDS = 10.0


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

    def __init__(self, mission_stub: Callable[[], Any], *, flush_seconds: float = 10.0) -> None:
        self.book = FleetBook()
        self._stub = mission_stub
        self._flush_seconds = flush_seconds
        self._due = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Reports sent (RPCs) and vehicles in them, for tests and logs (the metrics count them too).
        self.reports = 0
        self.vehicles_reported = 0

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
        """Report every ``flush_seconds``, or at once when a connectivity change is due, until :meth:`stop`."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._flush_seconds)
            self._due.clear()
            await self.flush()
        await self.flush()  # what the last round did not carry (best effort at shutdown)

    async def stop(self) -> None:
        self._stopping.set()
        self._due.set()

    async def flush(self) -> int:
        """Report everything due now, in batches; returns how many vehicles were reported."""
        sent = 0
        while batch := self.book.take(MAX_REPORT_VEHICLES):
            request = mission_service_pb2.ReportFleetStateRequest(vehicles=[observation(r) for r in batch])
            try:
                await self._stub().ReportFleetState(request, timeout=_RPC_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                self.book.give_back(batch)
                raise
            except Exception as exc:  # the mission service is away: keep it for the next round
                self.book.give_back(batch)
                FLEET_REPORTS.labels("failed").inc()
                _log.warning("fleet state report of %d vehicles failed (%s); retried at the next round",
                             len(batch), exc)
                return sent
            FLEET_REPORTS.labels("sent").inc()
            self.reports += 1
            self.vehicles_reported += len(batch)
            sent += len(batch)
        return sent
