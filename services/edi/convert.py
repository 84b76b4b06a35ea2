"""A 204's :class:`LoadTender` as the tender service's request, and nothing guessed on the way.

:func:`tender_request` is the one place the mapping lives (written against today's contract: one origin, one
destination, a pickup and a delivery window, equipment, weight, free text), so the contract's new fields (stops,
references, commodity, offered rate, placement by facility id) slot in here:

* origin = the first pickup stop, destination = the last delivery stop;
* a stop is placed at its ZIP code's centroid (:func:`zip_centroid`, a stand-in the facility registry and the
  ZIP package of issue 15 replace); a stop that cannot be placed is a :class:`Refusal` naming the stop, never a
  guess;
* a window's times are the stop's local time (G62-05 ``LT`` or empty), placed in the time zone of the stop's market
  (the shared lane facts); an appointment (a point) becomes a window of :data:`POINT_WINDOW`, an open-ended window
  its known bound and :data:`POINT_WINDOW` beside it;
* the weight is the L3's, else the pickups' (pounds; kilograms converted); none is a refusal;
* 004010's 204 names no equipment the model reads: a 53 ft dry van (:data:`DEFAULT_EQUIPMENT`), the usual TL
  tender; a 204 with hazardous-material detail (LH1/LH6) is refused until the contract carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from haulmesh.type.v1 import equipment_pb2
from services.runtime import to_timestamp
from services.runtime.lanes import LaneFacts
from services.runtime.limits import MAX_ADDRESS, MAX_SPECIAL_INSTRUCTIONS

from .domain import LoadTender, Stop, Window

__all__ = ["DEFAULT_EQUIPMENT", "POINT_WINDOW", "Refusal", "request_id_for", "tender_request", "zip_centroid"]

DEFAULT_EQUIPMENT = equipment_pb2.EQUIPMENT_DRY_VAN_53FT
#: The window around a point in time (an appointment, a requested date's time, an open-ended window's bound).
POINT_WINDOW = timedelta(hours=2)
_KG_TO_LB = Decimal("2.20462")


@dataclass(frozen=True)
class Refusal:
    """Why a 204 cannot become a tender: a reason for the 990's remark (it names the stop) and the AT7-style code."""

    remark: str
    stop: int | None = None


# --- placing stops (a stand-in: see the module's docstring) -----------------------------------------------------

#: ZIP centroids of the demo markets' ZIP codes. TEMPORARY: issue 15's facility registry (N1 id codes) and the
#: offline ``zipcodes`` package replace this table (the integration swaps :func:`zip_centroid`).
_ZIP_CENTROIDS: dict[str, tuple[float, float]] = {
    "75201": (32.7876, -96.7994), "75202": (32.7809, -96.8009), "75207": (32.7880, -96.8197),
    "75212": (32.7795, -96.8825), "75247": (32.8143, -96.8751), "77002": (29.7594, -95.3594),
    "77003": (29.7490, -95.3456), "77029": (29.7636, -95.2596), "77061": (29.6652, -95.2796),
    "78205": (29.4246, -98.4895), "79901": (31.7587, -106.4869), "85003": (33.4506, -112.0786),
    "90021": (34.0290, -118.2384), "30303": (33.7525, -84.3915),
}


def zip_centroid(postal_code: str) -> tuple[float, float] | None:
    """The centroid of a 5-digit ZIP (ZIP+4 read by its first five), or None when unknown. Uses the ``zipcodes``
    package when installed, else the small table above."""
    zip5 = postal_code.strip()[:5]
    if not (len(zip5) == 5 and zip5.isdigit()):
        return None
    try:
        import zipcodes  # type: ignore[import-not-found]  # optional: issue 15's offline ZIP data
    except ImportError:
        return _ZIP_CENTROIDS.get(zip5)
    found = zipcodes.matching(zip5)
    return (float(found[0]["lat"]), float(found[0]["long"])) if found else _ZIP_CENTROIDS.get(zip5)


# --- the mapping ---------------------------------------------------------------------------------------------


