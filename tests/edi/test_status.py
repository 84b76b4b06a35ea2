"""The 214 writer: a run's statuses and an exception by hand, DDDMMSS both ways, validation and round trips."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.domain import (
    EXCEPTION_REASONS,
    SCHEMA_214,
    SEPARATOR_CHOICES,
    TERMINATOR_CHOICES,
    CityState,
    Coordinates,
    Delimiters,
    Equipment,
    FunctionalGroup,
    Interchange,
    ShipmentReference,
    ShipmentStatus,
    StatusError,
    StatusEvent,
    eta_event,
    exception_event,
    from_dddmmss,
    read,
    remarks,
    status_214,
    time_code_for,
    to_dddmmss,
    validate,
    write,
)

ROOT = Path(__file__).resolve().parents[2]
TRUCK = Equipment("HMSH", "TRK1001")
HOUSTON, SAN_ANTONIO = CityState("Houston", "TX"), CityState("San Antonio", "TX")


def at(hour: int, minute: int, month: int = 3, day: int = 16) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def lines(status: ShipmentStatus, **options) -> list[str]:
    return [str(s) for s in status_214(status, control="0001", **options).segments]


def run(*events: StatusEvent) -> ShipmentStatus:
    return ShipmentStatus("SHIP-1", "01HZX5M1SSION", "HMSH", events, (ShipmentReference("BM", "BOL-778"),))


def interchange_of(*sets, delimiters: Delimiters | None = None) -> Interchange:
    group = FunctionalGroup("QM", "HAULMESH", "PRAIRIEFRT", "20260316", "1500", "41", "004010", tuple(sets))
    return Interchange("ZZ", "HAULMESH", "ZZ", "PRAIRIEFRT", "260316", "1500", "000000041", groups=(group,),
                       delimiters=delimiters or Delimiters(line_end="\n"))


# --- a run, by hand ------------------------------------------------------------------------------------------------


def test_a_run_from_pickup_to_delivery_in_stop_local_time() -> None:
    chicago = "America/Chicago"  # 16 March 2026: CDT, UTC-5
    status = run(
        StatusEvent("X3", at(14, 5), zone=chicago, location=HOUSTON, stop_sequence=1, equipment=TRUCK),
        StatusEvent("AF", at(15, 10), zone=chicago, location=HOUSTON, stop_sequence=1, equipment=TRUCK),
        StatusEvent("X6", at(17, 30), zone=chicago, location=Coordinates(29.6, -96.75), equipment=TRUCK),
        StatusEvent("X1", at(20, 0), zone=chicago, location=SAN_ANTONIO, stop_sequence=2, equipment=TRUCK),
        StatusEvent("D1", at(21, 15), zone=chicago, location=SAN_ANTONIO, stop_sequence=2, equipment=TRUCK),
    )
    assert lines(status) == [
        "B10*01HZX5M1SSION*SHIP-1*HMSH",
        "L11*BOL-778*BM",
        "LX*1", "AT7*X3*NS***20260316*0905*LT", "MS1*Houston*TX", "MS2*HMSH*TRK1001*TL", "L11*1*QN",
        "LX*2", "AT7*AF*NS***20260316*1010*LT", "MS1*Houston*TX", "MS2*HMSH*TRK1001*TL", "L11*1*QN",
        "LX*3", "AT7*X6*NS***20260316*1230*LT", "MS1****0964500*0293600*W*N", "MS2*HMSH*TRK1001*TL",
        "LX*4", "AT7*X1*NS***20260316*1500*LT", "MS1*San Antonio*TX", "MS2*HMSH*TRK1001*TL", "L11*2*QN",
        "LX*5", "AT7*D1*NS***20260316*1615*LT", "MS1*San Antonio*TX", "MS2*HMSH*TRK1001*TL", "L11*2*QN",
    ]
    assert validate(SCHEMA_214, status_214(status, control="0001").segments, Delimiters()) == ()


def test_a_sensor_fault_is_delayed_for_a_mechanical_breakdown_with_a_remark() -> None:
    event = exception_event("KIND_SENSOR_FAULT", at(18, 0), description="Lidar degraded; minimal-risk stop",
                            zone="America/Chicago", location=Coordinates(29.7594, -95.3594), equipment=TRUCK)
    assert lines(run(event))[2:] == [
        "LX*1",
        "AT7*SD*AI***20260316*1300*LT",
        "MS1****0952134*0294534*W*N",  # 95°21'33.84" W, 29°45'33.84" N, to the nearest second
        "MS2*HMSH*TRK1001*TL",
        "K1*DRIVERLESS TRUCK SENSOR FAULT*Lidar degraded minimal-risk",
        "K1*stop",
    ]
    en_route = exception_event("ROAD_CLOSURE", at(18, 0), status="X6", zone="America/Chicago")
    assert lines(run(en_route))[3:5] == ["AT7*X6*BE***20260316*1300*LT", "K1*ROAD CLOSED ON ROUTE"]


def test_the_exception_table_covers_every_kind_of_the_contract_and_a_partner_may_bring_its_own() -> None:
    proto = (ROOT / "protos/haulmesh/mission/v1/mission.proto").read_text()
    block = proto[proto.index("message MissionException"):]
    block = block[block.index("enum Kind"):block.index("}")]
    kinds = set(re.findall(r"KIND_([A-Z_]+) = [1-9]", block))
    assert kinds and kinds <= set(EXCEPTION_REASONS)
    assert EXCEPTION_REASONS["ADVERSE_WEATHER"] == "AO" and EXCEPTION_REASONS["VEHICLE_FAULT"] == "AI"
    assert exception_event("CONNECTIVITY_LOSS", at(9, 0)).reason == "BG"
    assert exception_event("SOMETHING_NEW", at(9, 0)).reason == "BG"
    assert exception_event("SENSOR_FAULT", at(9, 0), reasons={"SENSOR_FAULT": "AJ"}).reason == "AJ"


def test_an_eta_and_an_appointment() -> None:
    eta = eta_event(at(20, 40), zone="America/Chicago", stop_sequence=2)
    appointment = StatusEvent("", at(21, 0), zone="America/Chicago", appointment="AB", stop_sequence=2)
    assert lines(run(eta, appointment))[2:] == [
        "LX*1", "AT7*AG*NS***20260316*1540*LT", "L11*2*QN",
        "LX*2", "AT7***AB*NA*20260316*1600*LT", "L11*2*QN",  # AT7-03/04, never with AT7-01/02 (E0103)
    ]


def test_time_codes_local_zone_or_universal() -> None:
    july = at(19, 30, month=7, day=1)
    phoenix = run(StatusEvent("X1", july, zone="America/Phoenix"))  # no daylight saving: MST all year
    chicago = run(StatusEvent("X1", july, zone="America/Chicago"))
    assert lines(phoenix)[3] == "AT7*X1*NS***20260701*1230*LT"
    assert lines(phoenix, time_code="ZONE")[3] == "AT7*X1*NS***20260701*1230*MS"
    assert lines(chicago, time_code="ZONE")[3] == "AT7*X1*NS***20260701*1430*CD"
    assert lines(chicago, time_code="UT")[3] == "AT7*X1*NS***20260701*1930*UT"
    naive = run(StatusEvent("X1", datetime(2026, 7, 1, 12, 30)))  # already the stop's wall time
    assert lines(naive)[3] == "AT7*X1*NS***20260701*1230*LT"
    with pytest.raises(StatusError):
        lines(naive, time_code="ZONE")
    with pytest.raises(StatusError):
        lines(run(StatusEvent("X1", july)))  # aware, but whose local time?
    from datetime import timedelta, timezone
    assert time_code_for(july.astimezone(timezone(timedelta(hours=-5)))) == "20"  # ISO M05
    assert time_code_for(july.astimezone(timezone(timedelta(hours=3)))) == "03"
    assert time_code_for(july.astimezone(timezone(timedelta(hours=5, minutes=30)))) == "LT"


def test_what_a_214_cannot_say_is_refused() -> None:
    with pytest.raises(StatusError):
        lines(run(StatusEvent("ZZ", at(9, 0), zone="UTC")))
    with pytest.raises(StatusError):
        lines(run(StatusEvent("X3", at(9, 0), reason="QQ", zone="UTC")))
    with pytest.raises(StatusError):
        lines(run(StatusEvent("X3", at(9, 0), zone="UTC", appointment="AA")))
    with pytest.raises(StatusError):
        lines(run(StatusEvent("X3", at(9, 0), zone="UTC", equipment=Equipment("HMSH", "AU-TRK-1001"))))
    with pytest.raises(StatusError):
        lines(run())
    with pytest.raises(StatusError):
        lines(run(StatusEvent("X3", at(9, 0), zone="Mars/Olympus")))
    with pytest.raises(StatusError, match="city of 2 to 30"):  # MS1-01's length
        lines(run(StatusEvent("X3", at(9, 0), zone="UTC", location=CityState("A" * 31, "TX"))))


def test_remarks_are_cut_at_words_into_k1s_of_thirty() -> None:
    segments = remarks("Lidar degraded; the truck stopped on the shoulder at mile 212 of I-10 westbound "
                       "and waits for a remote operator", "x" * 70)
    texts = [t for s in segments for t in s.elements]
    assert all(len(t) <= 30 for t in texts) and len(segments) <= 10
    assert " ".join(texts).startswith("Lidar degraded the truck stopped on the shoulder")
    assert remarks("a *~> b") == remarks("a b")
    assert len(remarks("word " * 200)) == 10


# --- DDDMMSS -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("degrees", "latitude", "expected"), [
    (29.7594, True, ("0294534", "N")),
    (-95.3594, False, ("0952134", "W")),
    (Decimal("-33.8688"), True, ("0335208", "S")),  # Sydney: 33°52'07.68"
    (151.2093, False, ("1511233", "E")),  # 151°12'33.48"
    (29.999999, True, ("0300000", "N")),  # 59.9964" carries into the minute and the degree
    (0.00013, True, ("0000000", "N")),  # 0.468" rounds down
    (0.00014, True, ("0000001", "N")),  # 0.504" rounds up
    (-0.0001, False, ("0000000", "E")),  # rounds to zero: no west of nothing
    (-0.0002, False, ("0000001", "W")),
    (180, False, ("1800000", "E")),
    (-90, True, ("0900000", "S")),
])
def test_decimal_degrees_to_dddmmss(degrees, latitude: bool, expected: tuple[str, str]) -> None:
    assert to_dddmmss(degrees, latitude=latitude) == expected


def test_dddmmss_to_decimal_degrees_and_what_is_off_the_globe() -> None:
    assert from_dddmmss("0952134", "W") == pytest.approx(-(95 + 21 / 60 + 34 / 3600))
    assert from_dddmmss("0294534", "N") == pytest.approx(29 + 45 / 60 + 34 / 3600)
    assert from_dddmmss("0335208", "S") < 0 and from_dddmmss("1511233", "E") > 0
    for code, direction in [("0956034", "W"), ("0952160", "W"), ("0910000", "N"), ("1800001", "E"),
                            ("952134", "W"), ("0952134", "X"), ("09521a4", "W")]:
        with pytest.raises(StatusError):
            from_dddmmss(code, direction)
    for value, latitude in [(90.0001, True), (-180.5, False), (float("nan"), True), (float("inf"), False)]:
        with pytest.raises(StatusError):
            to_dddmmss(value, latitude=latitude)


@settings(max_examples=300, deadline=None)
@given(st.floats(-90, 90), st.floats(-180, 180))
def test_decimal_to_dddmmss_and_back_is_within_one_second_of_arc(latitude: float, longitude: float) -> None:
    for value, is_latitude in ((latitude, True), (longitude, False)):
        code, direction = to_dddmmss(value, latitude=is_latitude)
        assert len(code) == 7 and direction in (("N", "S") if is_latitude else ("E", "W"))
        assert abs(from_dddmmss(code, direction) - value) <= 0.5 / 3600 + 1e-9


# --- validation and round trips for random statuses and delimiters --------------------------------------------------

#: Punctuation the writer may put in data (free text, references): never a delimiter.
_DATA_PUNCTUATION = set(".,-/()#&")
_ZONES = ["America/Chicago", "America/Phoenix", "America/New_York", "America/Los_Angeles", "America/Anchorage",
          "Pacific/Honolulu", "UTC"]
_WORDS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-", min_size=1,
                 max_size=12)


@st.composite
def delimiters(draw) -> Delimiters:
    separators = sorted(SEPARATOR_CHOICES - _DATA_PUNCTUATION)
    element = draw(st.sampled_from(separators))
    component = draw(st.sampled_from([c for c in separators if c != element]))
    segment = draw(st.sampled_from(sorted(TERMINATOR_CHOICES - _DATA_PUNCTUATION - {element, component})))
    ends = ["", "\n"] if segment == "\r" else [""] if segment == "\n" else ["", "\n", "\r\n"]
    return Delimiters(element, component, segment, None, draw(st.sampled_from(ends)))


@st.composite
def events(draw) -> StatusEvent:
    time = draw(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31), timezones=st.just(UTC)))
    location = draw(st.one_of(
        st.none(),
        # MS1-01 is 2 to 30 characters once cleaned (a longer city is refused: the test by hand says so).
        st.builds(CityState, st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ .-", min_size=2, max_size=40)
                  .filter(lambda c: 2 <= len(" ".join(c.replace("*", " ").split())) <= 30),
                  st.sampled_from(["TX", "AZ", "CA", "NM"]), st.sampled_from(["", "US", "USA"])),
        st.builds(Coordinates, st.floats(-90, 90), st.floats(-180, 180)),
    ))
    references = tuple(draw(st.lists(st.builds(ShipmentReference, st.sampled_from(["BM", "PO", "SI", "CR"]),
                                               _WORDS), max_size=3)))
    equipment = draw(st.none() | st.builds(Equipment, st.sampled_from(["HMSH", "AURA"]),
                                           st.from_regex(r"[A-Z0-9]{1,10}", fullmatch=True)))
    stop = draw(st.none() | st.integers(1, 999))
    zone = draw(st.sampled_from(_ZONES))
    kind = draw(st.sampled_from(["X3", "AF", "X6", "X1", "D1", "CD", "ETA", "APPOINTMENT", *EXCEPTION_REASONS]))
    if kind == "ETA":
        return eta_event(time, zone=zone, stop_sequence=stop, location=location, equipment=equipment)
    if kind == "APPOINTMENT":
        return StatusEvent("", time, zone=zone, appointment=draw(st.sampled_from(["AA", "AB"])), location=location)
    if kind in EXCEPTION_REASONS:
        return exception_event(kind, time, description=draw(st.text(max_size=120)), zone=zone, location=location,
                               stop_sequence=stop, equipment=equipment)
    return StatusEvent(kind, time, zone=zone, location=location, stop_sequence=stop, equipment=equipment,
                       references=references)


@settings(max_examples=80, deadline=None)
@given(st.lists(events(), min_size=1, max_size=6), st.lists(st.builds(ShipmentReference, st.sampled_from(
    ["BM", "PO", "SI"]), _WORDS), max_size=4), _WORDS, st.sampled_from(["LT", "ZONE", "UT"]), delimiters())
def test_random_statuses_validate_clean_and_round_trip_byte_stable(event_list, references, shipment: str,
                                                                     time_code: str, d: Delimiters) -> None:
    status = ShipmentStatus(shipment, "01HZX5M1SSION", "HMSH", tuple(event_list), tuple(references))
    sent = interchange_of(status_214(status, control="0001", time_code=time_code),
                          status_214(status, control="0002"), delimiters=d)
    data = write(sent)
    (reading,) = read(data)
    assert reading.problems == ()
    for group in reading.groups:
        assert group.problems == ()
        for set_reading in group.sets:
            assert set_reading.problems == () and set_reading.segment_errors == (), set_reading.segment_errors
    assert reading.interchange == sent
    assert write(reading.interchange) == data
