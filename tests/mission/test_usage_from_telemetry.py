"""Usage from the evidence, through the real mesh: a truck (the edge client's recorder, spool and POD builder, with
a real certificate) dwells at the pickup, drives the planned route with a 100-minute hole in its log, arrives, and
signs its proof of delivery from its own log. The mission service verifies the proof's digest against the frames
telemetry stored, measures the miles from them (the hole bridged along the route), takes the pickup dwell from
telemetry's geofence entry and exit, and billing invoices the measured miles with their provenance.

A mission's frames are those recorded after its dispatch (device time); the test's mesh tolerates device clocks
two days ahead (HAULMESH_TELEMETRY_CLOCK_SKEW_SECONDS), so the truck's hours of dwell and driving, stamped from
now on, happen in a second of test time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edge_client.pod import build_proof, submit_proof
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, invoice_pb2, quote_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2, health_check_pb2, lane_pb2
from services.runtime import Mesh, carrier_metadata, great_circle_miles, metering, new_id, pki
from tests.conftest import Pki, rich_error, running_mesh, wait_for
from tests.telemetry.helpers import ATLANTA, HOUSTON, Session
from tests.trucks import Truck

KIND = frame_pb2.FramePayload
State = mission_pb2.Mission
ROOT = Path(__file__).resolve().parents[2]
DWELL = timedelta(hours=3)  # at the pickup; the default rate card gives 120 min free, then USD 75/h in 15 min steps
GAP_FIXES = 12  # fixes of the drive never recorded: a dead zone in the truck's own log


class _Trip:
    """One truck on one mission of a fresh carrier: the test's channels, its spool and its stream."""

    def __init__(self, mesh: Mesh, pki: Pki, tmp_path: Path) -> None:
        self.mesh, self.pki = mesh, pki
        self.carrier = f"usage-{uuid.uuid4().hex[:8]}"
        self.tenant = carrier_metadata(self.carrier)
        self.truck = Truck.mint(pki.ca, f"US-{uuid.uuid4().hex[:8].upper()}")
        self.signer = KeyFileSigner(self.truck.issued.private_key_pem, self.truck.issued.certificate_pem)
        self.spool = Spool(tmp_path / f"{self.truck.vehicle_id}.db")
        self.recorder = Recorder(self.spool, self.signer, self.truck.vehicle_id)
        self._channels: list[grpc.aio.Channel] = []
        self.missions = mission_service_pb2_grpc.MissionServiceStub(self._channel("mission", "operator", "ops"))
        self.billing = billing_service_pb2_grpc.BillingServiceStub(self._channel("billing", "operator", "ops"))
        self.session: Session | None = None
        self._alive: asyncio.Future[None] | None = None
        self.mission_name = ""

    def _channel(self, service: str, kind: str, name: str) -> grpc.aio.Channel:
        channel = grpc.aio.secure_channel(self.mesh.address(service), self.pki.credentials(kind, name))
        self._channels.append(channel)
        return channel

    async def dispatch(self) -> State:
        """A quote for Houston → Atlanta as the tender service makes it, the truck registered, the mission created."""
        tender = f"tenders/{new_id()}"
        quoting = billing_service_pb2_grpc.BillingServiceStub(self._channel("billing", "service", "tender"))
        quote = await quoting.CreateQuote(
            billing_service_pb2.CreateQuoteRequest(quote=quote_pb2.Quote(
                tender=tender, lane=lane_pb2.Lane(origin_region="US-TX-HOU", destination_region="US-GA-ATL"),
                route_miles=789.0, equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT)), metadata=self.tenant, timeout=10)
        await self.missions.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
            vehicle_id=self.truck.vehicle_id, vehicle=vehicle_pb2.Vehicle(
                home_region="US-TX-HOU", capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))), timeout=10)
        tender_missions = mission_service_pb2_grpc.MissionServiceStub(self._channel("mission", "service", "tender"))
        mission = await tender_missions.CreateMission(mission_service_pb2.CreateMissionRequest(
            request_id=new_id(), mission=mission_pb2.Mission(
                tender=tender, quote=quote.name, vehicle=f"vehicles/{self.truck.vehicle_id}",
                load=mission_pb2.LoadDetails(tms_load_id=f"LOAD-{self.truck.vehicle_id}",
                                             equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT, weight_lb=30_000),
                stops=[mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=HOUSTON),
                       mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=ATLANTA)])),
            metadata=self.tenant, timeout=10)
        self.mission_name = mission.name
        assert len(mission.planned_route) >= 2
        return mission

    async def connect(self) -> None:
        """The truck's stream: the assignment accepted (and remembered, as the edge client does), heartbeats."""
        channel = grpc.aio.secure_channel(self.mesh.address("telemetry"), self.truck.credentials())
        self._channels.append(channel)
        self.session = Session(channel)
        self.session.send(self.truck.hello())
        self._alive = asyncio.ensure_future(self._keep_alive())
        [assign] = await wait_for(lambda: self.session.of("command"), timeout_seconds=15)
        self.spool.remember_assignment(assign.assign_mission)
        ack = stream_pb2.CommandAck(command_id=assign.command_id, outcome=stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        ack.device_time.GetCurrentTime()
        self.session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
        pre_trip = await wait_for(lambda: self.in_state(State.STATE_PRE_TRIP), timeout_seconds=15)
        if pre_trip.check_in_requirement.required:  # the lane's first missions: an operator clears departure
            await self.missions.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
                name=self.mission_name, check_in=mission_pb2.CheckIn(
                    point=mission_pb2.CheckIn.POINT_DEPARTURE, outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)),
                metadata=self.tenant, timeout=10)

    async def _keep_alive(self) -> None:
        while True:
            beat = stream_pb2.Heartbeat()
            beat.device_time.GetCurrentTime()
            self.session.send(stream_pb2.StreamTelemetryRequest(heartbeat=beat))
            await asyncio.sleep(0.3)

    def record(self, at: tuple[float, float], when: datetime, *, state: str = "enroute", kind: int = KIND.KIND_POSITION,
               **fields: object) -> int:
        payload = KIND(kind=kind, mission_id=self.mission_name.removeprefix("missions/"), vehicle_state=state,
                       position=frame_pb2.Position(lat=at[0], lon=at[1], speed_kph=0 if state != "enroute" else 100),
                       **fields)  # type: ignore[arg-type]
        payload.device_time.FromDatetime(when)
        return self.recorder.record(payload)

    async def send_spooled(self) -> None:
        """Streams what the spool holds and lets go of what the server acked."""
        assert self.session is not None
        pending = self.spool.unacked_after(0, 100_000)
        for chunk in (pending[i:i + 200] for i in range(0, len(pending), 200)):
            self.session.send(stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(
                frames=[frame_pb2.SignedFrame.FromString(f.frame) for f in chunk])))
        last = pending[-1].sequence
        await wait_for(lambda: self.session.acked_through >= last or None, timeout_seconds=30)
        self.spool.mark_acked(self.session.acked_through)

    async def in_state(self, *states: int) -> State | None:
        mission = await self.missions.GetMission(mission_service_pb2.GetMissionRequest(name=self.mission_name),
                                                 metadata=self.tenant, timeout=10)
        return mission if mission.state in states else None

    async def submit(self, proof: mission_pb2.ProofOfDelivery) -> State:
        async with grpc.aio.secure_channel(self.mesh.address("mission"), self.truck.credentials()) as channel:
            return await submit_proof(channel, self.mission_name.removeprefix("missions/"), proof, timeout_seconds=30)

    async def stored_payloads(self, first: int, last: int) -> list[bytes]:
        """The payloads telemetry stored for the mission in [first, last], read as an operator."""
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(self._channel("telemetry", "operator", "ops"))
        payloads, token = [], ""
        while True:
            page = await stub.ListTelemetryFrames(telemetry_service_pb2.ListTelemetryFramesRequest(
                parent=self.mission_name, page_size=1000, page_token=token, min_sequence=first, max_sequence=last),
                metadata=self.tenant, timeout=10)
            payloads += [f.signed_frame.payload for f in page.telemetry_frames]
            if not (token := page.next_page_token):
                return payloads

    async def pod_cli(self, *args: str) -> dict:
        """``python -m edge_client pod --submit`` as the truck (its certificate files, its spool): the JSON line."""
        certs = self.spool.path.parent / f"certs-{self.truck.vehicle_id}"
        pki.write_pem_files(certs, f"vehicle-{self.truck.vehicle_id}", self.truck.issued, self.truck.ca_pem)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_client", "--cert-dir", str(certs), "pod", "--vehicle", self.truck.vehicle_id,
            "--spool", str(self.spool.path), "--mission", self.mission_name, "--submit",
            "--mission-target", self.mesh.address("mission"), "--ack-timeout-seconds", "30", *args,
            cwd=self.spool.path.parent, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 90)
        assert process.returncode == 0, err.decode()
        return json.loads(out)

    async def close(self) -> None:
        if self._alive is not None:
            self._alive.cancel()
        if self.session is not None:
            await self.session.aclose()
        for channel in self._channels:
            await channel.close()
        self.spool.close()


