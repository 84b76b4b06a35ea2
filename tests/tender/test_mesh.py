"""TenderService over the real mesh: real processes, real mTLS, real store, real billing and mission.

Called as the gateway (the only identity allowed) for carrier ``acme``; the roster gets a few vehicles
from an operator first so that the fleet has capacity on the seed lane.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest
from google.rpc import error_details_pb2

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Mesh, check_health, free_port, new_id, status_of

from ..conftest import Pki, wait_for
from .helpers import register_trucks, seed_tender

ACME = (("haulmesh-carrier", "carriers/acme"),)
OTHER = (("haulmesh-carrier", "carriers/globex"),)
State = tender_pb2.Tender.State


def error_of(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    status = status_of(exc)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return exc.code(), info.reason, dict(info.metadata)
    return exc.code(), "", {}


@pytest.fixture(scope="module")
async def roster(mesh: Mesh, mesh_pki: Pki) -> None:
    """Vehicles able to haul the seed load out of Houston (created once; ALREADY_EXISTS is fine)."""
    await register_trucks(mesh, mesh_pki.credentials("operator", "dispatch"), "TND-TRK", 3)


@pytest.fixture
async def tenders(mesh: Mesh, mesh_pki: Pki, roster) -> tender_service_pb2_grpc.TenderServiceStub:
    async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
        yield tender_service_pb2_grpc.TenderServiceStub(ch)


def create(request_id: str = "", **kw) -> tender_service_pb2.CreateTenderRequest:
    kw.setdefault("tms_load_id", f"TND-{new_id()[-10:]}")
    return tender_service_pb2.CreateTenderRequest(tender=seed_tender(**kw), request_id=request_id)


async def offered(stub, **kw) -> tender_pb2.Tender:
    tender = await stub.CreateTender(create(**kw), metadata=ACME, timeout=10)
    assert tender.state == State.STATE_OFFERED, (State.Name(tender.state), tender.state_reason)
    return tender


async def test_create_returns_an_offer(tenders) -> None:
    tender = await offered(tenders)
    assert tender.carrier == "carriers/acme" and tender.name.startswith("tenders/")
    assert (tender.lane.origin_region, tender.lane.destination_region) == ("US-TX-HOU", "US-GA-ATL")
    offer = tender.offer
    assert offer.quote.startswith("quotes/") and offer.price.currency_code == "USD" and offer.price.amount_minor > 0
    assert offer.price.amount_minor == sum(line.amount.amount_minor for line in offer.price_lines)
    assert offer.pickup_availability and 0 <= offer.risk_score <= 100 and offer.risk_reasons
    assert offer.expire_time.ToDatetime() > offer.create_time.ToDatetime()
    assert await tenders.GetTender(tender_service_pb2.GetTenderRequest(name=tender.name), metadata=ACME,
                                   timeout=5) == tender


async def test_invalid_tender_names_each_field(tenders) -> None:
    request = create()
    request.tender.weight_lb = 0
    request.tender.origin.lat = 123
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(request, metadata=ACME, timeout=5)
    code, reason, _ = error_of(caught.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    status = status_of(caught.value)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert {v.field for v in bad.field_violations} == {"tender.weight_lb", "tender.origin.lat"}


async def test_concurrent_creates_with_one_request_id(tenders) -> None:
    request = create(request_id=f"req-{new_id()}")
    results = await asyncio.gather(*(tenders.CreateTender(request, metadata=ACME, timeout=30) for _ in range(100)))
    assert len({r.SerializeToString(deterministic=True) for r in results}) == 1
    listed = await tenders.ListTenders(tender_service_pb2.ListTendersRequest(
        filter=f'tms_load_id = "{request.tender.tms_load_id}"'), metadata=ACME, timeout=5)
    assert [t.name for t in listed.tenders] == [results[0].name]


async def test_a_retried_create_returns_the_tender_as_it_is_now(tenders) -> None:
    """The first create answers the tender it committed; a retry with its request_id (the TMS never saw that answer)
    gets the same tender as it stands when the retry arrives, not a stale copy of the offer."""
    request = create(request_id=f"req-{new_id()}")
    first = await tenders.CreateTender(request, metadata=ACME, timeout=10)
    assert first.state == State.STATE_OFFERED
    assert await tenders.GetTender(tender_service_pb2.GetTenderRequest(name=first.name), metadata=ACME,
                                   timeout=5) == first
    declined = await tenders.DeclineTender(tender_service_pb2.DeclineTenderRequest(name=first.name), metadata=ACME,
                                           timeout=5)
    assert declined.state == State.STATE_DECLINED
    assert await tenders.CreateTender(request, metadata=ACME, timeout=10) == declined


async def test_same_request_id_with_another_body_is_refused(tenders) -> None:
    key = f"req-{new_id()}"
    await tenders.CreateTender(create(request_id=key), metadata=ACME, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(create(request_id=key), metadata=ACME, timeout=10)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_second_open_tender_for_a_load_already_exists(tenders) -> None:
    first = await offered(tenders)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(create(tms_load_id=first.tms_load_id), metadata=ACME, timeout=10)
    code, reason, metadata = error_of(caught.value)
    assert (code, reason, metadata.get("tender")) == (grpc.StatusCode.ALREADY_EXISTS, "TENDER_ALREADY_EXISTS",
                                                      first.name)


async def test_illegal_transitions_are_refused(tenders) -> None:
    declined = await offered(tenders)
    await tenders.DeclineTender(tender_service_pb2.DeclineTenderRequest(name=declined.name), metadata=ACME, timeout=5)
    cancelled = await offered(tenders)
    await tenders.CancelTender(tender_service_pb2.CancelTenderRequest(name=cancelled.name), metadata=ACME, timeout=5)
    for tender, state in ((declined, "STATE_DECLINED"), (cancelled, "STATE_CANCELLED")):
        calls = [tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name), metadata=ACME,
                                      timeout=5)]
        if state != "STATE_DECLINED":
            calls.append(tenders.DeclineTender(tender_service_pb2.DeclineTenderRequest(name=tender.name),
                                               metadata=ACME, timeout=5))
        if state != "STATE_CANCELLED":
            calls.append(tenders.CancelTender(tender_service_pb2.CancelTenderRequest(name=tender.name),
                                              metadata=ACME, timeout=5))
        update = tender_service_pb2.UpdateTenderRequest(tender=tender_pb2.Tender(name=tender.name, weight_lb=1000))
        update.update_mask.paths.append("weight_lb")
        calls.append(tenders.UpdateTender(update, metadata=ACME, timeout=5))
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            code, reason, metadata = error_of(caught.value)
            assert (code, reason, metadata.get("state")) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                             "INVALID_TENDER_STATE", state)


async def test_other_carrier_gets_not_found(tenders) -> None:
    tender = await offered(tenders)
    update = tender_service_pb2.UpdateTenderRequest(tender=tender_pb2.Tender(name=tender.name,
                                                                             special_instructions="x"))
    update.update_mask.paths.append("special_instructions")
    calls = [
        tenders.GetTender(tender_service_pb2.GetTenderRequest(name=tender.name), metadata=OTHER, timeout=5),
        tenders.UpdateTender(update, metadata=OTHER, timeout=5),
        tenders.CancelTender(tender_service_pb2.CancelTenderRequest(name=tender.name), metadata=OTHER, timeout=5),
        tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name), metadata=OTHER, timeout=5),
        tenders.DeclineTender(tender_service_pb2.DeclineTenderRequest(name=tender.name), metadata=OTHER, timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert error_of(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "TENDER_NOT_FOUND")
    listed = await tenders.ListTenders(tender_service_pb2.ListTendersRequest(), metadata=OTHER, timeout=5)
    assert tender.name not in {t.name for t in listed.tenders}
    again = await tenders.GetTender(tender_service_pb2.GetTenderRequest(name=tender.name), metadata=ACME, timeout=5)
    assert again == tender


async def test_accept_dispatches_a_mission(tenders) -> None:
    tender = await offered(tenders)
    accepted = await tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name, etag=tender.etag),
                                          metadata=ACME, timeout=15)
    assert accepted.state == State.STATE_ACCEPTED, accepted.state_reason
    assert accepted.mission.startswith("missions/") and accepted.accept_time.seconds
    again = await tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name), metadata=ACME,
                                       timeout=15)
    assert again == accepted


@pytest.fixture(scope="module")
async def short_ttl_tender(mesh: Mesh, mesh_pki: Pki, roster):
    """A second tender process on the mesh's store whose offers live 2 seconds."""
    port = free_port()
    env = mesh._env("tender", mesh.store.url if mesh.store else mesh.redis_url or "")
    env.update({"HAULMESH_PORT": str(port), "HAULMESH_TENDER_OFFER_TTL_SECONDS": "2"})
    log = open(mesh.state_dir / "logs" / "tender-short-ttl.log", "ab")  # noqa: ASYNC230
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.tender", env=env,
                                                   stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    try:
        await wait_for(lambda: _serving(address, mesh), timeout_seconds=30, interval_seconds=0.2)
        async with grpc.aio.secure_channel(address, mesh_pki.credentials("service", "gateway")) as ch:
            yield tender_service_pb2_grpc.TenderServiceStub(ch)
    finally:
        process.terminate()
        await process.wait()
        log.close()


