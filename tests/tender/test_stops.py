"""A tender's stops, references, commodities and offered rate, and the facility registry that places stops, over
the real mesh (issue 15: what an X12 204 carries).

Placement: a stop named by a facility code is placed from the carrier's registry, one with only a ZIP code at the
ZIP's centroid (77002 -> 29.7594, -95.3594, the ``zipcodes`` data), and one that nothing places is refused with
STOP_NOT_PLACEABLE naming it. The accepted tender's mission has every stop, the facility's geofence radius on its
stop. The registry: CRUD with request_id, etag, unique codes and tenant isolation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.tender.v1 import (
    facility_pb2,
    facility_service_pb2,
    facility_service_pb2_grpc,
    tender_pb2,
    tender_service_pb2,
    tender_service_pb2_grpc,
)
from haulmesh.type.v1 import equipment_pb2, location_pb2, money_pb2, postal_address_pb2
from services.runtime import Mesh, new_id, status_of, to_timestamp

from ..conftest import Pki
from .helpers import ATLANTA, HOUSTON, register_trucks, seed_tender
from .test_mesh import ACME, OTHER, error_of

State = tender_pb2.Tender.State
Stop = tender_pb2.Stop
Source = tender_pb2.Stop.LocationSource
#: A distribution centre in north Houston: a registered facility with a 300 m geofence.
DC = (29.8069, -95.4012)


@pytest.fixture(scope="module")
async def roster(mesh: Mesh, mesh_pki: Pki) -> None:
    """Trucks of this module at Houston."""
    await register_trucks(mesh, mesh_pki.credentials("operator", "dispatch"), "STP-TRK", 2)


@pytest.fixture
async def channel(mesh: Mesh, mesh_pki: Pki, roster):
    async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
        yield ch


@pytest.fixture
def tenders(channel) -> tender_service_pb2_grpc.TenderServiceStub:
    return tender_service_pb2_grpc.TenderServiceStub(channel)


@pytest.fixture
def facilities(channel) -> facility_service_pb2_grpc.FacilityServiceStub:
    return facility_service_pb2_grpc.FacilityServiceStub(channel)


def _code() -> tender_pb2.FacilityCode:
    return tender_pb2.FacilityCode(qualifier="93", code=f"DC-{new_id()[-8:]}")


async def _facility(facilities, code: tender_pb2.FacilityCode, metadata=ACME, **kw) -> facility_pb2.Facility:
    facility = facility_pb2.Facility(
        display_name="ACME DC 7 - Houston", location=location_pb2.Location(lat=DC[0], lon=DC[1], address="DC 7"),
        address=postal_address_pb2.PostalAddress(lines=["1200 Dock Rd"], city="Houston", region="TX",
                                                 postal_code="77018"),
        geofence_radius_meters=300, codes=[code])
    for name, value in kw.items():
        setattr(facility, name, value)
    return await facilities.CreateFacility(facility_service_pb2.CreateFacilityRequest(facility=facility),
                                           metadata=metadata, timeout=10)


def _window(start: timedelta, hours: float) -> dict:
    begin = datetime.now(UTC) + start
    return {"start_time": to_timestamp(begin), "end_time": to_timestamp(begin + timedelta(hours=hours))}


def _multi_stop_tender(code: tender_pb2.FacilityCode) -> tender_pb2.Tender:
    """Houston (coordinates) -> the registered DC (by its N1 code) -> Atlanta (ZIP 30303 only), with the load's
    references, commodities and the shipper's rate."""
    tender = tender_pb2.Tender(tms_load_id=f"STP-{new_id()[-10:]}", equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT,
                               weight_lb=38_000)
    tender.stops.add(type=Stop.TYPE_PICKUP, location=location_pb2.Location(lat=HOUSTON[0], lon=HOUSTON[1],
                                                                           address="Shipper, Houston TX"),
                     display_name="SHIPPER ONE", window=_window(timedelta(hours=20), 10),
                     references=[tender_pb2.Reference(kind=tender_pb2.Reference.KIND_OTHER, qualifier="PU",
                                                      value="PU-4471")])
    tender.stops.add(type=Stop.TYPE_PICKUP, facility_code=code, display_name="ACME DC 7",
                     window=_window(timedelta(hours=24), 4))
    tender.stops.add(type=Stop.TYPE_DELIVERY, display_name="CONSIGNEE",
                     address=postal_address_pb2.PostalAddress(city="Atlanta", region="GA", postal_code="30303-1234"),
                     window=_window(timedelta(hours=40), 24))
    tender.references.extend([
        tender_pb2.Reference(kind=tender_pb2.Reference.KIND_BILL_OF_LADING, qualifier="BM", value="BOL-99812"),
        tender_pb2.Reference(kind=tender_pb2.Reference.KIND_PURCHASE_ORDER, value="PO-5521", description="two lines"),
        tender_pb2.Reference(kind=tender_pb2.Reference.KIND_SHIPMENT_ID, value="SHP-20261204-7")])
    tender.commodities.add(description="Paper towels, palletized", piece_count=22, piece_unit="PLT",
                           weight_lb=30_000, nmfc_code="100240-02", freight_class="70")
    tender.commodities.add(description="Napkins", piece_count=8, piece_unit="PLT", weight_lb=8_000)
    tender.offered_rate.CopyFrom(money_pb2.Money(currency_code="USD", amount_minor=245_000))
    return tender


