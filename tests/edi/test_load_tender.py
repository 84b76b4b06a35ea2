"""204 → LoadTender: the samples field by field, problems at their segment and element, and a round trip over
generated tenders (random stops, references, windows and delimiters)."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.convert import Refusal, tender_request
from services.edi.domain import (
    DELIVERY_REASONS,
    PICKUP_REASONS,
    SCHEMA_204,
    SEPARATOR_CHOICES,
    TERMINATOR_CHOICES,
    Commodity,
    Contact,
    Delimiters,
    ElementSyntax,
    LoadTender,
    Loop,
    Moment,
    Money,
    Note,
    Party,
    Purpose,
    Quantity,
    Reference,
    Seg,
    Segment,
    SegmentError,
    SegmentSyntax,
    SetReading,
    SetSyntax,
    Stop,
    StopPlace,
    TransactionSet,
    Window,
    WindowKind,
    WriteRefused,
    acknowledge,
    read,
    read_load_tender,
    validate,
    write,
    write_load_tender,
    write_text,
)
from services.edi.domain import SetError as SetProblem
from services.runtime.lanes import load_lane_facts

from .builders import group, interchange, sample, set_204

_LANES = load_lane_facts({})

# --- helpers -----------------------------------------------------------------------------------------------------


def sets_of(name: str) -> list[TransactionSet]:
    return [s.transaction for r in read(sample(name)) for g in r.groups for s in g.sets]


def tender_of(name: str, index: int = 0) -> LoadTender:
    result = read_load_tender(sets_of(name)[index])
    assert isinstance(result, LoadTender), result
    return result


def problems(body: tuple[Segment, ...]) -> list[tuple[str, int, int, list[tuple[int, int, str]]]]:
    """(segment id, position, AK3 code, [(AK4 position, code, bad value)]) of a 204 body."""
    result = read_load_tender(TransactionSet("204", "0001", body))
    assert isinstance(result, list), result
    return [(e.segment_id, e.position, int(e.code), [(x.position, int(x.code), x.value) for x in e.elements])
            for e in result]


def g62(qualifier: str, day: str, time_qualifier: str = "", at: str = "", code: str = "") -> Segment:
    return Segment.of("G62", qualifier, day, time_qualifier, at, code)


def body(*stops: tuple[Segment, ...], purpose: str = "00", shipment: str = "SHIP-1",
         header: tuple[Segment, ...] = ()) -> tuple[Segment, ...]:
    """B2, B2A, ``header``, then each stop's segments (S5 at positions 4, ... when ``header`` is empty)."""
    out = [Segment.of("B2", "", "HMSH", "", shipment, "", "PP"), Segment.of("B2A", purpose, "LT"), *header]
    for segments in stops:
        out += segments
    return tuple(out)


def stop(number: int, reason: str, *inner: Segment, place: bool = True) -> tuple[Segment, ...]:
    where = (Segment.of("N1", "SH" if reason in PICKUP_REASONS else "CN", f"Place {number}", "93", f"LOC-{number}"),)
    return (Segment.of("S5", str(number), reason), *inner, *(where if place else ()))


# --- the samples, field by field -----------------------------------------------------------------------------------


def test_the_original_sample_maps_field_by_field() -> None:
    t = tender_of("204_original.edi")
    assert (t.shipment_id, t.scac, t.purpose, t.payment_method, t.application_type) == \
        ("PF-DAL-HOU-0315", "HMSH", Purpose.ORIGINAL, "PP", "LT")
    assert t.references == (Reference("BM", "BOL-778812"), Reference("PO", "PO-55120"))
    assert t.reference("BM") == "BOL-778812" and t.reference("XX") is None
    assert t.respond_by == Moment(date(2026, 3, 15), time(12, 0), "LT") and t.respond_by.local
    assert t.notes == (Note("Autonomous lane; trailer pre-loaded at door 4", "GEN"),)
    assert t.parties == (Party("BT", "Prairie Freight Payables", "93", "PF-BILLTO", address=("1200 Commerce St",),
                               city="Dallas", state="TX", postal_code="75202", country="US"),)
    assert t.party("BT") is t.parties[0] and t.party("SH") is None
    assert t.weight == Quantity(Decimal(42000), "", "G") and t.pieces is None
    assert t.offered_rate == Money(Decimal("1234.50"), "USD")
    assert t.hazardous is False
    pickup, delivery = t.stops
    assert (pickup.sequence, pickup.reason, pickup.is_pickup, pickup.position) == (1, "LD", True, 12)
    assert pickup.weight == Quantity(Decimal(42000), "L") and pickup.pieces == Quantity(Decimal(22), "PL")
    assert pickup.references == (Reference("SI", "SID-3391"),)
    assert pickup.window == Window(WindowKind.WINDOW, Moment(date(2026, 3, 16), time(8, 0), "LT"),
                                   Moment(date(2026, 3, 16), time(10, 0), "LT"))
    assert pickup.place == StopPlace("SH", "Prairie Dallas Cross-Dock", "93", "PF-DAL-01",
                                     address=("2100 Logistics Pkwy",), city="Dallas", state="TX",
                                     postal_code="75212", country="US",
                                     contacts=(Contact("SH", "Dock Office", "TE", "2145550100"),))
    assert pickup.place.facility == ("93", "PF-DAL-01")
    assert (pickup.place.position, pickup.place.postal_position) == (16, 18)
    assert pickup.commodities == (Commodity("Canned vegetables", "86700", "N", 1, Quantity(Decimal(42000), "L", "G"),
                                            Quantity(Decimal(22))),)
    assert t.commodities == pickup.commodities
    assert (delivery.sequence, delivery.reason, delivery.is_delivery, delivery.position) == (2, "UL", True, 22)
    assert delivery.window == Window(WindowKind.WINDOW, Moment(date(2026, 3, 17), time(6, 0), "LT"),
                                     Moment(date(2026, 3, 17), time(9, 0), "LT"))
    assert (delivery.place.name, delivery.place.postal_code, delivery.place.city) == \
        ("Prairie Houston DC", "77002", "Houston")
    assert t.pickups == (pickup,) and t.deliveries == (delivery,)
    assert t.total_weight == t.weight


