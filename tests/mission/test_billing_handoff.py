"""Delivery → billing → COMPLETED: with billing down (the sweeper retries until billing takes the usage; nothing
is lost, and every retry sends the usage measured first); a DISPUTED proof is never billed (re-verified until its
late frames verify it, escalated to an operator past HAULMESH_POD_DISPUTE_SECONDS)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis.asyncio

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, quote_pb2, rate_card_pb2
from haulmesh.events.v1 import mission_events_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import money_pb2
from services.mission.config import MissionSettings
from services.mission.metrics import DISPUTES_ESCALATED
from services.mission.store import MissionStore
from services.mission.usecases import MissionUseCases
from services.mission.workers import MissionWorkers
from services.runtime import FailedPrecondition, Mesh, Periodic, Unavailable, free_port, metering, new_event, new_id

from ..conftest import Pki, wait_for
from .test_mission_mesh import (
    ACME,
    DALLAS,
    HOUSTON,
    Client,
    M,
    add_vehicle,
    arrive,
    drive_to_enroute,
    mission_spec,
    signed_proof,
    truck_client,
)

USD = "USD"


async def _quote(mesh: Mesh, mesh_pki: Pki, mission: M) -> quote_pb2.Quote:
    """A quote for the mission's move, made as the tender service would (a rate card first if none)."""
    async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("service", "tender")) as ch, \
            grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("operator", "ops")) as op:
        request = billing_service_pb2.CreateQuoteRequest(quote=quote_pb2.Quote(
            tender=mission.tender, lane={"origin_region": "US-TX-HOU", "destination_region": "US-TX-DAL"},
            route_miles=280.0, equipment=mission.load.equipment))
        try:
            return await billing_service_pb2_grpc.BillingServiceStub(ch).CreateQuote(request, metadata=ACME, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        effective = datetime.now(UTC) - timedelta(minutes=1)
        card = rate_card_pb2.RateCard(currency_code=USD, display_name="mission tests",
                                      default_rate_per_mile=money_pb2.Money(currency_code=USD, amount_minor=250))
        card.effective_time.FromDatetime(effective)
        await billing_service_pb2_grpc.BillingServiceStub(op).CreateRateCard(
            billing_service_pb2.CreateRateCardRequest(rate_card=card), metadata=ACME, timeout=10)
        return await billing_service_pb2_grpc.BillingServiceStub(ch).CreateQuote(request, metadata=ACME, timeout=10)


async def test_a_delivery_whose_proof_is_disputed_is_not_billed(mesh: Mesh, mesh_pki: Pki) -> None:
    """Driven by an operator, no truck telemetry: the proof's frames #1..#10 were never stored, so it is DISPUTED
    and the billing hand-off re-verifies it and waits (late frames may come), never bills it."""
    ops = Client(mesh, mesh_pki.credentials("operator", "ops"))
    tender = Client(mesh, mesh_pki.credentials("service", "tender"))
    try:
        vehicle = await add_vehicle(ops)
        spec = mission_spec(vehicle.name, origin=HOUSTON, destination=DALLAS)
        spec.quote = (await _quote(mesh, mesh_pki, spec)).name
        mission = await tender.CreateMission(mission_service_pb2.CreateMissionRequest(mission=spec), metadata=ACME,
                                             timeout=10)
        mission = await arrive(ops, await drive_to_enroute(ops, mission))
        truck, issued = truck_client(mesh, mesh_pki, vehicle.name.removeprefix("vehicles/"))
        try:
            delivered = await truck.SubmitProofOfDelivery(mission_service_pb2.SubmitProofOfDeliveryRequest(
                name=mission.name, proof_of_delivery=signed_proof(issued, mission)), timeout=10)
        finally:
            await truck.channel.close()
        submitted = delivered.proof_of_delivery.telemetry_verification
        assert submitted.result == mission_pb2.TelemetryVerification.RESULT_DISPUTED

        async def rechecked() -> M | None:
            current = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=ACME,
                                           timeout=10)
            again = current.proof_of_delivery.telemetry_verification.verify_time
            return current if again.ToNanoseconds() > submitted.verify_time.ToNanoseconds() else None

        # The event consumer's billing attempt re-verified the log (a new verify_time) and did not bill.
        final = await wait_for(rechecked, timeout_seconds=15)
        assert final.state == M.STATE_DELIVERED
        assert final.proof_of_delivery.telemetry_verification.result == (
            mission_pb2.TelemetryVerification.RESULT_DISPUTED)
        async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("operator", "ops")) as ch:
            invoices = await billing_service_pb2_grpc.BillingServiceStub(ch).ListInvoices(
                billing_service_pb2.ListInvoicesRequest(filter=f'mission = "{mission.name}"'), metadata=ACME,
                timeout=10)
        assert list(invoices.invoices) == []
    finally:
        await ops.channel.close()
        await tender.channel.close()