def _violations(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    bad = error_details_pb2.BadRequest()
    for detail in status_of(exc).details:
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    return {}


async def test_a_multi_stop_tender_is_placed_priced_and_dispatched_with_every_stop(
        tenders, facilities, mesh: Mesh, mesh_pki: Pki) -> None:
    code = _code()
    facility = await _facility(facilities, code)
    sent = _multi_stop_tender(code)
    tender = await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=sent), metadata=ACME,
                                        timeout=15)
    assert tender.state == State.STATE_OFFERED, tender.state_reason
    given, registered, zipped = tender.stops
    assert (given.location_source, given.placed_location) == (Source.LOCATION_SOURCE_GIVEN, sent.stops[0].location)
    assert registered.location_source == Source.LOCATION_SOURCE_FACILITY and registered.facility == facility.name
    assert (registered.placed_location.lat, registered.placed_location.lon) == DC
    assert registered.geofence_radius_meters == 300
    assert zipped.location_source == Source.LOCATION_SOURCE_POSTAL_CODE and zipped.geofence_radius_meters == 0
    assert zipped.placed_location.address == "Atlanta, GA 30303"
    assert abs(zipped.placed_location.lat - ATLANTA[0]) < 0.1 and abs(zipped.placed_location.lon - ATLANTA[1]) < 0.1
    # The lane fields are the stops'.
    assert tender.origin == given.placed_location and tender.destination == zipped.placed_location
    assert tender.pickup_window == given.window and tender.delivery_window == zipped.window
    assert (tender.lane.origin_region, tender.lane.destination_region) == ("US-TX-HOU", "US-GA-ATL")
    # What the 204 carried comes back as sent.
    assert list(tender.references) == list(sent.references)
    assert list(tender.commodities) == list(sent.commodities)
    assert tender.offered_rate == sent.offered_rate and list(given.references) == list(sent.stops[0].references)
    assert await tenders.GetTender(tender_service_pb2.GetTenderRequest(name=tender.name), metadata=ACME,
                                   timeout=5) == tender
    # The detour through the DC is priced: more miles than the two-stop load straight to Atlanta.
    direct = await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(
        tender=seed_tender(tms_load_id=f"STP-{new_id()[-10:]}")), metadata=ACME, timeout=15)
    assert tender.offer.route_miles > direct.offer.route_miles

    accepted = await tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name), metadata=ACME,
                                          timeout=20)
    assert accepted.state == State.STATE_ACCEPTED and accepted.mission, accepted.state_reason
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("service", "gateway")) as ch:
        mission = await mission_service_pb2_grpc.MissionServiceStub(ch).GetMission(
            mission_service_pb2.GetMissionRequest(name=accepted.mission), metadata=ACME, timeout=5)
    assert [s.type for s in mission.stops] == [mission_pb2.Stop.TYPE_PICKUP, mission_pb2.Stop.TYPE_PICKUP,
                                               mission_pb2.Stop.TYPE_DELIVERY]
    assert [(s.location.lat, s.location.lon) for s in mission.stops] == \
        [(s.placed_location.lat, s.placed_location.lon) for s in tender.stops]
    assert mission.stops[1].geofence.circle.radius_meters == 300  # the facility's
    assert mission.stops[1].planned_window == registered.window
    assert mission.stops[0].geofence.circle.radius_meters == 500  # the mission's default elsewhere