def test_the_change_sample_moves_the_pickup_window() -> None:
    t = tender_of("204_change.edi")
    assert (t.purpose, t.shipment_id) == (Purpose.CHANGE, "PF-DAL-HOU-0315")
    assert t.respond_by == Moment(date(2026, 3, 15), time(16, 0), "LT")
    assert t.notes == (Note("Pickup moved two hours later", "GEN"),)
    assert t.stops[0].window == Window(WindowKind.WINDOW, Moment(date(2026, 3, 16), time(10, 0), "LT"),
                                       Moment(date(2026, 3, 16), time(12, 0), "LT"))
    assert t.stops[1].window.end == Moment(date(2026, 3, 17), time(11, 0), "LT")
    assert t.parties == () and t.offered_rate == Money(Decimal("1234.50"))


def test_the_cancel_sample_names_the_shipment_and_its_stops() -> None:
    t = tender_of("204_cancel.edi")
    assert (t.purpose, t.shipment_id, t.references, t.respond_by) == (Purpose.CANCEL, "PF-DAL-HOU-0315", (), None)
    assert t.notes == (Note("Load cancelled by shipper", "GEN"),)
    assert [(s.sequence, s.reason, s.place.id, s.window) for s in t.stops] == \
        [(1, "LD", "PF-DAL-01", None), (2, "UL", "PF-HOU-02", None)]
    assert (t.weight, t.offered_rate, t.total_weight) == (None, None, None)


def test_the_malformed_sample_maps_its_good_sets_and_reports_the_bad_one() -> None:
    first, bad, third = sets_of("204_malformed.edi")
    assert [s.shipment_id for s in (read_load_tender(first), read_load_tender(third))] == \
        ["PF-AUS-SAT-0318", "PF-AUS-SAT-0320"]
    errors = read_load_tender(bad)
    assert [(e.segment_id, e.position, int(e.code), [(x.position, int(x.code), x.value) for x in e.elements])
            for e in errors] == [("S5", 4, 8, [(2, 7, "ZZ")]), ("G62", 5, 8, [(2, 8, "20260231")])]


def test_money_is_decimal_implied_cents_both_ways() -> None:
    t = tender_of("204_original.edi")
    assert t.offered_rate.amount == Decimal("1234.50") and isinstance(t.offered_rate.amount, Decimal)
    (l3,) = [s for s in write_load_tender(t).segments if s.id == "L3"]
    assert l3.get(5) == "123450"
    cents = dataclasses.replace(t, offered_rate=Money(Decimal("0.05")))
    assert next(s for s in write_load_tender(cents).segments if s.id == "L3").get(5) == "5"
    with pytest.raises(WriteRefused):
        write_load_tender(dataclasses.replace(t, offered_rate=Money(Decimal("12.345"))))
    with pytest.raises(WriteRefused):
        write_load_tender(dataclasses.replace(t, offered_rate=Money(Decimal("12.34"), "CAD")))


def test_a_stop_without_s5_figures_takes_its_at8_and_totals_fall_back_to_the_pickups() -> None:
    at8 = Segment.of("AT8", "G", "K", "9000", "12")
    t = read_load_tender(TransactionSet("204", "0001", body(stop(1, "LD", at8), stop(2, "PL", at8),
                                                           stop(3, "UL"))))
    assert t.stops[0].weight == Quantity(Decimal(9000), "K", "G") and t.stops[0].pieces == Quantity(Decimal(12))
    assert t.total_weight == Quantity(Decimal(18000), "K") and t.total_pieces == Quantity(Decimal(24))
    mixed = read_load_tender(TransactionSet("204", "0001", body(stop(1, "LD", at8), stop(2, "PL"), stop(3, "UL"))))
    assert mixed.total_weight is None  # one pickup says nothing: no total is made up