def request_id_for(partner: str, shipment_id: str, purpose: str, isa13: str) -> str:
    """The request id of the call a 204 makes: the same interchange retried makes the same call (the tender
    service's idempotency then returns the first answer); another interchange for the shipment is another call."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in shipment_id)[:64]
    return f"edi:{partner}:{safe}:{purpose}:{isa13}"[:128]


def tender_request(tender: LoadTender, lanes: LaneFacts, *, request_id: str) -> \
        tender_service_pb2.CreateTenderRequest | Refusal:
    """The CreateTender request for a 204, or why there is none."""
    if tender.hazardous:
        return Refusal("hazardous material detail (LH1/LH6) is not accepted over EDI yet")
    pickups, deliveries = tender.pickups, tender.deliveries
    if not pickups or not deliveries:
        return Refusal("a tender needs a pickup stop and a delivery stop")
    placed = []
    for stop in (pickups[0], deliveries[-1]):
        where = _place(stop)
        if isinstance(where, Refusal):
            return where
        window = _window(stop, where, lanes)
        if isinstance(window, Refusal):
            return window
        placed.append((stop, where, window))
    weight = tender.total_weight
    if weight is None:
        return Refusal("no weight: the 204 has no L3 weight and its pickups none in one unit")
    pounds = weight.value * _KG_TO_LB if weight.unit == "K" else weight.value
    (origin_stop, origin, pickup), (dest_stop, destination, delivery) = placed
    out = tender_pb2.Tender(tms_load_id=_load_id(tender.shipment_id), equipment=DEFAULT_EQUIPMENT,
                            weight_lb=int(pounds.to_integral_value()),
                            special_instructions=_instructions(tender))
    for field, stop, point in (("origin", origin_stop, origin), ("destination", dest_stop, destination)):
        location = getattr(out, field)
        location.lat, location.lon = point
        location.address = _address(stop)
    out.pickup_window.start_time.CopyFrom(to_timestamp(pickup[0]))
    out.pickup_window.end_time.CopyFrom(to_timestamp(pickup[1]))
    if delivery is not None:
        out.delivery_window.start_time.CopyFrom(to_timestamp(delivery[0]))
        out.delivery_window.end_time.CopyFrom(to_timestamp(delivery[1]))
    return tender_service_pb2.CreateTenderRequest(tender=out, request_id=request_id)


def _load_id(shipment_id: str) -> str:
    """B2-04 as the tender's ``tms_load_id`` (1-64 of [A-Za-z0-9._:/-]); other characters become ``-``."""
    return "".join(c if c.isalnum() or c in "._:/-" else "-" for c in shipment_id)[:64]


def _place(stop: Stop) -> tuple[float, float] | Refusal:
    place = stop.place
    postal = place.postal_code if place else ""
    point = zip_centroid(postal) if postal else None
    if point is None:
        what = f"ZIP {postal!r}" if postal else "no ZIP (N4-03)"
        facility = f" (facility {place.id_qualifier}/{place.id})" if place and place.id else ""
        return Refusal(f"stop {stop.sequence} cannot be placed: {what}{facility} is not known", stop.sequence)
    return point


def _window(stop: Stop, point: tuple[float, float], lanes: LaneFacts) -> \
        tuple[datetime, datetime] | Refusal | None:
    window: Window | None = stop.window
    if window is None:
        if stop.is_pickup:
            return Refusal(f"stop {stop.sequence} has no pickup date (G62 37/38, 69 or 10)", stop.sequence)
        return None
    for moment in (window.start, window.end):
        if moment is not None and not moment.local:
            return Refusal(f"stop {stop.sequence}: time zone code {moment.time_code!r} is not supported (use LT)",
                           stop.sequence)
    zone = ZoneInfo(lanes.timezone_at(*point))
    start = window.start.naive().replace(tzinfo=zone) if window.start else None
    end = window.end.naive(end=True).replace(tzinfo=zone) if window.end else None
    if start is None and end is not None:
        start = end - POINT_WINDOW
    if start is not None and (end is None or end <= start):
        end = start + POINT_WINDOW
    assert start is not None and end is not None
    return start, end


def _address(stop: Stop) -> str:
    place = stop.place
    if place is None:
        return ""
    parts = [place.name, *place.address, " ".join(p for p in (place.city, place.state, place.postal_code) if p)]
    return ", ".join(p for p in parts if p)[:MAX_ADDRESS]


def _instructions(tender: LoadTender) -> str:
    """The 204's notes and references as free text (the contract's references field replaces the latter)."""
    parts = [f"{r.qualifier} {r.value}" for r in tender.references]
    parts += [n.text for n in tender.notes]
    return "; ".join(parts)[:MAX_SPECIAL_INSTRUCTIONS]
