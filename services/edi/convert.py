"""A 204's :class:`LoadTender` as the tender service's request, and nothing guessed on the way.

:func:`tender_request` is the one place the mapping lives:

* every S5 stop becomes a ``Tender.stops`` entry in the 204's order (type from S5-02, the N1 name, the N1-03/N1-04
  facility code, the N3/N4 address, its window, its L11s); the tender service places each (the carrier's facility
  registry by code, else the ZIP code's centroid) and refuses one it cannot place (STOP_NOT_PLACEABLE, naming the
  stop), which becomes a 990 decline naming the S5 sequence: never a guess. Origin, destination and windows are
  the tender service's to derive from the stops;
* a window's times are the stop's local time (G62-05 ``LT`` or empty), placed in the time zone of the stop's ZIP
  code (:func:`stop_time_zone`; the ``zipcodes`` data, else the lane facts' market nearest the centroid); a stop
  with a window and no known ZIP is refused here, naming it; an appointment (a point) becomes a window of
  :data:`POINT_WINDOW`, an open-ended window its known bound and :data:`POINT_WINDOW` beside it;
* the 204's references (L11; B2-04 as the shipment id), commodities (L5/AT8) and offered rate (L3-05) are the
  tender's; NTE notes its special instructions;
* the weight is the L3's, else the pickups' (pounds; kilograms converted); none is a refusal;
* 004010's 204 names no equipment the model reads: a 53 ft dry van (:data:`DEFAULT_EQUIPMENT`), the usual TL
  tender; a 204 with hazardous-material detail (LH1/LH6) is refused until the mapping reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import zipcodes

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from haulmesh.type.v1 import equipment_pb2
from services.runtime import to_timestamp
from services.runtime.lanes import LaneFacts
from services.runtime.limits import (
    MAX_ADDRESS_LINE,
    MAX_ADDRESS_LINES,
    MAX_CITY,
    MAX_COMMODITIES,
    MAX_COMMODITY_DESCRIPTION,
    MAX_REFERENCE_DESCRIPTION,
    MAX_REFERENCE_VALUE,
    MAX_SPECIAL_INSTRUCTIONS,
    MAX_STOP_NAME,
    MAX_STOP_REFERENCES,
    MAX_TENDER_REFERENCES,
    TENDER_STOPS,
)

from .domain import Commodity, LoadTender, Reference, Stop, Window

__all__ = ["DEFAULT_EQUIPMENT", "POINT_WINDOW", "UPDATE_PATHS", "Refusal", "request_id_for", "stop_time_zone",
           "tender_request"]

DEFAULT_EQUIPMENT = equipment_pb2.EQUIPMENT_DRY_VAN_53FT
#: The window around a point in time (an appointment, a requested date's time, an open-ended window's bound).
POINT_WINDOW = timedelta(hours=2)
#: What a change (B2A 04) updates: the lane fields follow the stops on the tender service's side.
UPDATE_PATHS = ("stops", "weight_lb", "special_instructions", "references", "commodities", "offered_rate")
_KG_TO_LB = Decimal("2.20462")
_Kind = tender_pb2.Reference.Kind
_KINDS = {"BM": _Kind.KIND_BILL_OF_LADING, "PO": _Kind.KIND_PURCHASE_ORDER, "SI": _Kind.KIND_SHIPMENT_ID}
_QUALIFIER = re.compile(r"[A-Z0-9]{2,3}")
_PIECE_UNIT = re.compile(r"[A-Z0-9]{1,8}")


@dataclass(frozen=True)
class Refusal:
    """Why a 204 cannot become a tender: the 990's remark (naming the stop, when one is why)."""

    remark: str
    stop: int | None = None


def stop_time_zone(postal_code: str, lanes: LaneFacts) -> str | None:
    """The IANA time zone of a US ZIP code (ZIP+4 read by its first five), or None when it is not one."""
    zip5 = postal_code.strip()[:5]
    if not (len(zip5) == 5 and zip5.isdigit()):
        return None
    found = zipcodes.matching(zip5)
    if not found:
        return None
    return found[0].get("timezone") or lanes.timezone_at(float(found[0]["lat"]), float(found[0]["long"]))


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
    low, high = TENDER_STOPS
    if not low <= len(tender.stops) <= high:
        return Refusal(f"a tender has {low} to {high} stops, this one {len(tender.stops)}")
    weight = tender.total_weight
    if weight is None:
        return Refusal("no weight: the 204 has no L3 weight and its pickups none in one unit")
    out = tender_pb2.Tender(tms_load_id=_load_id(tender.shipment_id), equipment=DEFAULT_EQUIPMENT,
                            weight_lb=_pounds(weight.value, weight.unit),
                            special_instructions="; ".join(n.text for n in tender.notes)[:MAX_SPECIAL_INSTRUCTIONS])
    for stop in tender.stops:
        mapped = _stop(stop, lanes)
        if isinstance(mapped, Refusal):
            return mapped
        out.stops.append(mapped)
    references = [tender_pb2.Reference(kind=_Kind.KIND_SHIPMENT_ID, qualifier="SI",
                                       value=tender.shipment_id[:MAX_REFERENCE_VALUE])]
    references += [_reference(r) for r in tender.references if _QUALIFIER.fullmatch(r.qualifier) and r.value]
    out.references.extend(references[:MAX_TENDER_REFERENCES])
    out.commodities.extend(_commodity(c) for c in tender.commodities[:MAX_COMMODITIES] if c.description)
    if tender.offered_rate is not None:
        out.offered_rate.currency_code = tender.offered_rate.currency
        out.offered_rate.amount_minor = int((tender.offered_rate.amount * 100).to_integral_value())
    return tender_service_pb2.CreateTenderRequest(tender=out, request_id=request_id)


