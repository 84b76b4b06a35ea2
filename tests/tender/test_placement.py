"""The placement rules and the stops <-> lane fields rule as plain functions (services/tender/domain.py), and the
ZIP centroid table (services/tender/usecases.py): no store, no mesh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haulmesh.tender.v1 import facility_pb2, tender_pb2
from haulmesh.type.v1 import location_pb2, postal_address_pb2
from services.runtime import InvalidArgument, to_timestamp
from services.tender import domain
from services.tender.usecases import zip_centroid

from .helpers import ATLANTA, HOUSTON, seed_tender

Source = tender_pb2.Stop.LocationSource
NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
FACILITY = facility_pb2.Facility(name="facilities/dc7", display_name="DC 7", geofence_radius_meters=300,
                                 location=location_pb2.Location(lat=29.8, lon=-95.4))
CENTROID = domain.Centroid(29.7594, -95.3594, "Houston", "TX", "77002")


@pytest.mark.parametrize("code,country,expected", [
    ("77002", "", "77002"), ("77002-1234", "US", "77002"), (" 77002 1234 ", "", "77002"), ("7700", "", None),
    ("K1A 0B1", "CA", None), ("77002", "MX", None), ("", "", None), ("770021", "", None)])
def test_zip5_reads_us_zip_codes_only(code: str, country: str, expected: str | None) -> None:
    assert domain.zip5(postal_address_pb2.PostalAddress(postal_code=code, country_code=country)) == expected


def test_the_registry_wins_then_coordinates_then_the_zip_code() -> None:
    given_point = location_pb2.Location(lat=30.0, lon=-95.0, address="the dock")
    stop = tender_pb2.Stop(location=given_point)
    assert domain.place_stop(stop, FACILITY, CENTROID)
    assert (stop.location_source, stop.facility, stop.geofence_radius_meters) == (
        Source.LOCATION_SOURCE_FACILITY, "facilities/dc7", 300)
    assert (stop.placed_location.lat, stop.placed_location.lon, stop.placed_location.address) == (
        29.8, -95.4, "the dock")
    stop = tender_pb2.Stop(location=given_point)
    assert domain.place_stop(stop, None, CENTROID) and stop.placed_location == given_point
    stop = tender_pb2.Stop(location=location_pb2.Location(lat=0, lon=0))  # (0, 0): no coordinates
    assert domain.place_stop(stop, None, CENTROID)
    assert (stop.location_source, stop.placed_location.address) == (Source.LOCATION_SOURCE_POSTAL_CODE,
                                                                    "Houston, TX 77002")
    assert not domain.place_stop(tender_pb2.Stop(), None, None)


def test_zip_centroids_come_from_the_shipped_data() -> None:
    houston = zip_centroid("77002")
    assert houston is not None and (houston.lat, houston.lon, houston.region) == (29.7594, -95.3594, "TX")
    assert zip_centroid("00000") is None


def _placed(tender: tender_pb2.Tender) -> tender_pb2.Tender:
    for stop in tender.stops:
        assert domain.place_stop(stop, None, None)
    return tender


@given(st.integers(min_value=2, max_value=10), st.booleans())
def test_lane_fields_follow_any_stops_and_derived_stops_give_them_back(count: int, delivery_window: bool) -> None:
    tender = tender_pb2.Tender()
    for i in range(count):
        stop = tender.stops.add(type=tender_pb2.Stop.TYPE_PICKUP if i == 0 else tender_pb2.Stop.TYPE_DELIVERY,
                                location=location_pb2.Location(lat=29 + i, lon=-95 + i))
        if i == 0 or (i == count - 1 and delivery_window):
            stop.window.start_time.CopyFrom(to_timestamp(NOW + timedelta(hours=i)))
            stop.window.end_time.CopyFrom(to_timestamp(NOW + timedelta(hours=i + 2)))
    assert domain.derive_lane_fields(_placed(tender), tender_pb2.Tender(), set(domain.LANE_FIELDS)) == []
    assert (tender.origin.lat, tender.destination.lat) == (29, 29 + count - 1)
    assert tender.HasField("delivery_window") == delivery_window
    again = tender_pb2.Tender()
    again.CopyFrom(tender)
    domain.derive_stops(again)
    assert [(s.placed_location.lat, s.window) for s in again.stops] == [
        (tender.stops[0].placed_location.lat, tender.stops[0].window),
        (tender.stops[-1].placed_location.lat, tender.stops[-1].window)]


def test_lane_fields_sent_beside_stops_must_be_the_stops_own() -> None:
    sent = seed_tender(NOW)
    sent.stops.add(type=tender_pb2.Stop.TYPE_PICKUP, location=sent.origin, window=sent.pickup_window)
    sent.stops.add(type=tender_pb2.Stop.TYPE_DELIVERY, location=location_pb2.Location(lat=ATLANTA[0] + 1,
                                                                                      lon=ATLANTA[1]))
    tender = tender_pb2.Tender()
    tender.CopyFrom(sent)
    problems = domain.derive_lane_fields(_placed(tender), sent, set(domain.LANE_FIELDS))
    assert [v.field for v in problems] == ["tender.destination"]
    assert (tender.origin.lat, tender.origin.lon) == HOUSTON


def test_stops_are_checked_in_order_and_bounds() -> None:
    tender = seed_tender(NOW)
    tender.stops.add(type=tender_pb2.Stop.TYPE_DELIVERY, facility="not-a-name")
    tender.stops.add(type=tender_pb2.Stop.TYPE_PICKUP, references=[tender_pb2.Reference(
        kind=tender_pb2.Reference.KIND_OTHER, value="x\x07")])
    fields = {v.field: v.description for v in domain.validate_tender(tender, NOW)}
    assert fields.keys() >= {"tender.stops[0].type", "tender.stops[0].facility", "tender.stops[0].window",
                             "tender.stops[1].type", "tender.stops[1].references[0].qualifier",
                             "tender.stops[1].references[0].value"}
    assert "tender.origin" not in fields  # with stops, the stops give it
    one = seed_tender(NOW)
    one.stops.add(type=tender_pb2.Stop.TYPE_PICKUP, location=one.origin, window=one.pickup_window)
    assert [v.field for v in domain.validate_tender(one, NOW)] == ["tender.stops"]


def test_a_facility_update_checks_what_it_changes() -> None:
    code = tender_pb2.FacilityCode(qualifier="93", code="DC-7")
    current = facility_pb2.Facility(name="facilities/dc7", display_name="DC 7", codes=[code],
                                    location=location_pb2.Location(lat=29.8, lon=-95.4))
    updated = domain.apply_facility_update(current, facility_pb2.Facility(display_name="Yard", codes=[code, code]),
                                           ["displayName"])
    assert (updated.display_name, list(updated.codes)) == ("Yard", [code])  # only display_name was named
    with pytest.raises(InvalidArgument) as caught:  # an empty one is refused
        domain.apply_facility_update(current, facility_pb2.Facility(), ["display_name"])
    assert [v.field for v in caught.value.violations] == ["facility.display_name"]
    with pytest.raises(InvalidArgument) as caught:
        domain.apply_facility_update(current, facility_pb2.Facility(codes=[code, code]), ["codes"])
    assert [v.field for v in caught.value.violations] == ["facility.codes[1]"]
    with pytest.raises(InvalidArgument) as caught:
        domain.apply_facility_update(current, facility_pb2.Facility(), ["carrier"])
    assert [v.field for v in caught.value.violations] == ["update_mask"]


def test_an_update_without_stops_is_checked_by_its_lane_fields_as_before_stops() -> None:
    """An existing client updating ``origin`` of a tender (which has stops now) hears about ``tender.origin``."""
    current = seed_tender(NOW)
    current.state = tender_pb2.Tender.STATE_OFFERED
    domain.derive_stops(current)
    patch = tender_pb2.Tender(origin=location_pb2.Location(lat=123, lon=-95))
    with pytest.raises(InvalidArgument) as caught:
        domain.apply_update(current, patch, ["origin"], NOW)
    assert [v.field for v in caught.value.violations] == ["tender.origin.lat"]
    patch.origin.lat = 30
    updated, reevaluate = domain.apply_update(current, patch, ["origin"], NOW)
    assert reevaluate and updated.stops[0].location == patch.origin and not updated.stops[0].location_source
    assert updated.stops[1] == current.stops[1]  # the delivery keeps its placement