def test_hazardous_material_detail_is_flagged_not_mapped() -> None:
    hazmat = (Segment.of("L5", "1", "Paint"), Segment.of("LH1", "EA", "4", "UN1263"))
    t = read_load_tender(TransactionSet("204", "0001", body(stop(1, "LD") + hazmat, stop(2, "UL"))))
    assert t.hazardous is True and t.stops[0].commodities == (Commodity("Paint", line=1),)
    with pytest.raises(WriteRefused):
        write_load_tender(t)


def test_a_lone_g62_is_open_ended_and_appointments_and_requested_dates_are_points() -> None:
    t = read_load_tender(TransactionSet("204", "0001", body(
        stop(1, "LD", g62("38", "20260316", "K", "1000", "LT")), stop(2, "PU", g62("70", "20260317", "X", "0700")),
        stop(3, "CU", g62("68", "20260318")))))
    open_end, appointment, requested = (s.window for s in t.stops)
    assert open_end == Window(WindowKind.WINDOW, None, Moment(date(2026, 3, 16), time(10, 0), "LT"))
    assert open_end.open_ended
    assert appointment == Window(WindowKind.APPOINTMENT, Moment(date(2026, 3, 17), time(7, 0)),
                                 Moment(date(2026, 3, 17), time(7, 0)))
    assert requested.start == requested.end == Moment(date(2026, 3, 18))
    assert requested.end.naive(end=True) == datetime(2026, 3, 18, 23, 59)
    assert appointment.start.naive() == datetime(2026, 3, 17, 7, 0)


# --- problems: what the schema cannot say --------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["00", "01", "04", "05"])
def test_no_shipment_id_is_b2_04_conditional_missing_whatever_the_purpose(purpose: str) -> None:
    assert problems(body(stop(1, "LD"), stop(2, "UL"), purpose=purpose, shipment="")) == \
        [("B2", 2, 8, [(4, 2, "")])]


def test_an_unknown_purpose_and_a_stop_without_reason_are_the_schemas_answer() -> None:
    assert problems(body(stop(1, "LD"), stop(2, "UL"), purpose="02")) == [("B2A", 3, 8, [(1, 7, "02")])]
    no_reason = (Segment.of("S5", "1"), *stop(1, "LD")[1:])
    assert problems(body(no_reason, stop(2, "UL"))) == [("S5", 4, 8, [(2, 1, "")])]


def test_no_pickup_or_no_delivery_points_at_the_first_or_last_stop_reason() -> None:
    assert problems(body(stop(1, "UL"), stop(2, "UL"))) == [("S5", 4, 8, [(2, 7, "UL")])]
    assert problems(body(stop(1, "LD"), stop(2, "PL"))) == [("S5", 6, 8, [(2, 7, "PL")])]
    assert problems(body(stop(1, "LD"))) == [("S5", 4, 8, [(2, 7, "LD")])]
    # a cancel names the shipment: its stops need not make a route
    assert isinstance(read_load_tender(TransactionSet("204", "0001", body(stop(1, "UL"), purpose="01"))),
                      LoadTender)


def test_stop_numbers_must_increase() -> None:
    assert problems(body(stop(2, "LD"), stop(2, "UL"))) == [("S5", 6, 8, [(1, 7, "2")])]
    assert problems(body(stop(1, "LD"), stop(3, "PU"), stop(2, "UL"))) == [("S5", 8, 8, [(1, 7, "2")])]


def test_a_window_ending_before_it_starts_points_at_the_end_date_or_time() -> None:
    earlier_day = stop(1, "LD", g62("37", "20260316", "I", "0800"), g62("38", "20260315", "K", "1000"))
    assert problems(body(earlier_day, stop(2, "UL"))) == [("G62", 6, 8, [(2, 8, "20260315")])]
    earlier_time = stop(2, "UL", g62("54", "20260317", "L", "0600", "LT"), g62("53", "20260317", "G", "0900", "LT"))
    assert problems(body(stop(1, "LD"), earlier_time)) == [("G62", 7, 8, [(4, 9, "0600")])]
    # different time codes cannot be compared without the zones: left to the resolver
    zones = stop(2, "UL", g62("53", "20260317", "G", "0900", "ET"), g62("54", "20260317", "L", "0800", "CT"))
    assert isinstance(read_load_tender(TransactionSet("204", "0001", body(stop(1, "LD"), zones))), LoadTender)