@pytest.fixture(scope="module")
async def usage_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A mesh of its own whose telemetry accepts device times up to two days ahead of its clock."""
    # The billing sweeper re-checks a DISPUTED proof within a second or two (the test waits for late frames).
    env = {"HAULMESH_TELEMETRY_CLOCK_SKEW_SECONDS": "172800", "HAULMESH_BILLING_GRACE_SECONDS": "0.5",
           "HAULMESH_BILLING_SWEEP_SECONDS": "0.25", "HAULMESH_BILLING_MAX_BACKOFF_SECONDS": "1"}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("usage"), env=env) as mesh:
        yield mesh


@pytest.fixture
async def trip(usage_mesh: Mesh, mesh_pki: Pki, tmp_path: Path) -> AsyncIterator[_Trip]:
    trip = _Trip(usage_mesh, mesh_pki, tmp_path)
    try:
        yield trip
    finally:
        await trip.close()


def _drive_fixes(route: list[tuple[float, float]], per_segment: int = 6) -> list[tuple[float, float]]:
    """Points along the planned route, ``per_segment`` per leg, its first point excluded, its last included."""
    points = []
    for (a_lat, a_lon), (b_lat, b_lon) in itertools.pairwise(route):
        points += [(a_lat + (b_lat - a_lat) * i / per_segment, a_lon + (b_lon - a_lon) * i / per_segment)
                   for i in range(1, per_segment + 1)]
    return points


async def _dwell_and_start(trip: _Trip, route: list[tuple[float, float]], t0: datetime) -> datetime:
    """Parked at the pickup for DWELL (a fix every 100 s), then the passing pre-trip HEALTH frame: ENROUTE."""
    steps = int(DWELL.total_seconds() // 100)
    for i in range(steps):
        trip.record(route[0], t0 + timedelta(seconds=100 * i), state="loading")
    ready = t0 + timedelta(seconds=100 * (steps - 1) + 30)
    checks = [health_check_pb2.HealthCheckResult(check=c, outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS,
                                                 blocking=True) for c in ("lidar", "camera", "radar")]
    trip.record(route[0], ready, state="pre_trip", kind=KIND.KIND_HEALTH, health_checks=checks)
    await trip.send_spooled()
    await wait_for(lambda: trip.in_state(State.STATE_ENROUTE), timeout_seconds=15)
    return ready


async def test_usage_detention_and_pod_come_from_the_trucks_signed_frames(trip: _Trip) -> None:
    mission = await trip.dispatch()
    route = [(p.lat, p.lon) for p in mission.planned_route]
    await trip.connect()
    t0 = datetime.now(UTC) + timedelta(seconds=5)
    ready = await _dwell_and_start(trip, route, t0)

    # The drive: a fix a minute along the planned route, GAP_FIXES of them never recorded (a dead zone).
    fixes = _drive_fixes(route)
    hole = range(len(fixes) // 3, len(fixes) // 3 + GAP_FIXES)
    when = ready
    for i, point in enumerate(fixes):
        when += timedelta(minutes=10 if i == hole.stop else 1)
        if i not in hole:
            trip.record(point, when)
    await trip.send_spooled()
    await wait_for(lambda: trip.in_state(State.STATE_ARRIVED), timeout_seconds=20)

    # The truck's own CLI signs its proof from its log, waits for the acks, submits; the server verifies it.
    log = trip.spool.mission_log(trip.mission_name.removeprefix("missions/"))
    summary = await trip.pod_cli("--received-by", "Dock 7", "--seal-number", "SEAL-1")
    assert (summary["submitted"], summary["telemetry_verification"], summary["frames_missing"]) == (True, "VERIFIED", 0)
    assert (summary["first_sequence"], summary["last_sequence"]) == (log[0][0], log[-1][0])
    assert summary["tms_load_id"] == f"LOAD-{trip.truck.vehicle_id}"  # from the assignment the truck accepted
    assert trip.spool.mission_log(trip.mission_name.removeprefix("missions/")) == []  # proven: forgotten
    delivered = await wait_for(lambda: trip.in_state(State.STATE_DELIVERED, State.STATE_COMPLETED))
    verification = delivered.proof_of_delivery.telemetry_verification
    assert verification.result == mission_pb2.TelemetryVerification.RESULT_VERIFIED
    assert (verification.frames_missing, verification.reason) == (0, "TELEMETRY_LOG_MATCHES")
    assert verification.recomputed_sha256 == summary["telemetry_log_sha256"]

    # The pickup's dwell came from telemetry's geofence entry and exit, recorded on the stop.
    completed = await wait_for(lambda: trip.in_state(State.STATE_COMPLETED), timeout_seconds=30)
    pickup = completed.stops[0]
    enter, exit_ = pickup.geofence_enter_time.ToDatetime(UTC), pickup.geofence_exit_time.ToDatetime(UTC)
    assert abs(enter - t0) < timedelta(milliseconds=1)  # the device time of the first frame inside
    assert exit_ > ready

    invoices = await trip.billing.ListInvoices(billing_service_pb2.ListInvoicesRequest(
        filter=f'mission = "{trip.mission_name}"'), metadata=trip.tenant, timeout=10)
    [invoice] = invoices.invoices
    usage = invoice.usage
    # Miles: the fixes lie on the planned route and the hole is bridged along it, so the measured miles are the
    # route polyline's length; one gap listed, its bridge the road between the fixes around the hole.
    polyline = sum(great_circle_miles(*a, *b) for a, b in itertools.pairwise(route))
    assert abs(usage.miles - polyline) <= 0.2
    p = usage.provenance
    assert (p.mission, p.vehicle, p.source) == (trip.mission_name, f"vehicles/{trip.truck.vehicle_id}",
                                                invoice_pb2.UsageProvenance.SOURCE_POSITIONS)
    [gap] = p.gaps
    assert gap.before_sequence == gap.after_sequence + 1  # a hole in the drive, not in the sequence
    around = (fixes[hole.start - 1], fixes[hole.stop])
    assert abs(gap.bridged_miles - sum(great_circle_miles(*a, *b) for a, b in itertools.pairwise(
        [around[0], *fixes[hole.start:hole.stop], around[1]]))) <= 0.2
    assert gap.seconds == (GAP_FIXES + 10) * 60  # GAP_FIXES one-minute steps unrecorded, then ten minutes
    assert p.frame_count == len(log)
    assert p.telemetry_log_sha256 == verification.recomputed_sha256
    assert p.frames_missing == 0 and p.freshness_p50_seconds < 0  # stamped ahead of the server's clock
    assert usage.hours == pytest.approx((when - t0).total_seconds() / 3600, abs=0.002)
    # Anyone holding the frames, the planned route and the provenance recomputes the figures.
    payloads = await trip.stored_payloads(p.first_sequence, p.last_sequence)
    assert metering.telemetry_log_sha256(payloads) == p.telemetry_log_sha256
    again = metering.measure(metering.fixes_from_payloads(payloads), gap_seconds=p.gap_threshold_seconds,
                             planned_route=route, circuity_factor=p.circuity_factor)
    assert (again.miles, again.hours, again.frames) == (usage.miles, usage.hours, p.frame_count)

    # Detention: the pickup dwell beyond 120 free minutes, from the geofence; the delivery stop up to hand-over.
    dwells = {d.stop_index: d for d in usage.stop_dwells}
    assert dwells[0].basis == invoice_pb2.StopDwell.BASIS_GEOFENCE
    assert dwells[0].dwell_minutes == int((exit_ - enter).total_seconds() // 60) == 179
    assert dwells[1].basis == invoice_pb2.StopDwell.BASIS_GEOFENCE_ENTRY_TO_DELIVERY
    lines = {line.code: line for line in invoice.lines}
    assert lines["LINEHAUL"].quantity == usage.miles
    assert lines["LINEHAUL"].description.startswith(
        f"Line-haul {usage.miles} mi measured (frames #{p.first_sequence}..#{p.last_sequence}, 1 gap bridged ")
    # 179 min dwell, 120 free: 59 min billed as 60 (15-min steps) at USD 75/h.
    assert lines["DETENTION-STOP-1"].amount.amount_minor == 7_500
    assert "179 min dwell (geofence entry to exit)" in lines["DETENTION-STOP-1"].description
    estimate = {d.code: d for d in invoice.estimate_differences}["LINEHAUL"]
    assert (estimate.estimated_quantity, estimate.measured_quantity) == (789.0, usage.miles)


async def test_a_proof_whose_digest_disagrees_is_refused_and_missing_frames_dispute_it(trip: _Trip) -> None:
    mission = await trip.dispatch()
    route = [(p.lat, p.lon) for p in mission.planned_route]
    await trip.connect()
    t0 = datetime.now(UTC) + timedelta(seconds=5)
    when = await _dwell_and_start(trip, route, t0)
    for point in _drive_fixes(route, per_segment=1):
        when += timedelta(minutes=1)
        trip.record(point, when)
    await trip.send_spooled()
    await wait_for(lambda: trip.in_state(State.STATE_ARRIVED), timeout_seconds=20)
    mission_id = trip.mission_name.removeprefix("missions/")

    # Signed by the truck, but over another log: refused, naming the range; the mission stays ARRIVED.
    good = build_proof(trip.spool, trip.signer, vehicle_id=trip.truck.vehicle_id, mission_id=mission_id)
    manifest = mission_pb2.DeliveryManifest.FromString(good.manifest)
    manifest.telemetry_log_sha256 = "0" * 64
    forged = mission_pb2.ProofOfDelivery()
    forged.CopyFrom(good)
    forged.manifest = manifest.SerializeToString()
    forged.manifest_signature = trip.truck.issued.private_key.sign(forged.manifest, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await trip.submit(forged)
    error = rich_error(caught.value)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "POD_TELEMETRY_HASH_MISMATCH")
    first, last = manifest.telemetry_first_sequence, manifest.telemetry_last_sequence
    assert (error.metadata["first_sequence"], error.metadata["last_sequence"]) == (str(first), str(last))
    assert f"#{first}..#{last}" in caught.value.details()
    assert await trip.in_state(State.STATE_ARRIVED)

    # A frame of the log the server never received: accepted, but DISPUTED with the count, never VERIFIED.
    trip.record(route[-1], when + timedelta(minutes=1), state="arrived")
    disputed = build_proof(trip.spool, trip.signer, vehicle_id=trip.truck.vehicle_id, mission_id=mission_id)
    delivered = await trip.submit(disputed)
    verification = delivered.proof_of_delivery.telemetry_verification
    assert (verification.result, verification.reason, verification.frames_missing) == (
        mission_pb2.TelemetryVerification.RESULT_DISPUTED, "FRAMES_MISSING", 1)
    assert delivered.state == State.STATE_DELIVERED

    async def rechecked() -> State | None:
        current = await trip.in_state(State.STATE_DELIVERED, State.STATE_COMPLETED)
        again = current.proof_of_delivery.telemetry_verification.verify_time
        return current if again.ToNanoseconds() > verification.verify_time.ToNanoseconds() else None

    # Billing re-verified the log and, the frame still missing, billed nothing.
    waiting = await wait_for(rechecked, timeout_seconds=20)
    assert waiting.state == State.STATE_DELIVERED
    invoices = await trip.billing.ListInvoices(billing_service_pb2.ListInvoicesRequest(
        filter=f'mission = "{trip.mission_name}"'), metadata=trip.tenant, timeout=10)
    assert list(invoices.invoices) == []

    # The late frame arrives (the spool replays): the sweeper's next check verifies the log, then bills.
    await trip.send_spooled()
    completed = await wait_for(lambda: trip.in_state(State.STATE_COMPLETED), timeout_seconds=30)
    verification = completed.proof_of_delivery.telemetry_verification
    assert (verification.result, verification.frames_missing) == (mission_pb2.TelemetryVerification.RESULT_VERIFIED, 0)
    invoices = await trip.billing.ListInvoices(billing_service_pb2.ListInvoicesRequest(
        filter=f'mission = "{trip.mission_name}"'), metadata=trip.tenant, timeout=10)
    assert len(invoices.invoices) == 1
