"""A 204 load tender as plain Python: what a 204 carries that Haulmesh acts on, read from a validated set.

:func:`read_load_tender` maps a 204 :class:`TransactionSet` to a :class:`LoadTender`, or answers with the AK3/AK4
errors (:class:`SegmentError` carrying :class:`ElementError`\\ s, as the schema validator gives them) of what the
schema cannot say. Nothing is guessed:

* the set is validated against the 204 schema first; its errors are returned as they are, unless every one is
  confined to what this reading does not use (:meth:`SetSchema.tolerates`: the schema marks, beside each element,
  whether it is read here): then the tender is read all the same (the 997 notes them, AK5 ``E``), a too-long NTE
  cut to its 80 characters. Tests hold the schema's marks to this reading: any element marked unused may be
  corrupted without changing the tender read;
* B2-04 (the shipment id, the join key of every 990, 214 and 210) is required whatever the purpose (AK4 code 2);
* the header G62 is the must-respond-by deadline: ``G62*64`` with time qualifier ``1``;
* stops keep the file's order and their S5-01 sequence numbers must increase (AK4 S5-01 code 7);
* a stop's G62s (at most two in 004010: one window) read by this table, a qualifier of the other side of the load
  or unknown being AK4 G62-01 code 7, a time qualifier that does not match its date qualifier AK4 G62-03 code 7,
  and a second G62 that does not complete the first an unexpected segment (AK3 code 2):

  ========  =============  ==========  =====================================
  G62-01    G62-03         stop        meaning
  ========  =============  ==========  =====================================
  37 / 38   I / K          pickup      window start / end
  53 / 54   G / L          delivery    window start / end
  69 / 70   U / X          pick / del  appointment (a point: start == end)
  10 / 68   any            pick / del  requested date (a point)
  ========  =============  ==========  =====================================

  a lone window G62 is open-ended (the other bound ``None``); an end before its start is AK4 G62-02 code 8 (an
  earlier date) or G62-04 code 9 (an earlier time the same day), when both bounds carry the same G62-05 code;
* times carry no zone: a :class:`Moment` is the stop's local date and time as written, with G62-05 as given
  (``LT``, local, or empty; anything else is the partner's zone code), for the resolver to place in the stop's
  time zone;
* unless the tender cancels (B2A-01 ``01``), the first stop loads and the last unloads (AK4 S5-02 code 7), and each
  stop can be placed: its N1 loop is present (else AK3 N1 code 3) with an N1-04 id code or an N4-03 postal code
  (else AK4 N1-04 code 2). Placing it (a facility registry, else the ZIP's centroid) is the service's step.

Weights and quantities are Decimal as written (``R`` elements) with their unit codes (``L`` pounds, ``K``
kilograms; empty when the 204 gives none); money is Decimal from the L3-05 ``N2`` implied cents.

:func:`write_load_tender` writes a model back as a 204 (what a simulated TMS sends; the tests' round trip).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import StrEnum

from ._codes import ElementSyntax, SegmentSyntax
from ._envelope import TransactionSet
from ._errors import ElementError, SegmentError, WriteRefused
from ._schema import SetSchema, validate
from ._sets import SCHEMA_204, schema_for
from ._tokens import Segment
from ._values import format_date, format_time, from_implied, parse_date, parse_time, to_implied

__all__ = [
    "DELIVERY_REASONS",
    "PICKUP_REASONS",
    "Commodity",
    "Contact",
    "LoadTender",
    "Moment",
    "Money",
    "Note",
    "Party",
    "Purpose",
    "Quantity",
    "Reference",
    "Stop",
    "StopPlace",
    "Window",
    "WindowKind",
    "read_load_tender",
    "write_load_tender",
]

#: S5-02 codes of a stop that loads (LD load, CL complete load, PL part load) and of one that unloads.
PICKUP_REASONS = frozenset({"LD", "CL", "PL"})
DELIVERY_REASONS = frozenset({"UL", "CU", "PU"})


class Purpose(StrEnum):
    """B2A-01: what the tender does."""

    ORIGINAL = "00"
    CANCEL = "01"
    CHANGE = "04"
    REPLACE = "05"


class WindowKind(StrEnum):
    WINDOW = "window"  # 37/38, 53/54: start and end, either may be open
    APPOINTMENT = "appointment"  # 69, 70: a point
    REQUESTED = "requested"  # 10, 68: a point (often a date only)


@dataclass(frozen=True)
class Reference:
    """An L11 (or echoed N9): qualifier (``BM`` bill of lading, ``PO``, ``SI`` shipper's id, ...), value, text."""

    qualifier: str
    value: str
    description: str = ""


@dataclass(frozen=True)
class Note:
    """An NTE: its reference code (``GEN``, ``LOI``, ...; may be empty) and text."""

    text: str
    code: str = ""


@dataclass(frozen=True)
class Quantity:
    """A number as written (Decimal) with its unit code and, for weights, its qualifier (``G`` gross, ``N``)."""

    value: Decimal
    unit: str = ""
    qualifier: str = ""


@dataclass(frozen=True)
class Money:
    """An amount (Decimal, never float) and its currency (a 4010 204 names none: USD)."""

    amount: Decimal
    currency: str = "USD"


@dataclass(frozen=True)
class Moment:
    """A G62's local date, its time (``None``: a date only) and G62-05 as given (``LT`` or empty: stop-local)."""

    date: date
    time: time | None = None
    time_code: str = ""

    @property
    def local(self) -> bool:
        """Whether the time is the stop's local time (the resolver supplies the zone)."""
        return self.time_code in ("", "LT")

    def naive(self, *, end: bool = False) -> datetime:
        """As a zone-less datetime; a date only is the day's start (or, for an ``end``, its last minute)."""
        if self.time is not None:
            return datetime.combine(self.date, self.time)
        return datetime.combine(self.date, time(23, 59) if end else time(0, 0))


@dataclass(frozen=True)
class Window:
    """When a stop is to be served: a window (either bound may be open) or a point (start == end)."""

    kind: WindowKind
    start: Moment | None = None
    end: Moment | None = None

    @property
    def open_ended(self) -> bool:
        return self.start is None or self.end is None


@dataclass(frozen=True)
class Contact:
    """A G61: function code, name, communication qualifier and number."""

    function: str
    name: str
    number_qualifier: str = ""
    number: str = ""


@dataclass(frozen=True)
class Party:
    """An N1 loop: entity role (``SH`` shipper, ``CN`` consignee, ``BT`` bill-to, ...), name, N1-03/04 id,
    N2 names, N3 street lines, N4 city, state, postal code and country, L11 references, G61 contacts."""

    role: str
    name: str = ""
    id_qualifier: str = ""
    id: str = ""
    more_names: tuple[str, ...] = ()
    address: tuple[str, ...] = ()
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    references: tuple[Reference, ...] = ()
    contacts: tuple[Contact, ...] = ()
    #: Where its N1 and N4 are in the set (ST is 1; 0 when not read from a set): for an AK3 about the place.
    position: int = field(default=0, compare=False)
    postal_position: int = field(default=0, compare=False)


@dataclass(frozen=True)
class StopPlace(Party):
    """Where a stop is, as the 204 says it; the service resolves it (facility registry by id, else ZIP centroid)."""

    @property
    def facility(self) -> tuple[str, str] | None:
        """(N1-03 qualifier, N1-04 id) to look up in the partner's facility registry, if given."""
        return (self.id_qualifier, self.id) if self.id else None


@dataclass(frozen=True)
class Commodity:
    """An L5 (and the AT8 of its loop): lading line, description, commodity code and its qualifier, weight, pieces."""

    description: str = ""
    code: str = ""
    code_qualifier: str = ""
    line: int | None = None
    weight: Quantity | None = None
    pieces: Quantity | None = None


@dataclass(frozen=True)
class Stop:
    """An S5 loop: sequence, reason (S5-02), weight and pieces (S5, else the stop's AT8), its window, its place."""

    sequence: int
    reason: str
    place: StopPlace | None = None
    window: Window | None = None
    weight: Quantity | None = None
    pieces: Quantity | None = None
    references: tuple[Reference, ...] = ()
    notes: tuple[Note, ...] = ()
    commodities: tuple[Commodity, ...] = ()
    #: Where its S5 is in the set (ST is 1; 0 when not read from a set).
    position: int = field(default=0, compare=False)

    @property
    def is_pickup(self) -> bool:
        return self.reason in PICKUP_REASONS

    @property
    def is_delivery(self) -> bool:
        return self.reason in DELIVERY_REASONS


@dataclass(frozen=True)
class LoadTender:
    """What a 204 tenders. ``weight``, ``pieces`` and ``offered_rate`` are the L3's as written; see
    :attr:`total_weight` and :attr:`total_pieces` for the figures with the stops as fallback."""

    shipment_id: str
    purpose: Purpose
    stops: tuple[Stop, ...]
    scac: str = ""
    payment_method: str = ""
    application_type: str = ""
    references: tuple[Reference, ...] = ()
    respond_by: Moment | None = None
    notes: tuple[Note, ...] = ()
    parties: tuple[Party, ...] = ()
    weight: Quantity | None = None
    pieces: Quantity | None = None
    offered_rate: Money | None = None
    #: Whether the 204 holds hazardous-material detail (LH1, LH6); the detail itself is not mapped.
    hazardous: bool = False

    @property
    def pickups(self) -> tuple[Stop, ...]:
        return tuple(s for s in self.stops if s.is_pickup)

    @property
    def deliveries(self) -> tuple[Stop, ...]:
        return tuple(s for s in self.stops if s.is_delivery)

    def party(self, role: str) -> Party | None:
        """The first header party of ``role`` (``BT`` bill-to, ``SH`` shipper, ``CN`` consignee), if any."""
        return next((p for p in self.parties if p.role == role), None)

    def reference(self, qualifier: str) -> str | None:
        """The first header reference of ``qualifier`` (``BM`` bill of lading, ``PO``, ...), if any."""
        return next((r.value for r in self.references if r.qualifier == qualifier), None)

    @property
    def commodities(self) -> tuple[Commodity, ...]:
        return tuple(c for s in self.stops for c in s.commodities)

    @property
    def total_weight(self) -> Quantity | None:
        """The L3 weight, else the pickups' weights added when every pickup has one in one unit."""
        return self.weight or _total(s.weight for s in self.pickups)

    @property
    def total_pieces(self) -> Quantity | None:
        """The L3 lading quantity, else the pickups' piece counts added when every pickup has one in one unit."""
        return self.pieces or _total(s.pieces for s in self.pickups)


def _total(quantities: Iterable[Quantity | None]) -> Quantity | None:
    found = list(quantities)
    if not found or any(q is None for q in found) or len({q.unit for q in found if q}) != 1:
        return None
    first = found[0]
    assert first is not None
    return Quantity(sum((q.value for q in found if q), Decimal(0)), first.unit)


# --- reading ---------------------------------------------------------------------------------------------------

#: G62-01 → (side: "P" pickup / "D" delivery, kind, bound: "start" / "end" / "point", expected G62-03 or None).
_STOP_DATES: dict[str, tuple[str, WindowKind, str, str | None]] = {
    "37": ("P", WindowKind.WINDOW, "start", "I"),
    "38": ("P", WindowKind.WINDOW, "end", "K"),
    "53": ("D", WindowKind.WINDOW, "start", "G"),
    "54": ("D", WindowKind.WINDOW, "end", "L"),
    "69": ("P", WindowKind.APPOINTMENT, "point", "U"),
    "70": ("D", WindowKind.APPOINTMENT, "point", "X"),
    "10": ("P", WindowKind.REQUESTED, "point", None),
    "68": ("D", WindowKind.REQUESTED, "point", None),
}
_RESPOND_BY = ("64", "1")
_HAZARDOUS = frozenset({"LH1", "LH6"})


class _Problems:
    """AK3/AK4 errors, one AK3 per segment and code, element errors gathered under their segment."""

    def __init__(self) -> None:
        self.errors: list[SegmentError] = []

    def element(self, segment_id: str, position: int, loop_id: str, error: ElementError) -> None:
        for k, existing in enumerate(self.errors):
            if existing.position == position and existing.code is SegmentSyntax.ELEMENT_ERRORS:
                self.errors[k] = SegmentError(segment_id, position, existing.code, loop_id=loop_id,
                                              elements=(*existing.elements, error))
                return
        self.errors.append(SegmentError(segment_id, position, SegmentSyntax.ELEMENT_ERRORS, loop_id=loop_id,
                                        elements=(error,)))

    def segment(self, segment_id: str, position: int, code: SegmentSyntax, loop_id: str) -> None:
        self.errors.append(SegmentError(segment_id, position, code, loop_id=loop_id))

    def result(self) -> list[SegmentError]:
        return sorted(self.errors, key=lambda e: e.position)


@dataclass
class _Located:
    segment: Segment
    position: int


@dataclass
class _StopParts:
    s5: _Located
    own: list[_Located] = field(default_factory=list)  # L11, G62, AT8, NTE of the stop
    place: list[_Located] = field(default_factory=list)  # its 0310 loop
    commodities: list[list[_Located]] = field(default_factory=list)  # its 0320 loops
    place_expected_at: int = 0


def read_load_tender(transaction: TransactionSet, *, schema: SetSchema = SCHEMA_204, version: str | None = None) \
        -> LoadTender | list[SegmentError]:
    """The tender a 204 carries, or the AK3/AK4 errors that stop it from being one (see the module's rules).
    ``version`` (the group's GS08) picks the schema: a 005010 204 reads to the same :class:`LoadTender`."""
    if version is not None:
        schema = schema_for("204", version)
    errors = validate(schema, transaction.segments)
    if not all(schema.tolerates(e) for e in errors):
        return list(errors)
    problems = _Problems()
    located = [_Located(s, k + 2) for k, s in enumerate(schema.cut(transaction.segments, errors))]
    header, parties, stops, totals = _split(located)
    b2 = next(x for x in header if x.segment.id == "B2")
    b2a = next(x for x in header if x.segment.id == "B2A")
    shipment_id = b2.segment.get(4)
    if not shipment_id:
        problems.element("B2", b2.position, "", ElementError(4, ElementSyntax.CONDITIONAL_MISSING, reference="145"))
    purpose = Purpose(b2a.segment.get(1))
    respond_by = None
    for item in header:
        if item.segment.id == "G62":
            respond_by = _respond_by(item, problems)
    tender_stops = tuple(_stop(parts, problems) for parts in stops)
    _check_sequence(stops, problems)
    if purpose is not Purpose.CANCEL:
        _check_route(stops, tender_stops, problems)
    weight = pieces = rate = None
    if totals is not None:
        l3 = totals.segment
        if l3.get(1):
            weight = Quantity(Decimal(l3.get(1)), l3.get(12), l3.get(2))
        if l3.get(11):
            pieces = Quantity(Decimal(l3.get(11)))
        if l3.get(5):
            rate = Money(from_implied(l3.get(5)))
    if problems.errors:
        return problems.result()
    return LoadTender(
        shipment_id=shipment_id, purpose=purpose, stops=tender_stops, scac=b2.segment.get(2),
        payment_method=b2.segment.get(6), application_type=b2a.segment.get(2),
        references=tuple(_reference(x.segment) for x in header if x.segment.id == "L11"),
        respond_by=respond_by,
        notes=tuple(Note(x.segment.get(2), x.segment.get(1)) for x in header if x.segment.id == "NTE"),
        parties=tuple(_party(Party, group) for group in parties),
        weight=weight, pieces=pieces, offered_rate=rate,
        hazardous=any(x.segment.id in _HAZARDOUS for x in located))


def _split(located: list[_Located]) -> tuple[list[_Located], list[list[_Located]], list[_StopParts],
                                              _Located | None]:
    """The set's parts by the 204's table (the set is valid: order and loops are as the schema says)."""
    header: list[_Located] = []
    parties: list[list[_Located]] = []
    stops: list[_StopParts] = []
    totals = None
    zone = "header"
    for item in located:
        kind = item.segment.id
        if kind == "L3":
            totals, zone = item, "end"
        elif kind == "S5":
            stops.append(_StopParts(item))
            zone = "stop"
        elif zone in ("header", "party") and kind == "N1":
            parties.append([item])
            zone = "party"
        elif zone in ("header", "party") and kind in ("N7", "N7A", "N7B", "MEA", "M7"):
            zone = "equipment"
        elif zone == "header":
            header.append(item)
        elif zone == "party":
            parties[-1].append(item)
        elif zone in ("stop", "place", "commodity", "order"):
            stop = stops[-1]
            if kind == "N1" and zone == "stop":
                stop.place.append(item)
                zone = "place"
            elif kind == "L5" and zone != "order":
                stop.commodities.append([item])
                zone = "commodity"
            elif kind == "OID":
                zone = "order"
            elif zone == "stop":
                stop.own.append(item)
            elif zone == "place":
                stop.place.append(item)
            elif zone == "commodity":
                stop.commodities[-1].append(item)
        if zone == "stop":  # where an absent N1 of the current stop was due: after the stop's own segments
            stops[-1].place_expected_at = item.position + 1
    return header, parties, stops, totals


def _reference(segment: Segment) -> Reference:
    return Reference(segment.get(2), segment.get(1), segment.get(3))


def _moment(segment: Segment) -> Moment:
    return Moment(parse_date(segment.get(2)), parse_time(segment.get(4)) if segment.get(4) else None,
                  segment.get(5))


def _respond_by(item: _Located, problems: _Problems) -> Moment | None:
    g62 = item.segment
    ok = True
    if g62.get(1) != _RESPOND_BY[0]:
        problems.element("G62", item.position, "", ElementError(
            1, ElementSyntax.INVALID_CODE if g62.get(1) else ElementSyntax.CONDITIONAL_MISSING, reference="432",
            value=g62.get(1)))
        ok = False
    if g62.get(3) and g62.get(3) != _RESPOND_BY[1]:
        problems.element("G62", item.position, "", ElementError(3, ElementSyntax.INVALID_CODE, reference="176",
                                                                value=g62.get(3)))
        ok = False
    return _moment(g62) if ok else None


def _stop(parts: _StopParts, problems: _Problems) -> Stop:
    s5 = parts.s5.segment
    weight = Quantity(Decimal(s5.get(3)), s5.get(4)) if s5.get(3) else None
    pieces = Quantity(Decimal(s5.get(5)), s5.get(6)) if s5.get(5) else None
    for item in parts.own:
        if item.segment.id == "AT8":
            at8 = item.segment
            if weight is None and at8.get(3):
                weight = Quantity(Decimal(at8.get(3)), at8.get(2), at8.get(1))
            if pieces is None and at8.get(4):
                pieces = Quantity(Decimal(at8.get(4)))
    place = None
    if parts.place:
        place = _party(StopPlace, parts.place)
    return Stop(
        sequence=int(s5.get(1)), reason=s5.get(2), place=place,
        window=_window(parts, problems), weight=weight, pieces=pieces,
        references=tuple(_reference(x.segment) for x in parts.own if x.segment.id == "L11"),
        notes=tuple(Note(x.segment.get(2), x.segment.get(1)) for x in parts.own if x.segment.id == "NTE"),
        commodities=tuple(_commodity(loop) for loop in parts.commodities),
        position=parts.s5.position)


def _window(parts: _StopParts, problems: _Problems) -> Window | None:
    reason = parts.s5.segment.get(2)
    side = "P" if reason in PICKUP_REASONS else "D" if reason in DELIVERY_REASONS else ""
    window: Window | None = None
    first: tuple[_Located, str] | None = None  # the G62 read, and its bound
    for item in (x for x in parts.own if x.segment.id == "G62"):
        g62 = item.segment
        role = _STOP_DATES.get(g62.get(1))
        if role is None or role[0] != side:
            code = ElementSyntax.INVALID_CODE if g62.get(1) else ElementSyntax.CONDITIONAL_MISSING
            problems.element("G62", item.position, "0300", ElementError(1, code, reference="432", value=g62.get(1)))
            continue
        _, kind, bound, expected = role
        if g62.get(3) and expected is not None and g62.get(3) != expected:
            problems.element("G62", item.position, "0300", ElementError(3, ElementSyntax.INVALID_CODE,
                                                                        reference="176", value=g62.get(3)))
            continue
        moment = _moment(g62)
        if window is None:
            window = Window(kind, moment, moment) if bound == "point" else \
                Window(kind, moment if bound == "start" else None, moment if bound == "end" else None)
            first = (item, bound)
            continue
        assert first is not None
        if bound == "point" or kind is not window.kind or bound == first[1]:
            problems.segment("G62", item.position, SegmentSyntax.UNEXPECTED, "0300")
            continue
        start, end = (window.start, moment) if bound == "end" else (moment, window.end)
        end_item = item if bound == "end" else first[0]
        assert start is not None and end is not None
        if start.time_code == end.time_code:
            if end.date < start.date:
                problems.element("G62", end_item.position, "0300", ElementError(
                    2, ElementSyntax.INVALID_DATE, reference="373", value=end_item.segment.get(2)))
            elif end.date == start.date and start.time and end.time and end.time < start.time:
                problems.element("G62", end_item.position, "0300", ElementError(
                    4, ElementSyntax.INVALID_TIME, reference="337", value=end_item.segment.get(4)))
        window = Window(kind, start, end)
    return window


def _party(cls: type[Party], items: Sequence[_Located]) -> Party:
    n1 = items[0].segment
    names: list[str] = []
    address: list[str] = []
    references: list[Reference] = []
    contacts: list[Contact] = []
    n4: _Located | None = None
    for item in items[1:]:
        segment = item.segment
        if segment.id == "N2":
            names += [segment.get(k) for k in (1, 2) if segment.get(k)]
        elif segment.id == "N3":
            address += [segment.get(k) for k in (1, 2) if segment.get(k)]
        elif segment.id == "N4":
            n4 = item
        elif segment.id == "L11":
            references.append(_reference(segment))
        elif segment.id == "G61":
            contacts.append(Contact(segment.get(1), segment.get(2), segment.get(3), segment.get(4)))
    four = n4.segment if n4 else Segment("N4")
    return cls(role=n1.get(1), name=n1.get(2), id_qualifier=n1.get(3), id=n1.get(4), more_names=tuple(names),
               address=tuple(address), city=four.get(1), state=four.get(2), postal_code=four.get(3),
               country=four.get(4), references=tuple(references), contacts=tuple(contacts),
               position=items[0].position, postal_position=n4.position if n4 else 0)


def _commodity(items: Sequence[_Located]) -> Commodity:
    l5 = items[0].segment
    weight = pieces = None
    for item in items[1:]:
        if item.segment.id == "AT8":
            at8 = item.segment
            if at8.get(3):
                weight = Quantity(Decimal(at8.get(3)), at8.get(2), at8.get(1))
            if at8.get(4):
                pieces = Quantity(Decimal(at8.get(4)))
    return Commodity(l5.get(2), l5.get(3), l5.get(4), int(l5.get(1)) if l5.get(1) else None, weight, pieces)


def _check_sequence(stops: list[_StopParts], problems: _Problems) -> None:
    previous = 0
    for parts in stops:
        number = int(parts.s5.segment.get(1))
        if number <= previous:
            problems.element("S5", parts.s5.position, "0300", ElementError(
                1, ElementSyntax.INVALID_CODE, reference="165", value=parts.s5.segment.get(1)))
        previous = max(previous, number)


def _check_route(stops: list[_StopParts], tender_stops: tuple[Stop, ...], problems: _Problems) -> None:
    first, last = tender_stops[0], tender_stops[-1]
    if not first.is_pickup:
        problems.element("S5", first.position, "0300", ElementError(2, ElementSyntax.INVALID_CODE, reference="163",
                                                                    value=first.reason))
    if not last.is_delivery:
        problems.element("S5", last.position, "0300", ElementError(2, ElementSyntax.INVALID_CODE, reference="163",
                                                                   value=last.reason))
    for parts, stop in zip(stops, tender_stops, strict=True):
        if stop.place is None:
            problems.segment("N1", parts.place_expected_at, SegmentSyntax.MANDATORY_MISSING, "0310")
        elif not stop.place.id and not stop.place.postal_code:
            problems.element("N1", stop.place.position, "0310", ElementError(4, ElementSyntax.CONDITIONAL_MISSING,
                                                                             reference="67"))


# --- writing ---------------------------------------------------------------------------------------------------


def write_load_tender(tender: LoadTender, *, control: str = "0001", schema: SetSchema = SCHEMA_204,
                      version: str | None = None) -> TransactionSet:
    """The 204 for ``tender`` (what a TMS sends; ``version`` picks the schema, as in :func:`read_load_tender`);
    refuses (:class:`WriteRefused`) what the schema would reject and what :func:`read_load_tender` would not read
    back the same (hazardous-material detail is not written)."""
    if version is not None:
        schema = schema_for("204", version)
    if tender.hazardous:
        raise WriteRefused("hazardous-material detail (LH1) is not written by this mapping")
    body: list[Segment] = [
        Segment.of("B2", "", tender.scac, "", tender.shipment_id, "", tender.payment_method),
        Segment.of("B2A", tender.purpose.value, tender.application_type),
        *(_l11(r) for r in tender.references),
    ]
    if tender.respond_by is not None:
        body.append(_g62(_RESPOND_BY[0], _RESPOND_BY[1], tender.respond_by))
    body += [Segment.of("NTE", n.code, n.text) for n in tender.notes]
    for party in tender.parties:
        body += _party_segments(party, references=True)
    for stop in tender.stops:
        body += _stop_segments(stop)
    if tender.weight or tender.pieces or tender.offered_rate:
        w, p, r = tender.weight, tender.pieces, tender.offered_rate
        if r is not None and r.currency != "USD":
            raise WriteRefused(f"a 004010 204 carries no currency: {r.currency}")
        body.append(Segment.of(
            "L3", _number(w.value) if w else "", w.qualifier if w else "", "", "",
            to_implied(r.amount) if r else "", "", "", "", "", "", _number(p.value) if p else "", w.unit if w else ""))
    errors = validate(schema, body)
    if errors:
        raise WriteRefused("; ".join(str(e) for e in errors))
    return TransactionSet("204", control, tuple(body))


def _number(value: Decimal) -> str:
    return format(value, "f")


def _l11(reference: Reference) -> Segment:
    return Segment.of("L11", reference.value, reference.qualifier, reference.description)


def _g62(qualifier: str, time_qualifier: str, moment: Moment) -> Segment:
    if moment.time is None:
        return Segment.of("G62", qualifier, format_date(moment.date), "", "", moment.time_code)
    seconds = moment.time.second != 0 or moment.time.microsecond != 0
    if moment.time.microsecond:
        raise WriteRefused(f"G62 times are whole seconds: {moment.time}")
    return Segment.of("G62", qualifier, format_date(moment.date), time_qualifier,
                      format_time(moment.time, seconds=seconds), moment.time_code)


def _pairs(values: Sequence[str], segment_id: str, most: int) -> list[Segment]:
    if len(values) > 2 * most:
        raise WriteRefused(f"{segment_id}: at most {2 * most} values, not {len(values)}")
    return [Segment.of(segment_id, *values[k:k + 2]) for k in range(0, len(values), 2)]


def _party_segments(party: Party, *, references: bool) -> list[Segment]:
    out = [Segment.of("N1", party.role, party.name, party.id_qualifier, party.id)]
    out += _pairs(party.more_names, "N2", 1)
    out += _pairs(party.address, "N3", 2)
    if party.city or party.state or party.postal_code or party.country:
        out.append(Segment.of("N4", party.city, party.state, party.postal_code, party.country))
    if party.references and not references:
        raise WriteRefused("a stop's N1 loop carries no L11 in 004010")
    out += [_l11(r) for r in party.references]
    out += [Segment.of("G61", c.function, c.name, c.number_qualifier, c.number) for c in party.contacts]
    return out


def _stop_segments(stop: Stop) -> list[Segment]:
    # S5 has no weight qualifier and pairs pieces with their unit: such figures go in the stop's AT8 (read when
    # the S5 has none)
    w, p = stop.weight, stop.pieces
    at8_weight = w if w and w.qualifier else None
    at8_pieces = p if p and not p.unit else None
    w = None if at8_weight else w
    p = None if at8_pieces else p
    out = [Segment.of("S5", str(stop.sequence), stop.reason, _number(w.value) if w else "", w.unit if w else "",
                      _number(p.value) if p else "", p.unit if p else "")]
    out += [_l11(r) for r in stop.references]
    out += _window_segments(stop)
    if at8_weight or at8_pieces:
        out.append(_at8(at8_weight, at8_pieces))
    out += [Segment.of("NTE", n.code, n.text) for n in stop.notes]
    if stop.place is not None:
        out += _party_segments(stop.place, references=False)
    for commodity in stop.commodities:
        out.append(Segment.of("L5", "" if commodity.line is None else str(commodity.line), commodity.description,
                              commodity.code, commodity.code_qualifier))
        if commodity.weight or commodity.pieces:
            out.append(_at8(commodity.weight, commodity.pieces))
    return out


def _at8(weight: Quantity | None, pieces: Quantity | None) -> Segment:
    if pieces is not None and pieces.unit:
        raise WriteRefused(f"an AT8 lading quantity has no unit: {pieces}")
    return Segment.of("AT8", weight.qualifier if weight else "", weight.unit if weight else "",
                      _number(weight.value) if weight else "", _number(pieces.value) if pieces else "")


def _window_segments(stop: Stop) -> list[Segment]:
    window = stop.window
    if window is None:
        return []
    side = "P" if stop.is_pickup else "D"
    codes = {(s, kind, bound): (qualifier, expected or ("I" if s == "P" else "G"))
             for qualifier, (s, kind, bound, expected) in _STOP_DATES.items()}
    if window.kind is WindowKind.WINDOW:
        out = []
        for bound, moment in (("start", window.start), ("end", window.end)):
            if moment is not None:
                out.append(_g62(*codes[(side, window.kind, bound)], moment))
        return out
    if window.start is None or window.start != window.end:
        raise WriteRefused(f"stop {stop.sequence}: an {window.kind.value} is a point (start == end)")
    return [_g62(*codes[(side, window.kind, "point")], window.start)]