def test_g62_qualifiers_must_fit_the_stop() -> None:
    wrong_side = stop(1, "LD", g62("53", "20260316", "G", "0800"))
    assert problems(body(wrong_side, stop(2, "UL"))) == [("G62", 5, 8, [(1, 7, "53")])]
    unknown = stop(2, "UL", g62("02", "20260316"))
    assert problems(body(stop(1, "LD"), unknown)) == [("G62", 7, 8, [(1, 7, "02")])]
    wrong_time = stop(1, "LD", g62("37", "20260316", "K", "0800"))
    assert problems(body(wrong_time, stop(2, "UL"))) == [("G62", 5, 8, [(3, 7, "K")])]
    two_starts = stop(1, "LD", g62("37", "20260316", "I", "0800"), g62("37", "20260316", "I", "0900"))
    assert problems(body(two_starts, stop(2, "UL"))) == [("G62", 6, 2, [])]
    mixed = stop(1, "LD", g62("69", "20260316", "U", "0800"), g62("38", "20260316", "K", "0900"))
    assert problems(body(mixed, stop(2, "UL"))) == [("G62", 6, 2, [])]


def test_the_respond_by_date_is_g62_64_with_time_qualifier_1() -> None:
    assert problems(body(stop(1, "LD"), stop(2, "UL"), header=(g62("10", "20260315", "1", "1200"),))) == \
        [("G62", 4, 8, [(1, 7, "10")])]
    assert problems(body(stop(1, "LD"), stop(2, "UL"), header=(g62("64", "20260315", "Z", "1200"),))) == \
        [("G62", 4, 8, [(3, 7, "Z")])]
    t = read_load_tender(TransactionSet("204", "0001", body(stop(1, "LD"), stop(2, "UL"),
                                                           header=(g62("64", "20260315"),))))
    assert t.respond_by == Moment(date(2026, 3, 15))


def test_a_stop_that_cannot_be_placed_is_reported_not_guessed() -> None:
    unplaced = stop(2, "UL", g62("53", "20260317", "G", "0600"), place=False)
    assert problems(body(stop(1, "LD"), unplaced)) == [("N1", 8, 3, [])]  # where its N1 was due
    nameless = (Segment.of("S5", "2", "UL"), Segment.of("N1", "CN", "Somewhere"), Segment.of("N4", "Houston", "TX"))
    assert problems(body(stop(1, "LD"), nameless)) == [("N1", 7, 8, [(4, 2, "")])]
    by_zip = (*nameless[:2], Segment.of("N4", "Houston", "TX", "77002"))
    placed = read_load_tender(TransactionSet("204", "0001", body(stop(1, "LD"), by_zip)))
    assert placed.stops[1].place.facility is None and placed.stops[1].place.postal_code == "77002"
    assert placed.stops[1].place.postal_position == 8


def test_problems_on_one_segment_share_one_ak3_and_make_a_997_that_writes() -> None:
    bad = body(stop(1, "UL", g62("37", "20260316", "I", "0800")), stop(1, "UL"), shipment="")
    found = read_load_tender(TransactionSet("204", "0001", bad))
    assert [(e.segment_id, e.position, [(x.position, int(x.code)) for x in e.elements]) for e in found] == [
        ("B2", 2, [(4, 2)]), ("S5", 4, [(2, 7)]), ("G62", 5, [(1, 7)]), ("S5", 7, [(1, 7)])]
    assert all(isinstance(e, SegmentError) for e in found)
    reading = read(write(interchange(group(set_204(body=bad)))))[0].groups[0]
    assert reading.sets[0].accepted  # the schema is content: the service adds what the mapping found
    rejected = dataclasses.replace(reading, sets=(SetReading(
        reading.sets[0].transaction, (SetProblem(SetSyntax.SEGMENTS_IN_ERROR, "mapping"),), tuple(found)),))
    lines = [str(s) for s in acknowledge(rejected, control="0001").segments]
    assert lines == ["AK1*SM*77", "AK2*204*0001", "AK3*B2*2**8", "AK4*4*145*2", "AK3*S5*4*0300*8", "AK4*2*163*7*UL",
                     "AK3*G62*5*0300*8", "AK4*1*432*7*37", "AK3*S5*7*0300*8", "AK4*1*165*7*1", "AK5*R*5",
                     "AK9*R*1*1*0"]
    assert found[2].code is SegmentSyntax.ELEMENT_ERRORS and found[2].elements[0].code is ElementSyntax.INVALID_CODE


# --- generated 204s: read_load_tender recovers what was written ------------------------------------------------

#: What generated data holds: letters, digits and punctuation a delimiter is never drawn from.
_TEXT = "ABCDEFGHJKLMNOPRSTUWXYZ0123456789 -.,/&#'"