async def _serving(address: str, mesh: Mesh) -> bool:
    return await check_health(address, mesh.operator_credentials()) == "SERVING"


async def test_expired_offer_lapses(tenders, short_ttl_tender) -> None:
    tender = await offered(short_ttl_tender)
    assert (tender.offer.expire_time.ToMilliseconds() - tender.offer.create_time.ToMilliseconds()) == 2000
    lapsed = await wait_for(lambda: _state_is(tenders, tender.name, State.STATE_LAPSED), timeout_seconds=10)
    assert lapsed.state_reason.startswith("the offer expired")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name), metadata=ACME, timeout=5)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TENDER_STATE")


async def _state_is(stub, name: str, state: int) -> tender_pb2.Tender | None:
    tender = await stub.GetTender(tender_service_pb2.GetTenderRequest(name=name), metadata=ACME, timeout=5)
    return tender if tender.state == state else None


async def test_list_filters(tenders) -> None:
    tender = await offered(tenders)
    page = await tenders.ListTenders(tender_service_pb2.ListTendersRequest(
        filter=f'state = OFFERED AND tms_load_id = "{tender.tms_load_id}" AND lane.destination_region = "US-GA-ATL"'),
        metadata=ACME, timeout=5)
    assert [t.name for t in page.tenders] == [tender.name]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.ListTenders(tender_service_pb2.ListTendersRequest(filter="colour = 'red'"), metadata=ACME,
                                  timeout=5)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER")


async def test_update_reprices_and_checks_the_etag(tenders) -> None:
    tender = await offered(tenders)
    request = tender_service_pb2.UpdateTenderRequest(tender=tender_pb2.Tender(name=tender.name, weight_lb=20_000,
                                                                              etag=tender.etag))
    request.update_mask.paths.append("weightLb")
    updated = await tenders.UpdateTender(request, metadata=ACME, timeout=15)
    assert updated.state == State.STATE_OFFERED and updated.weight_lb == 20_000
    assert updated.offer.quote != tender.offer.quote and updated.etag != tender.etag
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.UpdateTender(request, metadata=ACME, timeout=15)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