class FlakyBilling:
    """A billing stub that is down for its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[billing_service_pb2.RecordUsageRequest] = []

    async def RecordUsage(self, request, metadata=()):
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            raise ConnectionError("billing unavailable")
        return billing_service_pb2.RecordUsageResponse()


async def test_billing_outage_is_retried_until_it_succeeds(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    settings = MissionSettings(billing_grace_seconds=0, billing_sweep_seconds=0.02, billing_max_backoff_seconds=0.1)
    billing = FlakyBilling(failures=3)
    workers = MissionWorkers(MissionUseCases(store, settings, lambda: billing), store, settings)
    carrier_id = f"c-{new_id()}"
    mission = mission_spec("vehicles/MT-NONE")
    mission.name = f"missions/{new_id()}"
    mission.state = M.STATE_ARRIVED
    mission.start_time.GetCurrentTime()
    mission.create_time.GetCurrentTime()
    event = new_event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=mission),
                      subject=mission.name, carrier_id=carrier_id, source="test")
    assert await store.create_mission(carrier_id, mission, new_id(), event) is None

    def deliver(m: M):
        m.state = M.STATE_DELIVERED
        m.stops[-1].arrive_time.GetCurrentTime()
        m.stops[-1].depart_time.GetCurrentTime()
        return lambda final: []

    await store.update_mission(carrier_id, mission.name.removeprefix("missions/"), deliver)
    sweeper = Periodic("mission-billing-sweep", workers.sweep_billing, interval_seconds=settings.billing_sweep_seconds)
    sweeping = asyncio.create_task(sweeper.run())
    try:
        async def done() -> bool:
            current = await store.get_mission(carrier_id, mission.name.removeprefix("missions/"))
            return current.state == M.STATE_COMPLETED

        await wait_for(done, timeout_seconds=15)
    finally:
        await sweeper.stop()
        await sweeping
    assert len(billing.requests) == 4  # three failures, then success; never more once completed
    assert len({r.SerializeToString(deterministic=True) for r in billing.requests}) == 1  # same usage each time
    assert await store.due_for_billing() == [] or all(c != carrier_id for c, _ in await store.due_for_billing())
    await client.aclose()


async def test_unreadable_telemetry_bills_nothing_and_says_so(store_url: str, mesh_pki: Pki) -> None:
    """The telemetry service is unreachable (nothing listens on its port): the bill waits for the evidence,
    UNAVAILABLE TELEMETRY_UNAVAILABLE, billing is never called with usage that was not measured."""
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    billing = FlakyBilling(failures=0)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{free_port()}", mesh_pki.credentials("service", "mission"))
    missions = MissionUseCases(store, MissionSettings(), lambda: billing,
                               lambda: telemetry_service_pb2_grpc.TelemetryServiceStub(channel))
    carrier_id = f"c-{new_id()}"
    mission = mission_spec("vehicles/MT-NONE")
    mission.name = f"missions/{new_id()}"
    mission.state = M.STATE_DELIVERED
    mission.create_time.GetCurrentTime()
    event = new_event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=mission),
                      subject=mission.name, carrier_id=carrier_id, source="test")
    assert await store.create_mission(carrier_id, mission, new_id(), event) is None
    try:
        with pytest.raises(Unavailable) as caught:
            await missions.bill(carrier_id, mission.name.removeprefix("missions/"))
        assert caught.value.reason == "TELEMETRY_UNAVAILABLE" and billing.requests == []
    finally:
        await channel.close()
        await client.aclose()


# --- a DISPUTED proof is never billed; the usage measured once is what every retry sends --------------------

class StoredFrames:
    """Telemetry's ListTelemetryFrames over payloads the test controls: appending one is a late frame arriving."""

    def __init__(self, mission_id: str) -> None:
        self.mission_id = mission_id
        self.payloads: list[bytes] = []
        self.reads = 0

    def add(self, *payloads: bytes) -> None:
        self.payloads.extend(payloads)

    async def ListTelemetryFrames(self, request, metadata=()):
        self.reads += 1
        frames = []
        for raw in self.payloads:
            payload = frame_pb2.FramePayload.FromString(raw)
            if request.min_sequence <= payload.sequence <= (request.max_sequence or payload.sequence):
                frame = frame_pb2.TelemetryFrame(signed_frame=frame_pb2.SignedFrame(sequence=payload.sequence,
                                                                                    payload=raw), payload=payload)
                frame.receive_time.GetCurrentTime()
                frames.append(frame)
        return telemetry_service_pb2.ListTelemetryFramesResponse(telemetry_frames=frames)