@st.composite
def delimiters(draw) -> Delimiters:
    """Any delimiters but the characters the data holds (``.`` and ``-`` are in numbers: no translator picks them)."""
    separators = sorted(SEPARATOR_CHOICES - set(_TEXT))
    element = draw(st.sampled_from(separators))
    component = draw(st.sampled_from([c for c in separators if c != element]))
    segment = draw(st.sampled_from(sorted(TERMINATOR_CHOICES - {element, component} - set(_TEXT))))
    ends = ["", "\n"] if segment == "\r" else [""] if segment == "\n" else ["", "\n", "\r\n"]
    return Delimiters(element, component, segment, None, draw(st.sampled_from(ends)))


@lru_cache
def text(low: int, high: int):
    return st.text(alphabet=_TEXT, min_size=low, max_size=high).map(lambda s: s.strip().ljust(low, "X"))


_LETTERS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=4)
_DATETIMES = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31))


@st.composite
def moments(draw, start: datetime | None = None, with_code: bool = True) -> Moment:
    at = start or draw(_DATETIMES)
    moment = at.replace(second=draw(st.sampled_from([0, at.second])), microsecond=0)
    if draw(st.booleans()):
        return Moment(moment.date())
    return Moment(moment.date(), moment.time(), draw(st.sampled_from(["", "LT", "CT"])) if with_code else "")


@st.composite
def windows(draw) -> Window | None:
    kind = draw(st.sampled_from([None, *WindowKind]))
    if kind is None:
        return None
    if kind is not WindowKind.WINDOW:
        at = draw(moments())
        return Window(kind, at, at)
    start = draw(_DATETIMES)
    end = start + draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)))
    code = draw(st.sampled_from(["", "LT"]))
    first, last = draw(moments(start, with_code=False)), draw(moments(end, with_code=False))
    first = dataclasses.replace(first, time_code=code if first.time else "")
    last = dataclasses.replace(last, time_code=code if last.time else "")
    if first.time and last.time and first.date == last.date and last.time < first.time:
        last = dataclasses.replace(last, time=first.time)  # whole seconds dropped from one side only
    shape = draw(st.sampled_from(["both", "start", "end"]))
    return Window(kind, None if shape == "end" else first, None if shape == "start" else last)


@lru_cache
def quantities(units: tuple[str, ...], qualifiers: tuple[str, ...] = ("",), *, whole: bool = False):
    """Weights and S5 quantities are ``R`` (decimals allowed); an AT8 lading quantity is ``N0``."""
    return st.builds(lambda n, d, u, q: Quantity(Decimal(n).scaleb(-d), u, q), st.integers(1, 99_999),
                     st.integers(0, 0 if whole else 1), st.sampled_from(units), st.sampled_from(qualifiers))


_REFERENCES = st.builds(Reference, st.sampled_from(["BM", "PO", "SI", "CR", "CO"]), text(1, 30),
                        st.one_of(st.just(""), text(1, 40)))
_NOTES = st.builds(Note, text(1, 60), st.sampled_from(["", "GEN", "LOI"]))
_CONTACTS = st.builds(Contact, st.sampled_from(["SH", "IC"]), text(1, 20), st.just("TE"),
                      st.integers(0, 9_999_999_999).map("{:010d}".format))
_COMMODITIES = st.builds(Commodity, text(1, 30), st.sampled_from(["", "86700"]), st.just(""),
                         st.none() | st.integers(1, 999), st.none() | quantities(("L", "K"), ("G", "N")),
                         st.none() | quantities(("",), whole=True)).map(
    lambda c: dataclasses.replace(c, code_qualifier="N" if c.code else ""))


@st.composite
def places(draw, role: str, cls=StopPlace, with_references=False) -> Party:
    has_id = draw(st.booleans())
    has_zip = not has_id or draw(st.booleans())
    return cls(
        role=role, name=draw(text(1, 30)), id_qualifier="93" if has_id else "", id=draw(text(2, 20)) if has_id else "",
        more_names=tuple(draw(st.lists(text(1, 20), max_size=2))),
        address=tuple(draw(st.lists(text(1, 30), max_size=4))),
        city=draw(text(2, 20)) if has_zip else "", state=draw(st.sampled_from(["TX", "AZ", "OK"])) if has_zip else "",
        postal_code=draw(st.integers(0, 99_999).map("{:05d}".format)) if has_zip else "",
        country=draw(st.sampled_from(["", "US"])) if has_zip else "",
        references=tuple(draw(st.lists(_REFERENCES, max_size=2))) if with_references else (),
        contacts=tuple(draw(st.lists(_CONTACTS, max_size=2))))


