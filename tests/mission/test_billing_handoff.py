"""Delivery → billing → COMPLETED: through the real billing service, and with billing down (the sweeper
retries until billing takes the usage; nothing is lost)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis.asyncio

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, quote_pb2, rate_card_pb2
from haulmesh.events.v1 import mission_events_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.telemetry.v1 import telemetry_service_pb2_grpc
from haulmesh.type.v1 import money_pb2
from services.mission.config import MissionSettings
from services.mission.store import MissionStore
from services.mission.usecases import MissionUseCases
from services.mission.workers import MissionWorkers
from services.runtime import Mesh, Periodic, Unavailable, free_port, new_event, new_id

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


async def test_delivery_is_billed_and_completes(mesh: Mesh, mesh_pki: Pki) -> None:
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
            await truck.SubmitProofOfDelivery(mission_service_pb2.SubmitProofOfDeliveryRequest(
                name=mission.name, proof_of_delivery=signed_proof(issued, mission)), timeout=10)
        finally:
            await truck.channel.close()

        async def completed() -> M | None:
            current = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=ACME,
                                           timeout=10)
            return current if current.state == M.STATE_COMPLETED else None

        final = await wait_for(completed, timeout_seconds=15)
        assert final.state_reason == "usage recorded by billing"
        async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("operator", "ops")) as ch:
            invoices = await billing_service_pb2_grpc.BillingServiceStub(ch).ListInvoices(
                billing_service_pb2.ListInvoicesRequest(filter=f'mission = "{mission.name}"'), metadata=ACME,
                timeout=10)
        assert len(invoices.invoices) == 1
        usage = invoices.invoices[0].usage
        # Driven by an operator, no truck telemetry: nothing measured, so the planned miles without provenance
        # (the quote is billed), and no dwell (detention comes only from geofence crossings, none here).
        assert usage.miles == pytest.approx(final.route_miles) and usage.hours >= 0
        assert not usage.HasField("provenance") and list(usage.stop_dwells) == []
        assert final.proof_of_delivery.telemetry_verification.result == (
            mission_pb2.TelemetryVerification.RESULT_DISPUTED)  # its frames #1..#10 were never stored
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