def _payload(mission_id: str, sequence: int, lat: float) -> bytes:
    payload = frame_pb2.FramePayload(vehicle_id="MT-NONE", sequence=sequence, mission_id=mission_id,
                                     kind=frame_pb2.FramePayload.KIND_POSITION, vehicle_state="enroute",
                                     position=frame_pb2.Position(lat=lat, lon=-95.4))
    payload.device_time.FromSeconds(1_800_000_000 + 60 * sequence)
    return payload.SerializeToString(deterministic=True)


async def _delivered_with_proof(store: MissionStore, carrier_id: str, frames: StoredFrames, last: int,
                                result: int) -> M:
    """A DELIVERED mission whose recorded proof signed frames #1..#last (digest over all of them) with ``result``."""
    mission = mission_spec("vehicles/MT-NONE")
    mission.name = f"missions/{frames.mission_id}"
    mission.state = M.STATE_DELIVERED
    mission.create_time.GetCurrentTime()
    whole_log = [_payload(frames.mission_id, s, 29.7 + s / 100) for s in range(1, last + 1)]
    details = mission.proof_of_delivery.manifest_details
    details.telemetry_log_sha256 = metering.telemetry_log_sha256(whole_log)
    details.telemetry_first_sequence, details.telemetry_last_sequence = 1, last
    mission.proof_of_delivery.submit_time.GetCurrentTime()
    mission.proof_of_delivery.telemetry_verification.result = result
    event = new_event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=mission),
                      subject=mission.name, carrier_id=carrier_id, source="test")
    assert await store.create_mission(carrier_id, mission, new_id(), event) is None
    return mission


Verification = mission_pb2.TelemetryVerification