@st.composite
def stops(draw, sequence: int, reason: str) -> Stop:
    return Stop(
        sequence=sequence, reason=reason,
        place=draw(places("SH" if reason in PICKUP_REASONS else "CN")),
        window=draw(windows()),
        weight=draw(st.none() | quantities(("L", "K"), ("", "G"))),
        pieces=draw(st.none() | quantities(("PL", "CT")) | quantities(("",), whole=True)),
        references=tuple(draw(st.lists(_REFERENCES, max_size=2))),
        notes=tuple(draw(st.lists(_NOTES, max_size=2))),
        commodities=tuple(draw(st.lists(_COMMODITIES, max_size=2))))


@st.composite
def tenders(draw) -> LoadTender:
    """A 204's worth: 2 to 6 stops (loading first, unloading last), references, windows, parties, totals."""
    count = draw(st.integers(2, 6))
    reasons = [draw(st.sampled_from(sorted(PICKUP_REASONS)))]
    reasons += [draw(st.sampled_from(sorted(PICKUP_REASONS | DELIVERY_REASONS))) for _ in range(count - 2)]
    reasons += [draw(st.sampled_from(sorted(DELIVERY_REASONS)))]
    numbers, number = [], 0
    for _ in reasons:
        number += draw(st.integers(1, 3))
        numbers.append(number)
    return LoadTender(
        shipment_id=draw(text(1, 30)), purpose=draw(st.sampled_from(list(Purpose))),
        stops=tuple(draw(stops(n, r)) for n, r in zip(numbers, reasons, strict=True)),
        scac=draw(_LETTERS), payment_method=draw(st.sampled_from(["PP", "CC", "TP"])), application_type="LT",
        references=tuple(draw(st.lists(_REFERENCES, max_size=5))),
        respond_by=draw(st.none() | moments()),
        notes=tuple(draw(st.lists(_NOTES, max_size=3))),
        parties=tuple(draw(st.lists(st.sampled_from(["BT", "SH", "CN"]).flatmap(
            lambda role: places(role, Party, with_references=True)), max_size=3))),
        weight=draw(st.none() | quantities(("L", ""), ("G",))),
        pieces=draw(st.none() | st.integers(1, 9_999_999).map(lambda n: Quantity(Decimal(n)))),
        offered_rate=draw(st.none() | st.integers(0, 10**11).map(lambda c: Money(Decimal(c).scaleb(-2)))))


@settings(max_examples=60, deadline=None)
@given(delimiters(), tenders())
def test_read_load_tender_recovers_what_was_written(d: Delimiters, tender: LoadTender) -> None:
    sent = write_load_tender(tender, control="0042")
    (reading,) = read(write(interchange(group(sent), delimiters=d)))
    (set_reading,) = reading.groups[0].sets
    assert reading.problems == () and set_reading.accepted, set_reading.segment_errors
    assert read_load_tender(set_reading.transaction) == tender


# --- accepted with errors: what the reading does not use -------------------------------------------------------

_DAY = (date.today() + timedelta(days=3)).strftime("%Y%m%d")
_NEXT = (date.today() + timedelta(days=4)).strftime("%Y%m%d")

