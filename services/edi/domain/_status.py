"""The 214 shipment status writer: Haulmesh's mission and telemetry events as X12 AT7 status details.

Inputs are plain dataclasses the service fills from events (mapping, one to one):

* ``mission_events.MissionStateChanged`` / ``telemetry_events.GeofenceEntered`` / ``GeofenceExited`` → a
  :class:`StatusEvent` with X3 (entered the pickup's geofence), AF (left it), X1 (entered the delivery's), D1
  (proof of delivery), CD (left the delivery's); ``GeofenceContext.stop_index`` + 1 is the stop sequence, its
  ``location`` the place, its ``device_time`` the time;
* periodic positions at the partner's cadence → X6 with :class:`Coordinates` (or :class:`CityState`);
* ``EtaUpdated`` → :func:`eta_event` (AG with the estimate as its date and time);
* ``MissionExceptionRaised`` → :func:`exception_event`: the exception kind's reason from :data:`EXCEPTION_REASONS`
  (a partner may bring its own table) and a K1 remark saying what happened, since no AT7 reason describes an
  autonomous-driving event.

Rules (shared/notes/edi.md, 214): B10-01 our PRO (the mission id), B10-02 the 204's B2-04, B10-03 our SCAC; one
LX loop per event with AT7, MS1, MS2, L11 (stop sequence and references), K1; in 004010 AT7-02 is required with
AT7-01 (P0102), so a normal status says ``NS``; an appointment uses AT7-03/04 instead (E0103). Times are the stop's
local wall time with ``LT`` (X12 times carry no zone), or with the zone's code, or UTC with ``UT``, per partner.
MS1 positions are DDDMMSS with E/W and N/S (:func:`to_dddmmss`, :func:`from_dddmmss`), never decimal degrees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._envelope import TransactionSet
from ._errors import WriteRefused
from ._set_214 import APPOINTMENT_STATUSES, STATUS_CODES, STATUS_REASONS
from ._set_5010 import reference_max
from ._tokens import Segment
from ._values import format_date, format_time

__all__ = [
    "ARRIVED_AT_DELIVERY",
    "ARRIVED_AT_PICKUP",
    "DELIVERED",
    "DEPARTED_DELIVERY",
    "DEPARTED_PICKUP",
    "EN_ROUTE",
    "ESTIMATED_DELIVERY",
    "EXCEPTION_REASONS",
    "EXCEPTION_REMARKS",
    "SHIPMENT_DELAYED",
    "CityState",
    "Coordinates",
    "Equipment",
    "ShipmentReference",
    "ShipmentStatus",
    "StatusError",
    "StatusEvent",
    "clean_text",
    "eta_event",
    "exception_event",
    "from_dddmmss",
    "remarks",
    "status_214",
    "time_code_for",
    "to_dddmmss",
]

ARRIVED_AT_PICKUP = "X3"
DEPARTED_PICKUP = "AF"
EN_ROUTE = "X6"
ARRIVED_AT_DELIVERY = "X1"
DELIVERED = "D1"
DEPARTED_DELIVERY = "CD"
ESTIMATED_DELIVERY = "AG"
SHIPMENT_DELAYED = "SD"
_NORMAL = "NS"
_NORMAL_APPOINTMENT = "NA"
#: L11 qualifier of the stop sequence number.
_STOP_SEQUENCE = "QN"

#: AT7-02 for each Haulmesh exception kind (haulmesh.mission.v1.MissionException.Kind without ``KIND_``). No
#: X12 reason names an autonomous-driving event: the closest carrier reason, and a K1 remark says what it was.
EXCEPTION_REASONS: Mapping[str, str] = {
    "SENSOR_FAULT": "AI",          # mechanical breakdown: the perception stack is the driver's eyes
    "VEHICLE_FAULT": "AI",         # mechanical breakdown
    "PRE_TRIP_FAILURE": "AI",      # mechanical breakdown found before departure
    "ROAD_CLOSURE": "BE",          # road conditions
    "TRAFFIC_INCIDENT": "BE",      # road conditions (not our accident: AF would say so)
    "ADVERSE_WEATHER": "AO",       # weather or natural disaster related
    "CONNECTIVITY_LOSS": "BG",     # other
    "LAW_ENFORCEMENT_STOP": "BG",  # other
    "DISPATCH_TIMEOUT": "BG",
    "CHECK_IN_HOLD": "BG",
    "CARGO": "BG",
    "ROUTE_DEVIATION": "BG",
    "OTHER": "BG",
}
#: The K1 remark's opening words for each exception kind (the exception's description follows).
EXCEPTION_REMARKS: Mapping[str, str] = {
    "SENSOR_FAULT": "DRIVERLESS TRUCK SENSOR FAULT",
    "VEHICLE_FAULT": "DRIVERLESS TRUCK VEHICLE FAULT",
    "PRE_TRIP_FAILURE": "DRIVERLESS TRUCK PRE-TRIP CHECK FAILED",
    "ROAD_CLOSURE": "ROAD CLOSED ON ROUTE",
    "TRAFFIC_INCIDENT": "TRAFFIC INCIDENT ON ROUTE",
    "ADVERSE_WEATHER": "WEATHER OUTSIDE DRIVERLESS LIMITS",
    "CONNECTIVITY_LOSS": "DRIVERLESS TRUCK CONNECTIVITY LOST",
    "LAW_ENFORCEMENT_STOP": "LAW ENFORCEMENT OR INSPECTION STOP",
    "DISPATCH_TIMEOUT": "DRIVERLESS TRUCK DISPATCH TIMEOUT",
    "CHECK_IN_HOLD": "HELD AT HUMAN CHECK-IN",
    "CARGO": "CARGO OR TRAILER PROBLEM",
    "ROUTE_DEVIATION": "DRIVERLESS TRUCK OFF ROUTE",
    "OTHER": "DRIVERLESS TRUCK EXCEPTION",
}

#: Zone abbreviations (``datetime.tzname()``) to X12 time codes (element 623).
_ZONE_CODES = {
    "EST": "ES", "EDT": "ED", "CST": "CS", "CDT": "CD", "MST": "MS", "MDT": "MD", "PST": "PS", "PDT": "PD",
    "AKST": "AS", "AKDT": "AD", "HST": "HS", "HDT": "HD", "NST": "NS", "NDT": "ND",
    "UTC": "UT", "GMT": "GM",
}
#: How a partner wants event times: the stop's wall time with LT, the same with its zone's code, or UTC.
_TIME_CODE_MODES = ("LT", "ZONE", "UT")
_K1_WIDTH = 30
_K1_MAX = 10
#: What free text keeps: letters, digits, space and punctuation no partner uses as a delimiter.
_KEPT = re.compile(r"[^A-Za-z0-9 .,\-/()#&]")


class StatusError(WriteRefused):
    """A status the 214 cannot say (an unknown code, a position off the globe, a time without its zone)."""


@dataclass(frozen=True)
class ShipmentReference:
    """A reference to echo (the 204's L11 on a 214, as N9 on a 210): qualifier (``BM``, ``PO``, ``SI``) and
    value. Any object with ``qualifier`` and ``value`` attributes is accepted where one is."""

    qualifier: str
    value: str


@dataclass(frozen=True)
class CityState:
    """MS1-01..03: city, state or province, country (``US``, ``CA``, ``MX``; optional)."""

    city: str
    state: str
    country: str = ""


@dataclass(frozen=True)
class Coordinates:
    """MS1-04..07 from decimal degrees (WGS 84; ``haulmesh.type.v1.Location`` lat/lon)."""

    latitude: float | Decimal
    longitude: float | Decimal


@dataclass(frozen=True)
class Equipment:
    """MS2: the equipment's owner SCAC, its number (the truck or trailer, at most 10), type code (``TL``)."""

    scac: str
    number: str
    kind: str = "TL"


@dataclass(frozen=True)
class StatusEvent:
    """One AT7 and its loop.

    ``status`` is AT7-01 with its ``reason`` (AT7-02); or, for an appointment, ``appointment`` is AT7-03 (AA
    pickup, AB delivery) with ``reason`` defaulting to NA, and ``status`` empty. ``time`` is the event's time: an
    aware datetime with ``zone`` the stop's IANA zone (e.g. ``America/Phoenix``), or a naive one already in the
    stop's local time. ``stop_sequence`` is the 204's S5-01 (1-based), written as L11 ``QN``.
    """

    status: str
    time: datetime
    reason: str = ""
    zone: str = ""
    location: CityState | Coordinates | None = None
    stop_sequence: int | None = None
    equipment: Equipment | None = None
    references: tuple[ShipmentReference, ...] = ()
    remarks: tuple[str, ...] = ()
    appointment: str = ""


@dataclass(frozen=True)
class ShipmentStatus:
    """A 214: ``shipment_id`` the 204's B2-04, ``pro`` our PRO (the mission id), our ``scac``, the 204's
    references to echo, and the events (one LX each, in order)."""

    shipment_id: str
    pro: str
    scac: str
    events: tuple[StatusEvent, ...]
    references: tuple[ShipmentReference, ...] = ()


# --- positions ---------------------------------------------------------------------------------------------------


def _decimal(value: float | Decimal | int) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatusError(f"not a coordinate: {value!r}")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def to_dddmmss(degrees: float | Decimal | int, *, latitude: bool) -> tuple[str, str]:
    """Decimal degrees → (``DDDMMSS``, direction) for MS1: ``29.7594`` → ``("0294534", "N")``,
    ``-95.3594`` → ``("0952134", "W")``. Rounded half up to the nearest second of arc (about 31 m of latitude);
    a value that rounds to zero is north or east."""
    value = _decimal(degrees)
    limit = 90 if latitude else 180
    if not value.is_finite() or abs(value) > limit:
        raise StatusError(f"{'latitude' if latitude else 'longitude'} {degrees!r} is not within ±{limit}")
    seconds = int((abs(value) * 3600).to_integral_value(rounding=ROUND_HALF_UP))
    whole, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    negative = value < 0 and seconds > 0
    direction = ("S" if negative else "N") if latitude else ("W" if negative else "E")
    return f"{whole:03d}{minutes:02d}{secs:02d}", direction


def from_dddmmss(code: str, direction: str) -> float:
    """(``DDDMMSS``, direction) → decimal degrees, negative south and west: ``("0952134", "W")`` → -95.3594..."""
    if not re.fullmatch(r"\d{7}", code) or direction not in ("N", "S", "E", "W"):
        raise StatusError(f"not a DDDMMSS position: {code!r} {direction!r}")
    whole, minutes, seconds = int(code[:3]), int(code[3:5]), int(code[5:])
    limit = 90 if direction in ("N", "S") else 180
    if minutes > 59 or seconds > 59 or whole * 3600 + minutes * 60 + seconds > limit * 3600:
        raise StatusError(f"not a DDDMMSS position: {code!r} {direction!r}")
    value = whole + minutes / 60 + seconds / 3600
    return -value if direction in ("S", "W") else value


# --- times ---------------------------------------------------------------------------------------------------------


def time_code_for(local: datetime) -> str:
    """The X12 time code (element 623) of an aware local time: its zone's (``CS``, ``MD``...), else its whole-hour
    UTC offset as an ISO code (``P05`` is ``05``, ``M05`` is ``20``), else ``LT``."""
    code = _ZONE_CODES.get(local.tzname() or "")
    if code:
        return code
    offset = local.utcoffset()
    if offset is None:
        return "LT"
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0:
        return "UT"
    if minutes % 60 or not -12 <= minutes // 60 <= 12:
        return "LT"
    hours = minutes // 60
    return f"{hours:02d}" if hours > 0 else f"{25 + hours:02d}"


def _when(event: StatusEvent, mode: str) -> tuple[str, str, str]:
    time = event.time
    if time.tzinfo is None or time.utcoffset() is None:
        if mode != "LT":
            raise StatusError(f"a naive time can only be sent as local time (LT), not {mode}")
        local, code = time, "LT"
    elif mode == "UT":
        local, code = time.astimezone(UTC), "UT"
    else:
        if not event.zone:
            raise StatusError("an aware time needs the stop's zone to be sent as its local time")
        try:
            local = time.astimezone(ZoneInfo(event.zone))
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise StatusError(f"unknown zone {event.zone!r}") from error
        code = "LT" if mode == "LT" else time_code_for(local)
    return format_date(local.date()), format_time(local.time()), code


# --- text --------------------------------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Free text as X12 data any partner reads: letters, digits, space and ``.,-/()#&``; others become spaces,
    runs of spaces one."""
    return " ".join(_KEPT.sub(" ", text).split())


def remarks(*texts: str) -> tuple[Segment, ...]:
    """K1 segments (two 30-character remarks each, at most 10) for free text, cut at word boundaries."""
    pieces: list[str] = []
    for text in texts:
        line = ""
        for word in clean_text(text).split(" "):
            while len(word) > _K1_WIDTH:
                if line:
                    pieces.append(line)
                    line = ""
                pieces.append(word[:_K1_WIDTH])
                word = word[_K1_WIDTH:]
            if not word:
                continue
            if line and len(line) + 1 + len(word) > _K1_WIDTH:
                pieces.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            pieces.append(line)
    pieces = pieces[:2 * _K1_MAX]
    return tuple(Segment.of("K1", *pieces[i:i + 2]) for i in range(0, len(pieces), 2))


# --- events --------------------------------------------------------------------------------------------------------


def eta_event(estimate: datetime, *, zone: str = "", stop_sequence: int | None = None,
              location: CityState | Coordinates | None = None, equipment: Equipment | None = None) -> StatusEvent:
    """AG (estimated delivery) with the estimate as its date and time (``EtaUpdated.estimated_arrive_time``)."""
    return StatusEvent(ESTIMATED_DELIVERY, estimate, _NORMAL, zone, location, stop_sequence, equipment)


def exception_event(kind: str, time: datetime, *, description: str = "", zone: str = "",
                    status: str = SHIPMENT_DELAYED, location: CityState | Coordinates | None = None,
                    stop_sequence: int | None = None, equipment: Equipment | None = None,
                    reasons: Mapping[str, str] | None = None) -> StatusEvent:
    """A Haulmesh exception (``MissionException.Kind`` with or without ``KIND_``) as an AT7: ``status`` (SD,
    delayed, by default; a partner may want X6) with the kind's reason from ``reasons`` (default
    :data:`EXCEPTION_REASONS`; an unknown kind is BG, other) and a K1 remark naming the event."""
    name = kind.removeprefix("KIND_").upper()
    table = EXCEPTION_REASONS if reasons is None else reasons
    reason = table.get(name, "BG")
    opening = EXCEPTION_REMARKS.get(name, f"DRIVERLESS TRUCK {clean_text(name.replace('_', ' '))}")
    texts = (opening, description) if description else (opening,)
    return StatusEvent(status, time, reason, zone, location, stop_sequence, equipment, remarks=texts)


def _location(location: CityState | Coordinates) -> Segment:
    if isinstance(location, CityState):
        city = clean_text(location.city)
        if not 2 <= len(city) <= 30 or not re.fullmatch(r"[A-Z]{2}", location.state) or (
                location.country and not re.fullmatch(r"[A-Z]{2,3}", location.country)):
            raise StatusError(f"MS1: city of 2 to 30 characters, a two-letter state: {location!r}")
        return Segment.of("MS1", city, location.state, location.country)
    latitude, north_south = to_dddmmss(location.latitude, latitude=True)
    longitude, east_west = to_dddmmss(location.longitude, latitude=False)
    return Segment.of("MS1", "", "", "", longitude, latitude, east_west, north_south)


def _printable(value: str, low: int, high: int) -> bool:
    return low <= len(value) <= high and all(" " <= c <= "~" for c in value)


def _reference(reference: ShipmentReference, longest: int = 30) -> Segment:
    qualifier, value = reference.qualifier, reference.value  # echoed as received: never rewritten
    if not re.fullmatch(r"[A-Z0-9]{2,3}", qualifier) or not _printable(value, 1, longest):
        raise StatusError(f"L11: a 2-3 character qualifier and a value of 1 to {longest}: {reference!r}")
    return Segment.of("L11", value, qualifier)


def _equipment(equipment: Equipment) -> Segment:
    if not re.fullmatch(r"[A-Z0-9]{2,4}", equipment.scac) or not re.fullmatch(r"[A-Za-z0-9\-]{1,10}",
                                                                              equipment.number) \
            or not re.fullmatch(r"[A-Z0-9]{2}", equipment.kind):
        raise StatusError(f"MS2: SCAC, an equipment number of at most 10, a type code: {equipment!r}")
    return Segment.of("MS2", equipment.scac, equipment.number, equipment.kind)


def _at7(event: StatusEvent, mode: str) -> Segment:
    day, clock, code = _when(event, mode)
    if event.appointment:
        reason = event.reason or _NORMAL_APPOINTMENT
        if event.status or event.appointment not in APPOINTMENT_STATUSES or reason not in STATUS_REASONS:
            raise StatusError(f"AT7: an appointment (AA/AB) with its reason, and no status: {event!r}")
        return Segment.of("AT7", "", "", event.appointment, reason, day, clock, code)
    reason = event.reason or _NORMAL
    if event.status not in STATUS_CODES:
        raise StatusError(f"AT7-01 {event.status!r} is not one of {sorted(STATUS_CODES)}")
    if reason not in STATUS_REASONS:
        raise StatusError(f"AT7-02 {reason!r} is not one of {sorted(STATUS_REASONS)}")
    return Segment.of("AT7", event.status, reason, "", "", day, clock, code)


def _lx(number: int, event: StatusEvent, mode: str, longest: int = 30) -> list[Segment]:
    segments = [Segment.of("LX", str(number)), _at7(event, mode)]
    if event.location is not None:
        segments.append(_location(event.location))
    if event.equipment is not None:
        segments.append(_equipment(event.equipment))
    references = list(event.references)
    if event.stop_sequence is not None:
        if not 1 <= event.stop_sequence <= 999:
            raise StatusError(f"stop sequence {event.stop_sequence} (S5-01 is 1 to 999)")
        references.insert(0, ShipmentReference(_STOP_SEQUENCE, str(event.stop_sequence)))
    if len(references) > 10:
        raise StatusError(f"at most 10 L11 per event, not {len(references)}")
    segments += [_reference(r, longest) for r in references]
    segments += remarks(*event.remarks)
    return segments


def status_214(status: ShipmentStatus, *, control: str, time_code: str = "LT",
               references: Iterable[ShipmentReference] | None = None, version: str = "004010") -> TransactionSet:
    """The 214 (ST02 ``control``) for ``status``: B10, the references as L11, one LX loop per event.

    ``version`` is the partner's GS08: the segments are the same in 004010 and 005010, whose references (B10-01,
    L11-01) may be 50 characters long, not 30.

    ``time_code`` is the partner's habit: ``LT`` (the stop's wall time, the default), ``ZONE`` (the same with
    its zone's code) or ``UT``. ``references`` replaces ``status.references`` when given (e.g. a partner that
    wants only some echoed)."""
    if time_code not in _TIME_CODE_MODES:
        raise StatusError(f"time code {time_code!r} is not one of {_TIME_CODE_MODES}")
    if not status.events:
        raise StatusError("a 214 carries at least one status")
    pro, shipment = status.pro, status.shipment_id
    longest = reference_max(version)
    if not _printable(pro, 1, longest) or not _printable(shipment, 0, 30) or not re.fullmatch(r"[A-Z0-9]{2,4}",
                                                                                              status.scac):
        raise StatusError(f"B10: a PRO of 1 to {longest}, a shipment id of at most 30, a SCAC: {status!r}")
    echoed = tuple(status.references if references is None else references)
    if len(echoed) > 300:
        raise StatusError(f"at most 300 references, not {len(echoed)}")
    body = [Segment.of("B10", pro, shipment, status.scac)]
    body += [_reference(r, longest) for r in echoed]
    for number, event in enumerate(status.events, 1):
        body += _lx(number, event, time_code, longest)
    return TransactionSet("214", control, tuple(body))