async def test_a_disputed_proof_is_billed_only_once_its_late_frames_verify(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    billing = FlakyBilling(failures=0)
    frames = StoredFrames(new_id())
    missions = MissionUseCases(store, MissionSettings(pod_dispute_seconds=3600), lambda: billing, lambda: frames)
    carrier_id = f"c-{new_id()}"
    whole_log = [_payload(frames.mission_id, s, 29.7 + s / 100) for s in range(1, 7)]
    frames.add(*whole_log[:4])  # #5 and #6 still in the truck's spool
    await _delivered_with_proof(store, carrier_id, frames, 6, Verification.RESULT_DISPUTED)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await missions.bill(carrier_id, frames.mission_id)
        assert caught.value.reason == "POD_DISPUTED" and billing.requests == []
        mission = await store.get_mission(carrier_id, frames.mission_id)
        verification = mission.proof_of_delivery.telemetry_verification
        assert (mission.state, verification.result, verification.frames_missing) == (
            M.STATE_DELIVERED, Verification.RESULT_DISPUTED, 2)

        frames.add(*whole_log[4:])  # the spool replays: the range is complete and its digest matches
        billed = await missions.bill(carrier_id, frames.mission_id)
        assert billed.state == M.STATE_COMPLETED and len(billing.requests) == 1
        verification = billed.proof_of_delivery.telemetry_verification
        assert (verification.result, verification.reason) == (Verification.RESULT_VERIFIED, "TELEMETRY_LOG_MATCHES")
        assert billing.requests[0].usage.provenance.frame_count == 6
    finally:
        await client.aclose()


async def test_a_dispute_outliving_its_window_is_escalated_never_billed(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    billing = FlakyBilling(failures=0)
    frames = StoredFrames(new_id())
    missions = MissionUseCases(store, MissionSettings(pod_dispute_seconds=0), lambda: billing, lambda: frames)
    carrier_id = f"c-{new_id()}"
    frames.add(*[_payload(frames.mission_id, s, 29.7) for s in (1, 2)])
    await _delivered_with_proof(store, carrier_id, frames, 3, Verification.RESULT_DISPUTED)
    before = DISPUTES_ESCALATED._value.get()
    try:
        for _ in range(2):  # every retry refuses; the operator is told once
            with pytest.raises(FailedPrecondition) as caught:
                await missions.bill(carrier_id, frames.mission_id)
            assert caught.value.reason == "POD_DISPUTE_ESCALATED"
        assert billing.requests == []
        assert await store.disputed_missions(carrier_id) == [frames.mission_id]
        assert DISPUTES_ESCALATED._value.get() == before + 1
        assert (await store.get_mission(carrier_id, frames.mission_id)).state == M.STATE_DELIVERED
    finally:
        await client.aclose()


async def test_a_log_contradicted_by_late_frames_escalates_at_once(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    billing = FlakyBilling(failures=0)
    frames = StoredFrames(new_id())
    missions = MissionUseCases(store, MissionSettings(pod_dispute_seconds=3600), lambda: billing, lambda: frames)
    carrier_id = f"c-{new_id()}"
    frames.add(*[_payload(frames.mission_id, s, 29.7 + s / 100) for s in (1, 2)],
               _payload(frames.mission_id, 3, 10.0))  # #3 arrives, but not the one the truck signed
    await _delivered_with_proof(store, carrier_id, frames, 3, Verification.RESULT_DISPUTED)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await missions.bill(carrier_id, frames.mission_id)
        assert caught.value.reason == "POD_DISPUTE_ESCALATED" and billing.requests == []
        verification = (await store.get_mission(carrier_id, frames.mission_id)).proof_of_delivery.telemetry_verification
        assert (verification.result, verification.reason) == (Verification.RESULT_DISPUTED, "TELEMETRY_HASH_MISMATCH")
    finally:
        await client.aclose()


async def test_a_billing_retry_sends_the_usage_measured_first(store_url: str) -> None:
    """Billing times out after recording (or not): the retry must not re-measure frames that changed since."""
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    billing = FlakyBilling(failures=1)
    frames = StoredFrames(new_id())
    missions = MissionUseCases(store, MissionSettings(), lambda: billing, lambda: frames)
    carrier_id = f"c-{new_id()}"
    frames.add(*[_payload(frames.mission_id, s, 29.7 + s / 100) for s in range(1, 5)])
    await _delivered_with_proof(store, carrier_id, frames, 4, Verification.RESULT_VERIFIED)
    try:
        with pytest.raises(ConnectionError):
            await missions.bill(carrier_id, frames.mission_id)
        # Meanwhile the mission's frames read differently (a duplicate resolved, a page cap, an archive tier).
        frames.payloads = frames.payloads[:3]
        billed = await missions.bill(carrier_id, frames.mission_id)
        assert billed.state == M.STATE_COMPLETED
        first, retry = billing.requests
        assert retry.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
        assert retry.usage.provenance.frame_count == 4
        assert await store.billing_usage(carrier_id, frames.mission_id) is None  # gone with DELIVERED
    finally:
        await client.aclose()


async def test_a_log_leaving_out_the_missions_earlier_frames_is_disputed_and_escalated(store_url: str) -> None:
    """Telemetry holds frames #1..#2 of the mission, the proof signs #3..#4 only: its digest matches, but the log is
    not the mission's whole log (LOG_INCOMPLETE), never VERIFIED, and no late frame can settle it."""
    client = redis.asyncio.Redis.from_url(store_url)
    store = MissionStore(client, billing_grace_seconds=0)
    billing = FlakyBilling(failures=0)
    frames = StoredFrames(new_id())
    missions = MissionUseCases(store, MissionSettings(pod_dispute_seconds=3600), lambda: billing, lambda: frames)
    carrier_id = f"c-{new_id()}"
    frames.add(*[_payload(frames.mission_id, s, 29.7 + s / 100) for s in range(1, 5)])
    mission = await _delivered_with_proof(store, carrier_id, frames, 4, Verification.RESULT_DISPUTED)

    def sign_later_part_only(m: M):
        details = m.proof_of_delivery.manifest_details
        details.telemetry_first_sequence = 3
        details.telemetry_log_sha256 = metering.telemetry_log_sha256(frames.payloads[2:])
        return lambda final: []

    await store.update_mission(carrier_id, mission.name.removeprefix("missions/"), sign_later_part_only)
    try:
        with pytest.raises(FailedPrecondition) as caught:
            await missions.bill(carrier_id, frames.mission_id)
        assert caught.value.reason == "POD_DISPUTE_ESCALATED" and billing.requests == []
        verification = (await store.get_mission(carrier_id, frames.mission_id)).proof_of_delivery.telemetry_verification
        assert (verification.result, verification.reason, verification.frames_missing) == (
            Verification.RESULT_DISPUTED, "LOG_INCOMPLETE", 0)
    finally:
        await client.aclose()


def test_the_dispute_window_and_the_usage_frame_cap_are_read_and_bounded() -> None:
    """HAULMESH_USAGE_MAX_FRAMES may not exceed the evidence pack's frame cap: every invoice must be exportable."""
    from services.runtime import ConfigError
    from services.runtime.evidence import MAX_PACK_FRAMES

    settings = MissionSettings.from_env({"HAULMESH_POD_DISPUTE_SECONDS": "600"})
    assert (settings.pod_dispute_seconds, settings.usage_max_frames) == (600, MAX_PACK_FRAMES)
    with pytest.raises(ConfigError):
        MissionSettings.from_env({"HAULMESH_USAGE_MAX_FRAMES": str(MAX_PACK_FRAMES + 1)})
    with pytest.raises(ConfigError):
        MissionSettings.from_env({"HAULMESH_POD_DISPUTE_SECONDS": "-1"})