async def test_a_stop_placed_from_a_zip_code_alone(tenders) -> None:
    tender = seed_tender(tms_load_id=f"STP-{new_id()[-10:]}")
    first = tender.stops.add(type=Stop.TYPE_PICKUP, address=postal_address_pb2.PostalAddress(postal_code="77002"))
    first.window.CopyFrom(tender.pickup_window)
    tender.stops.add(type=Stop.TYPE_DELIVERY, location=tender.destination)
    for name in ("origin", "destination", "pickup_window"):
        tender.ClearField(name)
    created = await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=tender), metadata=ACME,
                                         timeout=15)
    stop = created.stops[0]
    assert stop.location_source == Source.LOCATION_SOURCE_POSTAL_CODE
    assert (stop.placed_location.lat, stop.placed_location.lon) == (29.7594, -95.3594)
    assert (created.origin.lat, created.origin.lon) == (29.7594, -95.3594)
    assert created.state in (State.STATE_OFFERED, State.STATE_REJECTED)


async def test_a_stop_nothing_places_is_refused_naming_it(tenders) -> None:
    tender = _multi_stop_tender(_code())  # a code no facility carries, and an unknown ZIP code on the last stop
    tender.stops[1].address.postal_code = "99999"
    tender.stops[2].address.postal_code = "00000"
    tender.stops[2].address.country_code = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=tender), metadata=ACME, timeout=10)
    code, reason, _ = error_of(caught.value)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "STOP_NOT_PLACEABLE")
    violations = _violations(caught.value)
    assert set(violations) == {"tender.stops[1]", "tender.stops[2]"}
    assert "is not registered" in violations["tender.stops[1]"] and "99999 is unknown" in violations["tender.stops[1]"]
    # Nothing was recorded.
    listed = await tenders.ListTenders(tender_service_pb2.ListTendersRequest(
        filter=f'tms_load_id = "{tender.tms_load_id}"'), metadata=ACME, timeout=5)
    assert not listed.tenders


async def test_another_carriers_facility_places_nothing(tenders, facilities) -> None:
    code = _code()
    theirs = await _facility(facilities, code, metadata=OTHER)
    tender = _multi_stop_tender(code)
    tender.stops[1].ClearField("facility_code")
    tender.stops[1].facility = theirs.name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=tender), metadata=ACME, timeout=10)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "STOP_NOT_PLACEABLE")
    assert set(_violations(caught.value)) == {"tender.stops[1].facility"}
    # By its code, the other carrier's facility is not found either: the stop falls to its (unknown) ZIP code.
    tender.stops[1].ClearField("facility")
    tender.stops[1].facility_code.CopyFrom(code)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=tender), metadata=ACME, timeout=10)
    assert set(_violations(caught.value)) == {"tender.stops[1]"}


async def test_lane_fields_beside_stops_must_agree(tenders) -> None:
    tender = seed_tender(tms_load_id=f"STP-{new_id()[-10:]}")
    tender.stops.add(type=Stop.TYPE_PICKUP, location=tender.origin, window=tender.pickup_window)
    tender.stops.add(type=Stop.TYPE_DELIVERY, location=tender.destination)
    same = await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=tender), metadata=ACME,
                                      timeout=15)
    assert same.origin == tender.origin and len(same.stops) == 2
    tender.tms_load_id = f"STP-{new_id()[-10:]}"
    tender.destination.lat += 0.5
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(tender=tender), metadata=ACME, timeout=10)
    assert error_of(caught.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(caught.value)) == {"tender.destination"}


async def test_a_two_point_tender_gets_its_stops_and_an_origin_update_moves_the_first(tenders) -> None:
    created = await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(
        tender=seed_tender(tms_load_id=f"STP-{new_id()[-10:]}")), metadata=ACME, timeout=15)
    assert [(s.type, s.location_source) for s in created.stops] == [
        (Stop.TYPE_PICKUP, Source.LOCATION_SOURCE_GIVEN), (Stop.TYPE_DELIVERY, Source.LOCATION_SOURCE_GIVEN)]
    assert created.stops[0].placed_location == created.origin and created.stops[1].window == created.delivery_window
    patch = tender_pb2.Tender(name=created.name, etag=created.etag,
                              origin=location_pb2.Location(lat=29.76, lon=-95.37, address="Houston, TX"))
    updated = await tenders.UpdateTender(tender_service_pb2.UpdateTenderRequest(
        tender=patch, update_mask=field_mask_pb2.FieldMask(paths=["origin"])), metadata=ACME, timeout=15)
    assert updated.stops[0].placed_location == patch.origin == updated.origin
    # Replacing the stops: the lane fields follow them.
    stops = list(updated.stops)
    middle = tender_pb2.Stop(type=Stop.TYPE_DELIVERY, address=postal_address_pb2.PostalAddress(postal_code="77002"))
    patch = tender_pb2.Tender(name=created.name, stops=[stops[0], middle, stops[1]])
    replaced = await tenders.UpdateTender(tender_service_pb2.UpdateTenderRequest(
        tender=patch, update_mask=field_mask_pb2.FieldMask(paths=["stops"])), metadata=ACME, timeout=15)
    assert [s.location_source for s in replaced.stops] == [
        Source.LOCATION_SOURCE_GIVEN, Source.LOCATION_SOURCE_POSTAL_CODE, Source.LOCATION_SOURCE_GIVEN]
    assert replaced.destination == replaced.stops[2].placed_location


