"""The fleet reporter (services/telemetry/usecases/fleet.py) under continuous traffic, against a recording stand-in
for the mission service's ReportFleetState (the loop's pacing is what is tested, not the RPC): a round per flush
interval carrying what was due when it began, connectivity changes at once but alone, and a backoff after a
failure instead of a retry per frame."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

from haulmesh.mission.v1 import mission_service_pb2, vehicle_pb2
from services.telemetry.domain.geometry import LatLon
from services.telemetry.usecases.fleet import FleetReporter
from tests.conftest import wait_for


class Recorder:
    """Stands in for the MissionService stub: records each ReportFleetState, taking ``latency_seconds`` like a
    real round trip (frames keep arriving meanwhile); fails while ``down``."""

    def __init__(self, latency_seconds: float = 0.02) -> None:
        self.latency_seconds = latency_seconds
        self.requests: list[mission_service_pb2.ReportFleetStateRequest] = []
        self.failed = 0
        self.down = False

    async def ReportFleetState(self, request, timeout: float):  # noqa: ASYNC109 - the stub's signature
        await asyncio.sleep(self.latency_seconds)
        if self.down:
            self.failed += 1
            raise ConnectionError("mission service unavailable")
        self.requests.append(request)
        return mission_service_pb2.ReportFleetStateResponse(vehicles_changed=len(request.vehicles))

    @property
    def writes(self) -> int:
        return sum(len(r.vehicles) for r in self.requests)


async def _traffic(reporter: FleetReporter, vehicles: int, seconds: float, hz: float = 10.0) -> None:
    """``vehicles`` trucks sending ``hz`` frames a second, each on its own phase, for ``seconds``."""
    rng = random.Random(7)

    async def truck(i: int) -> None:
        await asyncio.sleep(rng.random() / hz)  # desynchronised: frames arrive all the time, not in bursts
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            now = datetime.now(UTC)
            reporter.heard(f"T{i:03d}", now, location=LatLon(30 + n / 1e4, -97 + i / 100), location_time=now)
            n += 1
            await asyncio.sleep(1 / hz)

    await asyncio.gather(*(truck(i) for i in range(vehicles)))


async def test_continuous_traffic_is_one_write_per_vehicle_per_flush_not_per_frame() -> None:
    recorder, vehicles, flush = Recorder(), 100, 0.5
    reporter = FleetReporter(lambda: recorder, flush_seconds=flush)
    loop = asyncio.ensure_future(reporter.run())
    began = time.monotonic()
    try:
        await _traffic(reporter, vehicles, seconds=3.0)
        elapsed = time.monotonic() - began
    finally:
        await reporter.stop()
        await loop
    # Every vehicle coming online is reported at once (one batch's worth of writes), then at most one write
    # per vehicle per flush interval (+1: the round at shutdown). Draining "until nothing is dirty" wrote
    # the roster per frame: ~3,000 writes here.
    bound = vehicles * (elapsed / flush + 1) + vehicles
    assert recorder.writes <= bound, (recorder.writes, bound, elapsed)
    assert recorder.writes < 3000 / 3
    # RPCs: a periodic round per interval, plus the early rounds that carry connectivity changes only (at
    # most one per vehicle coming online).
    assert len(recorder.requests) <= elapsed / flush + 2 + vehicles, len(recorder.requests)
    print(f"{recorder.writes} writes in {len(recorder.requests)} RPCs over {elapsed:.1f} s (bound {bound:.0f})")
    reported = {v.vehicle for r in recorder.requests for v in r.vehicles}
    assert len(reported) == vehicles
    onlines = [v for r in recorder.requests for v in r.vehicles
               if v.connectivity == vehicle_pb2.Vehicle.CONNECTIVITY_ONLINE]
    assert onlines


async def test_a_failed_report_backs_off_instead_of_retrying_per_frame_and_loses_nothing() -> None:
    recorder = Recorder()
    recorder.down = True
    reporter = FleetReporter(lambda: recorder, flush_seconds=0.2, retry_base_seconds=0.4, retry_cap_seconds=0.8)
    loop = asyncio.ensure_future(reporter.run())
    began = time.monotonic()
    try:
        await _traffic(reporter, 20, seconds=2.0)
        elapsed = time.monotonic() - began
        # Delays 0.4, 0.8, 0.8, ... each jittered down to half at most: a handful of attempts, not one per frame
        # (the old reporter made hundreds: every frame after a failure looked like news).
        assert 1 <= recorder.failed <= 1 + elapsed / 0.2, (recorder.failed, elapsed)
        recorder.down = False
        now = datetime.now(UTC)
        reporter.heard("T000", now, location=LatLon(31, -96), location_time=now)
        await wait_for(lambda: {v.vehicle for r in recorder.requests for v in r.vehicles} >= {
            f"vehicles/T{i:03d}" for i in range(20)}, timeout_seconds=10)
    finally:
        await reporter.stop()
        await loop


async def test_a_rejected_entry_is_logged_not_retried(caplog) -> None:
    class Rejecting(Recorder):
        async def ReportFleetState(self, request, timeout: float):  # noqa: ASYNC109
            await super().ReportFleetState(request, timeout)
            response = mission_service_pb2.ReportFleetStateResponse()
            response.rejected_vehicles.add(index=0, vehicle=request.vehicles[0].vehicle, field_violations=[
                mission_service_pb2.RejectedField(field="vehicles[0].mission", description="bad")])
            return response

    recorder = Rejecting()
    reporter = FleetReporter(lambda: recorder)
    reporter.heard("T1", datetime.now(UTC))
    assert await reporter.flush() == 1
    assert "rejected by the mission service" in caplog.text and "vehicles[0].mission: bad" in caplog.text
    assert await reporter.flush() == 0  # not given back: sending it again would not make it valid