#: A 204 with every element of every segment the schema defines filled (hazardous detail aside, which the mapping
#: declines), each segment with the loop whose frame takes it: the reading's whole surface.
FULL_204: tuple[tuple[str, Segment], ...] = (
    ("", Segment.of("B2", "AB", "HMSH", "ABCDEF", "PF-FULL-1", "L", "PP", "A", "12", "N", "AB", "ABC", "PBC")),
    ("", Segment.of("B2A", "00", "LT")),
    ("", Segment.of("L11", "BOL-1", "BM", "Bill of lading")),
    ("", Segment.of("G62", "64", _DAY, "1", "1200", "LT")),
    ("", Segment.of("MS3", "HMSH", "B", "Dallas", "M", "TX")),
    ("", Segment.of("AT5", "HM", "AB", "Handle with care")),
    ("", Segment.of("PLD", "22", "Y", "L", "500")),
    ("", Segment.of("NTE", "GEN", "Trailer pre-loaded at door 4")),
    ("0100", Segment.of("N1", "BT", "Prairie Freight Payables", "93", "PF-BILLTO", "01", "SH")),
    ("0100", Segment.of("N2", "Accounts", "Payable")),
    ("0100", Segment.of("N3", "1200 Commerce St", "Suite 2")),
    ("0100", Segment.of("N4", "Dallas", "TX", "75202", "US", "CY", "Dallas")),
    ("0100", Segment.of("L11", "PF-BT", "IA", "Vendor")),
    ("0100", Segment.of("G61", "AC", "Jane Payer", "TE", "2145550100", "X12")),
    ("0200", Segment.of("N7", "", "TRL0042")),
    ("0200", Segment.of("M7", "SEAL1")),
    ("0300", Segment.of("S5", "1", "LD", "42000", "L", "22", "PL", "1500", "E", "First stop", "ABCDEF", "Y")),
    ("0300", Segment.of("L11", "SID-1", "SI", "Shipper id")),
    ("0300", Segment.of("G62", "37", _DAY, "I", "0800", "LT")),
    ("0300", Segment.of("G62", "38", _DAY, "K", "1000", "LT")),
    ("0300", Segment.of("AT8", "G", "L", "42000", "22", "22", "E", "1500")),
    ("0300", Segment.of("LAD", "PLT", "22")),
    ("0300", Segment.of("AT5", "HM", "AB", "Stop handling")),
    ("0300", Segment.of("PLD", "22", "Y", "L", "500")),
    ("0300", Segment.of("NTE", "LOI", "Dock 4")),
    ("0310", Segment.of("N1", "SH", "Prairie Dallas Cross-Dock", "93", "PF-DAL-01", "01", "SH")),
    ("0310", Segment.of("N2", "Cross-Dock", "North")),
    ("0310", Segment.of("N3", "2100 Logistics Pkwy", "Gate 3")),
    ("0310", Segment.of("N4", "Dallas", "TX", "75212", "US", "CY", "Dallas")),
    ("0310", Segment.of("G61", "SH", "Dock Office", "TE", "2145550100", "X7")),
    ("0320", Segment.of("L5", "1", "Canned vegetables", "86700", "N", "ABC", "Mark", "ZZ", "N", "12345", "Y")),
    ("0320", Segment.of("AT8", "G", "L", "42000", "22", "22", "E", "1500")),
    ("0350", Segment.of("OID", "REF1", "PO1")),
    ("0350", Segment.of("G62", "10", _DAY)),
    ("0350", Segment.of("LAD", "PLT", "22")),
    ("0360", Segment.of("L5", "1", "Order line", "86700", "N", "ABC", "Mark", "ZZ", "N", "12345", "Y")),
    ("0360", Segment.of("AT8", "G", "L", "42000", "22", "22", "E", "1500")),
    ("0300", Segment.of("S5", "2", "UL", "42000", "L", "22", "PL", "1500", "E", "Last stop", "ABCDEF", "Y")),
    ("0300", Segment.of("G62", "53", _NEXT, "G", "0600", "LT")),
    ("0300", Segment.of("G62", "54", _NEXT, "L", "1800", "LT")),
    ("0310", Segment.of("N1", "CN", "Prairie Houston DC", "93", "PF-HOU-02")),
    ("0310", Segment.of("N3", "800 Port Rd")),
    ("0310", Segment.of("N4", "Houston", "TX", "77002", "US")),
    ("", Segment.of("L3", "42000", "G", "2.5", "PM", "123450", "100", "100", "400", "1500", "E", "22", "L", "T1",
                    "1000", "PM")),
)


def full_body(body: tuple[tuple[str, Segment], ...] = FULL_204) -> tuple[Segment, ...]:
    return tuple(segment for _, segment in body)


def specs_204() -> dict[tuple[str, str], Seg]:
    """(loop id, segment id) -> the 204 schema's segment."""
    found: dict[tuple[str, str], Seg] = {}

    def walk(children, loop_id: str) -> None:
        for child in children:
            if isinstance(child, Loop):
                walk(child.children, child.id)
            else:
                found[(loop_id, child.id)] = child
    walk(SCHEMA_204.body, "")
    return found


def element_used(loop_id: str, segment: Segment, position: int) -> bool:
    """What the schema declares (the flag under test)."""
    spec = specs_204()[(loop_id, segment.id)]
    if spec.elements is None:
        return False
    return spec.used and spec.elements[position - 1].used


def corruptions(loop_id: str, segment: Segment, position: int) -> list[str]:
    """Values that make the element wrong by the schema: too long, too short, a code not in its list, a bad date or
    time, a letter in a number, missing when mandatory."""
    spec = specs_204()[(loop_id, segment.id)]
    if spec.elements is None:
        return ["bad\x7f"]  # a character outside X12's set
    element = spec.elements[position - 1]
    value = segment.get(position)
    filler = "9" if element.type[0] == "N" or element.type in ("R", "DT", "TM") else "X"
    length = sum(c.isdigit() for c in value) if filler == "9" else len(value)  # a number's length is its digits
    out = [value + filler * (element.max - length + 1)]
    if element.min > 1:
        out.append(value[:element.min - 1] or filler)
    if element.codes:
        out.append("QQ"[:element.max])
    if element.type == "DT":
        out.append(value[:4] + "1399")
    if element.type == "TM":
        out.append("2599")
    if element.type[0] == "N" or element.type == "R":
        out.append(value[:-1] + "A")
    if element.mandatory:
        out.append("")
    return out


def with_value(body: tuple[Segment, ...], index: int, position: int, value: str) -> tuple[Segment, ...]:
    segment = body[index]
    values = list(segment.elements)
    values[position - 1] = value
    return (*body[:index], Segment.of(segment.id, *values), *body[index + 1:])