async def test_facility_registry_crud_codes_etags_and_tenancy(facilities) -> None:
    code = _code()
    request_id = f"fac-{new_id()}"
    facility = facility_pb2.Facility(display_name="Yard 3", location=location_pb2.Location(lat=DC[0], lon=DC[1]),
                                     codes=[code])
    request = facility_service_pb2.CreateFacilityRequest(facility=facility, request_id=request_id)
    created = await facilities.CreateFacility(request, metadata=ACME, timeout=10)
    assert created.name.startswith("facilities/") and created.carrier == "carriers/acme" and created.etag
    assert await facilities.CreateFacility(request, metadata=ACME, timeout=10) == created  # a retry
    get = facility_service_pb2.GetFacilityRequest(name=created.name)
    assert await facilities.GetFacility(get, metadata=ACME, timeout=5) == created
    # Another carrier: NOT_FOUND for every call naming it.
    for call in (facilities.GetFacility(get, metadata=OTHER, timeout=5),
                 facilities.UpdateFacility(facility_service_pb2.UpdateFacilityRequest(
                     facility=facility_pb2.Facility(name=created.name, display_name="mine"),
                     update_mask=field_mask_pb2.FieldMask(paths=["display_name"])), metadata=OTHER, timeout=5),
                 facilities.DeleteFacility(facility_service_pb2.DeleteFacilityRequest(name=created.name),
                                           metadata=OTHER, timeout=5)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert error_of(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "FACILITY_NOT_FOUND")
    other = await facilities.ListFacilities(facility_service_pb2.ListFacilitiesRequest(page_size=1000),
                                            metadata=OTHER, timeout=5)
    assert created.name not in {f.name for f in other.facilities}
    # A code is one facility's.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _facility(facilities, code)
    assert error_of(caught.value) == (grpc.StatusCode.ALREADY_EXISTS, "FACILITY_CODE_IN_USE",
                                      {"facility": created.name})
    # Update with the etag read; the stale etag is refused.
    rename = facility_service_pb2.UpdateFacilityRequest(
        facility=facility_pb2.Facility(name=created.name, display_name="Yard 3 (north gate)", etag=created.etag,
                                       geofence_radius_meters=150),
        update_mask=field_mask_pb2.FieldMask(paths=["displayName", "geofence_radius_meters"]))
    renamed = await facilities.UpdateFacility(rename, metadata=ACME, timeout=5)
    assert (renamed.display_name, renamed.geofence_radius_meters, renamed.etag != created.etag) == \
        ("Yard 3 (north gate)", 150, True)
    assert list(renamed.codes) == [code] and renamed.create_time == created.create_time
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await facilities.UpdateFacility(rename, metadata=ACME, timeout=5)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    bad = facility_service_pb2.UpdateFacilityRequest(
        facility=facility_pb2.Facility(name=created.name, geofence_radius_meters=5),
        update_mask=field_mask_pb2.FieldMask(paths=["geofence_radius_meters"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await facilities.UpdateFacility(bad, metadata=ACME, timeout=5)
    assert set(_violations(caught.value)) == {"facility.geofence_radius_meters"}
    # Paging: newest first, a page at a time.
    more = [await _facility(facilities, _code()) for _ in range(2)]
    first = await facilities.ListFacilities(facility_service_pb2.ListFacilitiesRequest(page_size=2), metadata=ACME,
                                            timeout=5)
    assert [f.name for f in first.facilities] == [more[1].name, more[0].name] and first.next_page_token
    second = await facilities.ListFacilities(facility_service_pb2.ListFacilitiesRequest(
        page_size=2, page_token=first.next_page_token), metadata=ACME, timeout=5)
    assert second.facilities and not {f.name for f in second.facilities} & {f.name for f in first.facilities}
    # Delete (with a stale etag refused): gone, and its code free for another facility.
    delete = facility_service_pb2.DeleteFacilityRequest(name=created.name, etag=created.etag)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await facilities.DeleteFacility(delete, metadata=ACME, timeout=5)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    delete.etag = renamed.etag
    await facilities.DeleteFacility(delete, metadata=ACME, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await facilities.GetFacility(get, metadata=ACME, timeout=5)
    assert error_of(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "FACILITY_NOT_FOUND")
    assert (await _facility(facilities, code)).codes[0] == code