def _stop(stop: Stop, lanes: LaneFacts) -> tender_pb2.Stop | Refusal:
    place = stop.place
    out = tender_pb2.Stop(type=tender_pb2.Stop.TYPE_PICKUP if stop.is_pickup else tender_pb2.Stop.TYPE_DELIVERY)
    if place is not None:
        out.display_name = place.name[:MAX_STOP_NAME]
        if place.id and len(place.id) >= 2:
            out.facility_code.qualifier, out.facility_code.code = place.id_qualifier[:2], place.id[:80]
        address = out.address
        address.lines.extend(line[:MAX_ADDRESS_LINE] for line in place.address[:MAX_ADDRESS_LINES] if line)
        address.city = place.city[:MAX_CITY]
        address.region = place.state[:3].upper()
        address.postal_code = place.postal_code[:15]
        address.country_code = place.country[:2].upper() if len(place.country) >= 2 else ""
    out.references.extend(_reference(r) for r in stop.references[:MAX_STOP_REFERENCES]
                          if _QUALIFIER.fullmatch(r.qualifier) and r.value)
    if stop.window is None:
        return out
    postal = place.postal_code if place else ""
    zone = stop_time_zone(postal, lanes) if postal else None
    if zone is None:
        what = f"ZIP {postal!r} is not a known US ZIP code" if postal else "it has no ZIP (N4-03)"
        return Refusal(f"stop {stop.sequence} cannot be placed: {what}, and its window's local times need its "
                       "time zone", stop.sequence)
    window = _window(stop, ZoneInfo(zone))
    if isinstance(window, Refusal):
        return window
    out.window.start_time.CopyFrom(to_timestamp(window[0]))
    out.window.end_time.CopyFrom(to_timestamp(window[1]))
    return out


def _reference(reference: Reference) -> tender_pb2.Reference:
    kind = _KINDS.get(reference.qualifier, _Kind.KIND_OTHER)
    return tender_pb2.Reference(kind=kind, qualifier=reference.qualifier, value=reference.value[:MAX_REFERENCE_VALUE],
                                description=reference.description[:MAX_REFERENCE_DESCRIPTION])


def _commodity(line: Commodity) -> tender_pb2.Commodity:
    out = tender_pb2.Commodity(description=line.description[:MAX_COMMODITY_DESCRIPTION])
    if line.pieces is not None:
        out.piece_count = min(int(line.pieces.value), 1_000_000)
        if _PIECE_UNIT.fullmatch(line.pieces.unit):
            out.piece_unit = line.pieces.unit
    if line.weight is not None:
        out.weight_lb = _pounds(line.weight.value, line.weight.unit)
    return out


def _pounds(value: Decimal, unit: str) -> int:
    return int((value * _KG_TO_LB if unit == "K" else value).to_integral_value())


def _load_id(shipment_id: str) -> str:
    """B2-04 as the tender's ``tms_load_id`` (1-64 of [A-Za-z0-9._:/-]); other characters become ``-``."""
    return "".join(c if c.isalnum() or c in "._:/-" else "-" for c in shipment_id)[:64]


def _window(stop: Stop, zone: ZoneInfo) -> tuple[datetime, datetime] | Refusal:
    window: Window | None = stop.window
    assert window is not None
    for moment in (window.start, window.end):
        if moment is not None and not moment.local:
            return Refusal(f"stop {stop.sequence}: time zone code {moment.time_code!r} is not supported (use LT)",
                           stop.sequence)
    start = window.start.naive().replace(tzinfo=zone) if window.start else None
    end = window.end.naive(end=True).replace(tzinfo=zone) if window.end else None
    if start is None and end is not None:
        start = end - POINT_WINDOW
    if start is not None and (end is None or end <= start):
        end = start + POINT_WINDOW
    assert start is not None and end is not None
    return start, end
