"""The tender book over a real store (embedded Valkey), with billing and mission stood in by a fake fleet.

These exercise the store, idempotency, events, etags, the lapse loop and every transition without
depending on the other services; tests/tender/test_mesh.py runs the same flows over the real mesh.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from haulmesh.billing.v1 import quote_pb2
from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from haulmesh.type.v1 import money_pb2
from services.runtime import (
    AlreadyExists,
    FailedPrecondition,
    HaulmeshError,
    Idempotency,
    InvalidArgument,
    NotFound,
    Periodic,
    Unavailable,
    connect_async,
    event_stream_key,
    new_id,
    to_timestamp,
)
from services.tender.domain import State
from services.tender.eligibility import load_policy
from services.tender.store import TenderStore
from services.tender.usecases import TenderBook
from services.tender.workers import OfferLapser

from .helpers import MIAMI, seed_tender


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeFleet:
    """Billing and mission as the tender service sees them."""

    def __init__(self) -> None:
        self.capacity_calls = 0
        self.quote_calls = 0
        self.dispatched: list[str] = []
        self.cancelled: list[str] = []
        self.no_capacity = False
        self.fail_pricing = False
        self.no_vehicle = False
        self.departed = False

    async def quote(self, tenant, quote, request_id):
        self.quote_calls += 1
        await asyncio.sleep(0.01)
        if self.fail_pricing:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "billing down")
        result = quote_pb2.Quote(name=f"quotes/{new_id()}", lane=quote.lane, route_miles=quote.route_miles,
                                 total=money_pb2.Money(currency_code="USD", amount_minor=225_000))
        result.expire_time.CopyFrom(to_timestamp(datetime.now(UTC) + timedelta(hours=24)))
        return result

    async def capacity(self, tenant, request):
        self.capacity_calls += 1
        from haulmesh.mission.v1 import mission_service_pb2
        response = mission_service_pb2.GetFleetCapacityResponse(eligible_vehicle_count=3)
        if not self.no_capacity:
            response.windows.add(window=request.pickup_window, vehicle_count=2)
        return response

    async def dispatch(self, tenant, mission, request_id):
        if self.no_vehicle:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "no roster vehicle can take the load")
        self.dispatched.append(request_id)
        return mission_pb2.Mission(name=f"missions/m-{request_id}", tender=mission.tender)

    async def get_mission(self, tenant, name):
        state = mission_pb2.Mission.STATE_ENROUTE if self.departed else mission_pb2.Mission.STATE_DISPATCHED
        return mission_pb2.Mission(name=name, state=state)

    async def cancel_mission(self, tenant, name, reason):
        if self.departed:
            raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "departed")
        self.cancelled.append(name)
        return mission_pb2.Mission(name=name)


@pytest.fixture
async def redis(store_url):
    client = connect_async(store_url)
    yield client
    await client.aclose()


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def book(redis, fleet) -> TenderBook:
    return TenderBook(store=TenderStore(redis), policy=load_policy({}), fleet=fleet,  # type: ignore[arg-type]
                      idempotency=Idempotency(redis))


def tenant() -> str:
    return f"c-{new_id()[-10:]}"


def create_request(now=None, **kw) -> tender_service_pb2.CreateTenderRequest:
    kw.setdefault("tms_load_id", f"TND-{new_id()[-8:]}")
    return tender_service_pb2.CreateTenderRequest(tender=seed_tender(now, **kw))


async def events(redis, carrier: str) -> list[event_pb2.Event]:
    entries = await redis.xrange(event_stream_key(carrier))
    return [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries]


async def test_create_offers_and_commits_the_event(book, redis) -> None:
    c = tenant()
    tender = await book.create(c, create_request())
    assert tender.state == State.STATE_OFFERED and tender.offer.quote.startswith("quotes/")
    assert tender.carrier == f"carriers/{c}" and tender.etag and tender.lane.origin_region == "US-TX-HOU"
    assert await book.get(c, tender.name) == tender
    [event] = await events(redis, c)
    assert event.type == "haulmesh.tender.v1.offered" and event.subject == tender.name
    assert event.tender_offered.tender == tender


async def test_ineligible_is_rejected_without_asking_the_fleet(book, fleet) -> None:
    c = tenant()
    tender = await book.create(c, create_request(destination=MIAMI))
    assert tender.state == State.STATE_REJECTED and tender.rejection_reasons
    assert fleet.capacity_calls == fleet.quote_calls == 0


async def test_pricing_unavailable_records_nothing(book, fleet, redis) -> None:
    c = tenant()
    fleet.fail_pricing = True
    request = create_request()
    request.request_id = "retry-me"
    with pytest.raises(Unavailable) as caught:
        await book.create(c, request)
    assert caught.value.reason == "EVALUATION_UNAVAILABLE"
    assert (await book.list(c, tender_service_pb2.ListTendersRequest())).tenders == []
    fleet.fail_pricing = False
    assert (await book.create(c, request)).state == State.STATE_OFFERED


async def test_concurrent_creates_with_one_request_id_make_one_tender(book) -> None:
    c = tenant()
    request = create_request()
    request.request_id = "same-key-1"
    results = await asyncio.gather(*(book.create(c, request) for _ in range(100)))
    assert len({r.SerializeToString() for r in results}) == 1
    listed = await book.list(c, tender_service_pb2.ListTendersRequest())
    assert [t.name for t in listed.tenders] == [results[0].name]


async def test_request_id_reused_with_another_body(book) -> None:
    c = tenant()
    request = create_request()
    request.request_id = "k1"
    await book.create(c, request)
    other = create_request()
    other.request_id = "k1"
    with pytest.raises(InvalidArgument) as caught:
        await book.create(c, other)
    assert caught.value.reason == "REQUEST_ID_REUSED"
    # The key is scoped to the carrier: another carrier may use it.
    assert (await book.create(tenant(), other)).state == State.STATE_OFFERED


async def test_natural_key_allows_one_open_tender_per_load(book) -> None:
    c = tenant()
    first = await book.create(c, create_request(tms_load_id="LOAD-1"))
    with pytest.raises(AlreadyExists) as caught:
        await book.create(c, create_request(tms_load_id="LOAD-1"))
    assert caught.value.reason == "TENDER_ALREADY_EXISTS" and caught.value.metadata["tender"] == first.name
    await book.cancel(c, tender_service_pb2.CancelTenderRequest(name=first.name, reason="re-tender"))
    assert (await book.create(c, create_request(tms_load_id="LOAD-1"))).state == State.STATE_OFFERED


async def test_accept_dispatches_and_is_idempotent(book, fleet, redis) -> None:
    c = tenant()
    offered = await book.create(c, create_request())
    accepted = await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name, etag=offered.etag))
    tender_id = offered.name.removeprefix("tenders/")
    assert accepted.state == State.STATE_ACCEPTED and accepted.mission == f"missions/m-{tender_id}"
    assert accepted.accepted_pickup_window == offered.offer.pickup_availability[0]
    assert fleet.dispatched == [tender_id]
    again = await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name, etag=offered.etag))
    assert again == accepted and fleet.dispatched == [tender_id]
    assert [e.type for e in await events(redis, c)] == ["haulmesh.tender.v1.offered", "haulmesh.tender.v1.accepted"]


async def test_accept_with_stale_etag_is_aborted(book) -> None:
    c = tenant()
    offered = await book.create(c, create_request())
    with pytest.raises(HaulmeshError) as caught:
        await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name, etag="stale"))
    assert (caught.value.code_name, caught.value.reason) == ("ABORTED", "ETAG_MISMATCH")


async def test_dispatch_failure(book, fleet, redis) -> None:
    c = tenant()
    fleet.no_vehicle = True
    offered = await book.create(c, create_request())
    tender = await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name))
    assert tender.state == State.STATE_DISPATCH_FAILED and "no roster vehicle" in tender.state_reason
    assert (await events(redis, c))[-1].type == "haulmesh.tender.v1.dispatch_failed"


async def test_cancel_accepted_cancels_the_mission_until_departure(book, fleet) -> None:
    c = tenant()
    offered = await book.create(c, create_request())
    accepted = await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name))
    fleet.departed = True
    with pytest.raises(FailedPrecondition) as caught:
        await book.cancel(c, tender_service_pb2.CancelTenderRequest(name=offered.name))
    assert caught.value.reason == "MISSION_IN_PROGRESS"
    fleet.departed = False
    cancelled = await book.cancel(c, tender_service_pb2.CancelTenderRequest(name=offered.name, reason="Shipper"))
    assert cancelled.state == State.STATE_CANCELLED and cancelled.state_reason == "Shipper"
    assert fleet.cancelled == [accepted.mission]


async def test_decline_and_every_illegal_transition(book) -> None:
    c = tenant()
    offered = await book.create(c, create_request())
    declined = await book.decline(c, tender_service_pb2.DeclineTenderRequest(
        name=offered.name, reason=tender_service_pb2.DeclineTenderRequest.REASON_PRICE))
    assert declined.state == State.STATE_DECLINED and declined.state_reason == "declined: PRICE"
    assert await book.decline(c, tender_service_pb2.DeclineTenderRequest(name=offered.name)) == declined
    for call in (book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name)),
                 book.cancel(c, tender_service_pb2.CancelTenderRequest(name=offered.name)),
                 book.update(c, tender_service_pb2.UpdateTenderRequest(
                     tender=tender_pb2.Tender(name=offered.name, special_instructions="x")))):
        with pytest.raises(FailedPrecondition) as caught:
            await call
        assert caught.value.reason == "INVALID_TENDER_STATE" and caught.value.metadata["state"] == "STATE_DECLINED"


async def test_update_reoffers_and_special_instructions_after_acceptance(book, fleet) -> None:
    c = tenant()
    offered = await book.create(c, create_request())
    patch = tender_pb2.Tender(name=offered.name, weight_lb=20_000, etag=offered.etag)
    request = tender_service_pb2.UpdateTenderRequest(tender=patch)
    request.update_mask.paths.append("weight_lb")
    updated = await book.update(c, request)
    assert updated.state == State.STATE_OFFERED and updated.weight_lb == 20_000
    assert updated.offer.quote != offered.offer.quote and updated.etag != offered.etag
    with pytest.raises(HaulmeshError) as caught:  # the old etag no longer matches
        await book.update(c, request)
    assert caught.value.reason == "ETAG_MISMATCH"
    await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name))
    note = tender_service_pb2.UpdateTenderRequest(tender=tender_pb2.Tender(name=offered.name,
                                                                           special_instructions="Dock 9"))
    note.update_mask.paths.append("special_instructions")
    assert (await book.update(c, note)).special_instructions == "Dock 9"
    fleet.departed = True
    with pytest.raises(FailedPrecondition) as caught:
        await book.update(c, note)
    assert caught.value.reason == "MISSION_IN_PROGRESS"
    request.tender.etag = ""
    with pytest.raises(FailedPrecondition):
        await book.update(c, request)


async def test_other_carrier_gets_not_found(book) -> None:
    c, other = tenant(), tenant()
    offered = await book.create(c, create_request())
    calls = [book.get(other, offered.name),
             book.update(other, tender_service_pb2.UpdateTenderRequest(tender=tender_pb2.Tender(name=offered.name))),
             book.cancel(other, tender_service_pb2.CancelTenderRequest(name=offered.name)),
             book.accept(other, tender_service_pb2.AcceptTenderRequest(name=offered.name)),
             book.decline(other, tender_service_pb2.DeclineTenderRequest(name=offered.name))]
    for call in calls:
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.reason == "TENDER_NOT_FOUND"
    assert (await book.get(c, offered.name)).state == State.STATE_OFFERED


async def test_expired_offer_refuses_acceptance_and_lapses(book, redis) -> None:
    c = tenant()
    # The pickup window ends in 1 s: the offer never outlives it.
    offered = await book.create(c, create_request(pickup_start=timedelta(minutes=-40),
                                                  pickup_length=timedelta(minutes=40, seconds=1)))
    assert offered.state == State.STATE_OFFERED
    await asyncio.sleep(1.1)
    with pytest.raises(FailedPrecondition) as caught:
        await book.accept(c, tender_service_pb2.AcceptTenderRequest(name=offered.name))
    assert caught.value.reason == "OFFER_EXPIRED"
    lapsed = await book.get(c, offered.name)
    assert lapsed.state == State.STATE_LAPSED
    assert (await events(redis, c))[-1].type == "haulmesh.tender.v1.lapsed"


async def test_lapse_loop(book, redis) -> None:
    c = tenant()
    offered = await book.create(c, create_request(pickup_start=timedelta(minutes=-40),
                                                  pickup_length=timedelta(minutes=40, seconds=1)))
    lapser = Periodic("offer lapser", OfferLapser(book, max_sleep_seconds=0.05).tick, interval_seconds=0.05)
    task = asyncio.create_task(lapser.run())
    try:
        for _ in range(100):
            if (await book.get(c, offered.name)).state == State.STATE_LAPSED:
                break
            await asyncio.sleep(0.05)
    finally:
        await lapser.stop()
        await task
    assert (await book.get(c, offered.name)).state == State.STATE_LAPSED
    assert [e.type for e in await events(redis, c)].count("haulmesh.tender.v1.lapsed") == 1


async def test_list_newest_first_filters_and_pages(book) -> None:
    c = tenant()
    made = [await book.create(c, create_request()) for _ in range(5)]
    rejected = await book.create(c, create_request(destination=MIAMI))
    names, token = [], ""
    while True:
        page = await book.list(c, tender_service_pb2.ListTendersRequest(page_size=2, page_token=token,
                                                                        filter="state = OFFERED"))
        names += [t.name for t in page.tenders]
        token = page.next_page_token
        if not token:
            break
    assert names == [t.name for t in reversed(made)]
    only = await book.list(c, tender_service_pb2.ListTendersRequest(filter="state = REJECTED"))
    assert [t.name for t in only.tenders] == [rejected.name]
    since = made[2].create_time.ToJsonString()
    recent = await book.list(c, tender_service_pb2.ListTendersRequest(filter=f'create_time >= "{since}"'))
    assert {t.name for t in recent.tenders} >= {made[2].name, made[3].name, made[4].name}
    assert made[0].name not in {t.name for t in recent.tenders} or made[0].create_time == made[2].create_time
    with pytest.raises(InvalidArgument) as caught:
        await book.list(c, tender_service_pb2.ListTendersRequest(filter="state = OFFERED", page_token=token or "x"))
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