def received(body: tuple[Segment, ...]) -> SetReading:
    """The set as the service reads it from a file (the envelope reader's AK5 status), 204s read as the inbound use
    case does: a content error of the reading rejects it."""
    swaps: dict[str, str] = {}  # what the writer refuses (a character outside X12's set) is put in afterwards
    safe = []
    for segment in body:
        values = []
        for value in segment.elements:
            if isinstance(value, str) and any(c < " " or c > "~" for c in value):
                swaps[f"QZ{len(swaps)}QZ"] = value
                value = f"QZ{len(swaps) - 1}QZ"
            values.append(value)
        safe.append(Segment.of(segment.id, *values))
    text = write_text(interchange(group(set_204(body=tuple(safe)))))
    for token, value in swaps.items():
        text = text.replace(token, value)
    (set_reading,) = read(text)[0].groups[0].sets
    return set_reading


def test_the_full_204_reads_and_maps() -> None:
    body = full_body()
    assert validate(SCHEMA_204, body) == ()
    tender = read_load_tender(set_204(body=body))
    assert isinstance(tender, LoadTender) and not tender.hazardous
    assert not isinstance(tender_request(tender, _LANES, request_id="t"), Refusal)


def test_any_corruption_of_an_unused_element_is_noted_and_of_a_used_one_rejects() -> None:
    """Every element of the full 204, each corruption: one marked unused leaves the set accepted with errors (AK5
    E) and the tender read and its request unchanged (so the mark is true of the reading); one marked used rejects
    the set (AK5 R), a too-long NTE text (kept cut) aside."""
    body = full_body()
    clean = read_load_tender(set_204(body=body))
    assert isinstance(clean, LoadTender)
    clean_request = tender_request(clean, _LANES, request_id="t")
    wrong: list[str] = []
    tried = 0
    for index, (loop_id, segment) in enumerate(FULL_204):
        for position in range(1, len(segment.elements) + 1):
            if not segment.get(position):
                continue
            used = element_used(loop_id, segment, position)
            for value in corruptions(loop_id, segment, position):
                tried += 1
                corrupted = with_value(body, index, position, value)
                name = f"{loop_id}/{segment.id}-{position:02d}={value!r}"
                status = received(corrupted).status
                tender = read_load_tender(set_204(body=corrupted)) if status != "R" else None
                if used and segment.id == "NTE" and position == 2 and len(value) > 80:
                    if status != "E" or not isinstance(tender, LoadTender):
                        wrong.append(f"{name}: a long note is cut, not {status}")
                elif used and status != "R":
                    wrong.append(f"{name}: used, but {status}")
                elif not used and status != "E":
                    wrong.append(f"{name}: not used, but {status}")
                elif not used and (tender != clean
                                   or tender_request(tender, _LANES, request_id="t") != clean_request):
                    wrong.append(f"{name}: marked unused, yet the tender read changed")
    assert tried > 250
    assert not wrong, wrong


def test_a_too_long_note_is_kept_cut_to_80_characters_and_noted() -> None:
    body = full_body()
    index = next(k for k, s in enumerate(body) if s.id == "NTE")
    text = "Autonomous lane. " * 6
    corrupted = with_value(body, index, 2, text)
    set_reading = received(corrupted)
    assert set_reading.status == "E"
    (noted,) = set_reading.noted
    assert (noted.segment_id, noted.position, [(e.position, e.code) for e in noted.elements]) == (
        "NTE", index + 2, [(2, ElementSyntax.TOO_LONG)])
    tender = read_load_tender(set_204(body=corrupted))
    assert isinstance(tender, LoadTender) and tender.notes[0].text == text[:80]


#: Segment ids no 204 defines (well-formed: two or three capitals and digits).
_FOREIGN = st.from_regex(r"[A-Z][A-Z0-9]{1,2}", fullmatch=True).filter(lambda i: i not in SCHEMA_204.segment_ids)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(FULL_204) - 1), _FOREIGN,
       st.lists(st.from_regex(r"[A-Z0-9 ]{1,12}", fullmatch=True), max_size=4))
def test_a_stray_segment_is_noted_only_in_a_loop_the_reading_skips(after: int, segment_id: str,
                                                                  values: list[str]) -> None:
    """A segment the 204 does not define, after any segment of the full 204: inside the equipment (0200) or order
    detail (0350/0360) loops, which the reading skips, it is noted (AK5 E) and the tender is the same; anywhere
    else it rejects the set."""
    body = full_body()
    stray = Segment.of(segment_id, *values)
    corrupted = (*body[:after + 1], stray, *body[after + 1:])
    status = received(corrupted).status
    if FULL_204[after][0] in ("0200", "0350", "0360"):
        assert status == "E"
        assert read_load_tender(set_204(body=corrupted)) == read_load_tender(set_204(body=body))
    else:
        assert status == "R"
