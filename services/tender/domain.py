"""Tender rules. Plain Python: no gRPC, no Redis.

* the lifecycle (:func:`transition`): which action is legal from which state;
* input validation (:func:`validate_tender`) with one field violation per invalid field;
* update rules (:func:`apply_update`): what UpdateTender may change in which state;
* evaluation (:func:`assess`, :func:`evaluate`): lane eligibility against the typed policy
  (services/tender/eligibility.py), the risk score and the offer.

Every function takes ``now`` rather than reading the clock, so the rules are deterministic and testable.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from haulmesh.mission.v1 import mission_pb2
from haulmesh.tender.v1 import facility_pb2, tender_pb2, tender_service_pb2
from haulmesh.type.v1 import (
    charge_line_pb2,
    equipment_pb2,
    geofence_pb2,
    hazmat_pb2,
    lane_pb2,
    location_pb2,
    money_pb2,
    postal_address_pb2,
    time_window_pb2,
)
from services.runtime import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    from_timestamp,
    parse_name,
    to_timestamp,
)
from services.runtime.limits import (
    COMMODITY_PIECES,
    COUNTRY_CODE,
    CURRENCY_CODE,
    E164,
    FACILITY_CODE,
    FACILITY_CODE_QUALIFIER,
    FACILITY_GEOFENCE_RADIUS_METERS,
    FACILITY_UPDATABLE_FIELDS,
    FREIGHT_CLASSES,
    HAZARD_CLASS,
    MAX_ADDRESS,
    MAX_ADDRESS_LINE,
    MAX_ADDRESS_LINES,
    MAX_CITY,
    MAX_COMMODITIES,
    MAX_COMMODITY_DESCRIPTION,
    MAX_FACILITY_CODES,
    MAX_FACILITY_NAME,
    MAX_PROPER_SHIPPING_NAME,
    MAX_REFERENCE_DESCRIPTION,
    MAX_REFERENCE_VALUE,
    MAX_SPECIAL_INSTRUCTIONS,
    MAX_STOP_NAME,
    MAX_STOP_REFERENCES,
    MAX_TENDER_REFERENCES,
    NMFC_CODE,
    PACKING_GROUPS,
    PIECE_UNIT,
    POSTAL_CODE,
    REFERENCE_QUALIFIER,
    REGION_CODE,
    REQUEST_ID,
    TENDER_STOPS,
    TENDER_UPDATABLE_FIELDS,
    TENDER_WEIGHT_LB,
    TMS_LOAD_ID,
    UN_NUMBER,
)

from .eligibility import EligibilityPolicy, LanePolicy, Market

__all__ = [
    "ACCEPT_MIN_WINDOW",
    "DEFAULT_OFFER_TTL",
    "LANE_FIELDS",
    "MAX_WEIGHT_LB",
    "MIN_WEIGHT_LB",
    "TERMINAL_STATES",
    "UPDATABLE_FIELDS",
    "Action",
    "Assessment",
    "Capacity",
    "Centroid",
    "EtagMismatch",
    "Price",
    "State",
    "apply_facility_update",
    "apply_update",
    "assess",
    "check_reason_length",
    "choose_pickup_window",
    "compute_etag",
    "decline_state_reason",
    "derive_lane_fields",
    "derive_stops",
    "evaluate",
    "facility_code_key",
    "facility_input",
    "facility_name",
    "input_fields",
    "instant",
    "lane_fields_sent_with_stops",
    "mission_for",
    "offer_expired",
    "parse_facility_name",
    "parse_tender_name",
    "place_stop",
    "raise_if_invalid",
    "raise_not_placeable",
    "refuse_if_departed",
    "risk",
    "state_name",
    "target_state",
    "tender_name",
    "transition",
    "validate_facility",
    "validate_request_id",
    "validate_tender",
    "window_bounds",
    "zip5",
]

State = tender_pb2.Tender.State
Rule = tender_pb2.EligibilityViolation.Rule
Factor = tender_pb2.RiskReason.Factor
StopType = tender_pb2.Stop.Type
Source = tender_pb2.Stop.LocationSource

MIN_WEIGHT_LB, MAX_WEIGHT_LB = TENDER_WEIGHT_LB
MIN_PICKUP_WINDOW = timedelta(minutes=30)
ACCEPT_MIN_WINDOW = timedelta(minutes=30)
MAX_AHEAD = timedelta(days=14)
MAX_WINDOW = timedelta(days=14)
MAX_REASON = 500
DEFAULT_OFFER_TTL = timedelta(minutes=15)
#: Width of the estimated delivery window after the estimated arrival.
DELIVERY_ESTIMATE_WIDTH = timedelta(hours=2)
#: Slack below which a delivery window counts as tight.
TIGHT_SLACK = timedelta(hours=2)

TERMINAL_STATES = frozenset({State.STATE_REJECTED, State.STATE_DECLINED, State.STATE_LAPSED,
                             State.STATE_CANCELLED, State.STATE_DISPATCH_FAILED})
UPDATABLE_FIELDS = TENDER_UPDATABLE_FIELDS
_CAMEL = {"pickupWindow": "pickup_window", "deliveryWindow": "delivery_window", "weightLb": "weight_lb",
          "specialInstructions": "special_instructions", "tmsLoadId": "tms_load_id", "offeredRate": "offered_rate",
          "displayName": "display_name", "geofenceRadiusMeters": "geofence_radius_meters"}
#: The tender fields the stops give when there are stops (Tender, "Stops and the lane fields").
LANE_FIELDS = ("origin", "destination", "pickup_window", "delivery_window")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ZIP = re.compile(r"^\s*([0-9]{5})(?:[ -]?[0-9]{4})?\s*$")

_TMS_LOAD_ID = TMS_LOAD_ID
_REQUEST_ID = REQUEST_ID
_UN_NUMBER = UN_NUMBER
_HAZARD_CLASS = HAZARD_CLASS
_PACKING_GROUPS = frozenset(PACKING_GROUPS)
_E164 = E164
_HAZMAT_NOTE = re.compile(r"hazmat\s*[=:]\s*(true|false|yes|no|y|n|1|0)\b", re.IGNORECASE)


class EtagMismatch(Aborted):
    """ABORTED, reason ETAG_MISMATCH: the tender changed since the etag the caller sent."""

    default_reason = "ETAG_MISMATCH"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} changed since the etag sent; read it again", metadata={"name": name})


# --- names and time -----------------------------------------------------------------------------------


def tender_name(tender_id: str) -> str:
    return f"tenders/{tender_id}"


def parse_tender_name(name: str, *, field: str = "name") -> str:
    """The tender id in ``tenders/{tender}`` (ids are lowercase ULIDs; upper case is accepted and
    normalised), or INVALID_ARGUMENT (INVALID_RESOURCE_NAME) naming ``field``."""
    # Only ASCII is folded: str.lower() maps e.g. the Kelvin sign to "k", an id the pattern refuses.
    return parse_name(name, "tenders", field=field).lower()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant(ts: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp as the rules compare it: the zero value is the epoch (a client may send it; it is then
    refused as in the past), not "unset" as the runtime's ``from_timestamp`` reads it."""
    return from_timestamp(ts) or _EPOCH


def _window(start: datetime, end: datetime) -> time_window_pb2.TimeWindow:
    return time_window_pb2.TimeWindow(start_time=to_timestamp(start), end_time=to_timestamp(end))


def window_bounds(window: time_window_pb2.TimeWindow) -> tuple[datetime, datetime]:
    """(start, end) of a time window as aware UTC datetimes."""
    return instant(window.start_time), instant(window.end_time)



def state_name(state: int) -> str:
    return State.Name(state).removeprefix("STATE_")


# --- lifecycle ----------------------------------------------------------------------------------------


class Action(enum.Enum):
    """What can happen to a tender. The value is the event name (``haulmesh.tender.v1.<value>``)."""

    OFFER = "offered"
    REJECT = "rejected"
    ACCEPT = "accepted"
    DECLINE = "declined"
    LAPSE = "lapsed"
    CANCEL = "cancelled"
    DISPATCH_FAIL = "dispatch_failed"


_TARGET = {
    Action.OFFER: State.STATE_OFFERED,
    Action.REJECT: State.STATE_REJECTED,
    Action.ACCEPT: State.STATE_ACCEPTED,
    Action.DECLINE: State.STATE_DECLINED,
    Action.LAPSE: State.STATE_LAPSED,
    Action.CANCEL: State.STATE_CANCELLED,
    Action.DISPATCH_FAIL: State.STATE_DISPATCH_FAILED,
}
#: The states each action is legal from (besides repeating it, see :func:`transition`).
_LEGAL_FROM = {
    Action.OFFER: {State.STATE_PENDING, State.STATE_OFFERED},
    Action.REJECT: {State.STATE_PENDING, State.STATE_OFFERED},
    Action.ACCEPT: {State.STATE_OFFERED},
    Action.DECLINE: {State.STATE_OFFERED},
    Action.LAPSE: {State.STATE_OFFERED},
    Action.CANCEL: {State.STATE_PENDING, State.STATE_OFFERED, State.STATE_ACCEPTED},
    Action.DISPATCH_FAIL: {State.STATE_ACCEPTED},
}
#: Actions whose repetition on the state they produced is a no-op success (retries are safe).
_IDEMPOTENT = {Action.ACCEPT, Action.DECLINE, Action.LAPSE, Action.CANCEL, Action.DISPATCH_FAIL}


def target_state(action: Action) -> int:
    return _TARGET[action]


def transition(state: int, action: Action) -> tuple[int, bool]:
    """(new state, changed). Repeating an action on the state it produced returns (state, False).

    Any other illegal transition raises FAILED_PRECONDITION, reason INVALID_TENDER_STATE, metadata
    ``state``.
    """
    target = _TARGET[action]
    if action in _IDEMPOTENT and state == target:
        return state, False
    if state not in _LEGAL_FROM[action]:
        raise FailedPrecondition(
            f"cannot {action.name.lower().replace('_', ' ')} a tender in state {state_name(state)}",
            reason="INVALID_TENDER_STATE", metadata={"state": State.Name(state)})
    return target, True


# --- validation ---------------------------------------------------------------------------------------


def validate_request_id(request_id: str, *, field: str = "request_id") -> None:
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("request_id must be 1 to 128 characters from [A-Za-z0-9._:-]",
                              violations=[FieldViolation(field, "1 to 128 characters from [A-Za-z0-9._:-]")])


def _check_location(loc: location_pb2.Location, path: str, out: list[FieldViolation], present: bool) -> None:
    if not present:
        out.append(FieldViolation(path, "required"))
        return
    if not (math.isfinite(loc.lat) and -90 <= loc.lat <= 90):
        out.append(FieldViolation(f"{path}.lat", "must be a latitude in [-90, 90]"))
    if not (math.isfinite(loc.lon) and -180 <= loc.lon <= 180):
        out.append(FieldViolation(f"{path}.lon", "must be a longitude in [-180, 180]"))
    if loc.lat == 0 and loc.lon == 0:
        out.append(FieldViolation(path, "required: (0, 0) is treated as not set"))
    if len(loc.address) > MAX_ADDRESS:
        out.append(FieldViolation(f"{path}.address", f"at most {MAX_ADDRESS} characters"))


def _check_window(window: time_window_pb2.TimeWindow, path: str, out: list[FieldViolation]
                  ) -> tuple[datetime, datetime] | None:
    bad = False
    for part in ("start_time", "end_time"):
        if not window.HasField(part):
            out.append(FieldViolation(f"{path}.{part}", "required"))
            bad = True
    if bad:
        return None
    try:
        start, end = window_bounds(window)
    except (ValueError, OverflowError):
        out.append(FieldViolation(path, "timestamps out of range"))
        return None
    if end <= start:
        out.append(FieldViolation(f"{path}.end_time", "must be after start_time"))
        return None
    if end - start > MAX_WINDOW:
        out.append(FieldViolation(f"{path}.end_time", "the window must last at most 14 days"))
    return start, end


def validate_tender(tender: tender_pb2.Tender, now: datetime, *, prefix: str = "tender",
                    only: set[str] | None = None, lane_fields_given: bool | None = None) -> list[FieldViolation]:
    """Field violations of the input fields of ``tender`` (all of them, or the fields in ``only``).

    The load's places are checked as the client gave them: its lane fields (``lane_fields_given``; by default when
    the tender has no stops), with their own paths as before stops existed, or its stops."""
    out: list[FieldViolation] = []
    p = f"{prefix}." if prefix else ""

    def want(name: str) -> bool:
        return only is None or name in only

    if want("tms_load_id") and not _TMS_LOAD_ID.fullmatch(tender.tms_load_id):
        out.append(FieldViolation(f"{p}tms_load_id", "required: 1 to 64 characters from [A-Za-z0-9._:/-]"))
    if lane_fields_given is None:
        lane_fields_given = not tender.stops
    if lane_fields_given:
        _check_lane_fields(tender, p, now, out, want)
    elif only is None or only & {*LANE_FIELDS, "stops"}:
        # The stops give the lane fields (checked against them once placed: derive_lane_fields).
        _check_stops(tender.stops, f"{p}stops", now, out)
    if want("equipment") and (tender.equipment == equipment_pb2.EQUIPMENT_UNSPECIFIED
                              or tender.equipment not in equipment_pb2.Equipment.values()):
        out.append(FieldViolation(f"{p}equipment", "required: an Equipment value"))
    if want("weight_lb") and not MIN_WEIGHT_LB <= tender.weight_lb <= MAX_WEIGHT_LB:
        out.append(FieldViolation(f"{p}weight_lb", f"must be in [{MIN_WEIGHT_LB}, {MAX_WEIGHT_LB}] pounds"))
    if want("hazmat") and tender.HasField("hazmat"):
        _check_hazmat(tender.hazmat, f"{p}hazmat", out)
    if want("references"):
        _check_references(tender.references, f"{p}references", MAX_TENDER_REFERENCES, out)
    if want("commodities"):
        _check_commodities(tender.commodities, f"{p}commodities", out)
    if want("offered_rate") and tender.HasField("offered_rate"):
        rate = tender.offered_rate
        if not CURRENCY_CODE.fullmatch(rate.currency_code):
            out.append(FieldViolation(f"{p}offered_rate.currency_code", "required: an ISO 4217 code, e.g. USD"))

    if want("special_instructions") or want("hazmat"):
        text = tender.special_instructions
        if want("special_instructions") and len(text) > MAX_SPECIAL_INSTRUCTIONS:
            out.append(FieldViolation(f"{p}special_instructions", f"at most {MAX_SPECIAL_INSTRUCTIONS} characters"))
        notes = {m.group(1).lower() in {"true", "yes", "y", "1"} for m in _HAZMAT_NOTE.finditer(text)}
        if notes and notes != {tender.HasField("hazmat")}:
            out.append(FieldViolation(
                f"{p}special_instructions",
                "its Hazmat=... note contradicts the hazmat field (set hazmat for a hazmat load, and keep the "
                "note consistent)"))
    return out


def _check_lane_fields(tender: tender_pb2.Tender, p: str, now: datetime, out: list[FieldViolation],
                       want: Callable[[str], bool]) -> None:
    """The original form of a load: origin, destination and their windows."""
    if want("origin"):
        _check_location(tender.origin, f"{p}origin", out, tender.HasField("origin"))
    if want("destination"):
        _check_location(tender.destination, f"{p}destination", out, tender.HasField("destination"))
    pickup = None
    if want("pickup_window") or want("delivery_window"):
        if not tender.HasField("pickup_window"):
            if want("pickup_window"):
                out.append(FieldViolation(f"{p}pickup_window", "required"))
        else:
            sub: list[FieldViolation] = []
            pickup = _check_pickup_window(tender.pickup_window, f"{p}pickup_window", now, sub)
            if want("pickup_window"):
                out.extend(sub)
    if want("delivery_window") and tender.HasField("delivery_window"):
        _check_later_window(tender.delivery_window, f"{p}delivery_window", pickup, now, out)


def _check_pickup_window(window: time_window_pb2.TimeWindow, path: str, now: datetime, out: list[FieldViolation]
                         ) -> tuple[datetime, datetime] | None:
    """A pickup window: at least 30 minutes, ending in the future, starting at most 14 days ahead."""
    pickup = _check_window(window, path, out)
    if pickup is not None:
        start, end = pickup
        if end - start < MIN_PICKUP_WINDOW:
            out.append(FieldViolation(f"{path}.end_time", "the window must last at least 30 minutes"))
        if end <= now:
            out.append(FieldViolation(f"{path}.end_time", "must be in the future"))
        if start > now + MAX_AHEAD:
            out.append(FieldViolation(f"{path}.start_time", "at most 14 days ahead"))
    return pickup


def _check_later_window(window: time_window_pb2.TimeWindow, path: str, pickup: tuple[datetime, datetime] | None,
                        now: datetime, out: list[FieldViolation]) -> None:
    """A window after the pickup (the delivery's, an intermediate stop's): ends in the future and after the pickup
    window starts, starts at most 28 days ahead."""
    bounds = _check_window(window, path, out)
    if bounds is not None:
        start, end = bounds
        if end <= now:
            out.append(FieldViolation(f"{path}.end_time", "must be in the future"))
        if pickup is not None and end <= pickup[0]:
            out.append(FieldViolation(f"{path}.end_time", "must be after the pickup window's start_time"))
        if start > now + MAX_AHEAD + MAX_WINDOW:
            out.append(FieldViolation(f"{path}.start_time", "at most 28 days ahead"))


def _has_coordinates(loc: location_pb2.Location) -> bool:
    """Whether a location carries coordinates: (0, 0), proto3's default, means none (Stop, placement rule 2)."""
    return not (loc.lat == 0 and loc.lon == 0)


def _check_text(text: str, path: str, most: int, out: list[FieldViolation], *, least: int = 0) -> None:
    if not least <= len(text) <= most:
        out.append(FieldViolation(path, f"{'required: ' if least else ''}{least} to {most} characters"
                                  if least else f"at most {most} characters"))
    elif _CONTROL.search(text):
        out.append(FieldViolation(path, "must not contain control characters"))


def _check_stops(stops, path: str, now: datetime, out: list[FieldViolation]) -> None:
    lo, hi = TENDER_STOPS
    if not lo <= len(stops) <= hi:
        out.append(FieldViolation(path, f"{lo} to {hi} stops: the first a PICKUP, the last a DELIVERY"))
    pickup = None
    last = len(stops) - 1
    for i, stop in enumerate(stops):
        sp = f"{path}[{i}]"
        if stop.type not in (StopType.TYPE_PICKUP, StopType.TYPE_DELIVERY):
            out.append(FieldViolation(f"{sp}.type", "required: PICKUP or DELIVERY"))
        elif i == 0 and stop.type != StopType.TYPE_PICKUP:
            out.append(FieldViolation(f"{sp}.type", "the first stop is a PICKUP"))
        elif 0 < i == last and stop.type != StopType.TYPE_DELIVERY:
            out.append(FieldViolation(f"{sp}.type", "the last stop is a DELIVERY"))
        if _has_coordinates(stop.location):
            _check_location(stop.location, f"{sp}.location", out, True)
        elif len(stop.location.address) > MAX_ADDRESS:
            out.append(FieldViolation(f"{sp}.location.address", f"at most {MAX_ADDRESS} characters"))
        if stop.facility:
            try:
                parse_facility_name(stop.facility, field=f"{sp}.facility")
            except InvalidArgument as exc:
                out.extend(exc.violations)
        if stop.HasField("facility_code"):
            _check_facility_code(stop.facility_code, f"{sp}.facility_code", out)
        _check_text(stop.display_name, f"{sp}.display_name", MAX_STOP_NAME, out)
        if stop.HasField("address"):
            _check_postal_address(stop.address, f"{sp}.address", out)
        if i == 0:
            if not stop.HasField("window"):
                out.append(FieldViolation(f"{sp}.window", "required on the first stop: it is the pickup window"))
            else:
                pickup = _check_pickup_window(stop.window, f"{sp}.window", now, out)
        elif stop.HasField("window"):
            _check_later_window(stop.window, f"{sp}.window", pickup, now, out)
        _check_references(stop.references, f"{sp}.references", MAX_STOP_REFERENCES, out)


def _check_references(refs, path: str, most: int, out: list[FieldViolation]) -> None:
    if len(refs) > most:
        out.append(FieldViolation(path, f"at most {most} references"))
        return
    kinds = tender_pb2.Reference.Kind
    for i, ref in enumerate(refs):
        rp = f"{path}[{i}]"
        if ref.kind == kinds.KIND_UNSPECIFIED or ref.kind not in kinds.values():
            out.append(FieldViolation(f"{rp}.kind", "required: a Reference.Kind value"))
        if ref.qualifier and not REFERENCE_QUALIFIER.fullmatch(ref.qualifier):
            out.append(FieldViolation(f"{rp}.qualifier", "2 to 3 characters from [A-Z0-9], e.g. BM"))
        elif ref.kind == kinds.KIND_OTHER and not ref.qualifier:
            out.append(FieldViolation(f"{rp}.qualifier", "required for KIND_OTHER: the X12 qualifier, e.g. CR"))
        _check_text(ref.value, f"{rp}.value", MAX_REFERENCE_VALUE, out, least=1)
        _check_text(ref.description, f"{rp}.description", MAX_REFERENCE_DESCRIPTION, out)


def _check_commodities(lines, path: str, out: list[FieldViolation]) -> None:
    if len(lines) > MAX_COMMODITIES:
        out.append(FieldViolation(path, f"at most {MAX_COMMODITIES} commodity lines"))
        return
    for i, line in enumerate(lines):
        cp = f"{path}[{i}]"
        _check_text(line.description, f"{cp}.description", MAX_COMMODITY_DESCRIPTION, out, least=1)
        if not COMMODITY_PIECES[0] <= line.piece_count <= COMMODITY_PIECES[1]:
            low, high = COMMODITY_PIECES
            out.append(FieldViolation(f"{cp}.piece_count", f"must be in [{low}, {high}]"))
        if line.piece_unit and not PIECE_UNIT.fullmatch(line.piece_unit):
            out.append(FieldViolation(f"{cp}.piece_unit", "at most 8 characters from [A-Z0-9], e.g. PLT"))
        if not 0 <= line.weight_lb <= MAX_WEIGHT_LB:
            out.append(FieldViolation(f"{cp}.weight_lb", f"must be in [0, {MAX_WEIGHT_LB}] pounds"))
        if line.nmfc_code and not NMFC_CODE.fullmatch(line.nmfc_code):
            out.append(FieldViolation(f"{cp}.nmfc_code", "an NMFC item number, e.g. 100240 or 100240-02"))
        if line.freight_class and line.freight_class not in FREIGHT_CLASSES:
            out.append(FieldViolation(f"{cp}.freight_class", f"one of {', '.join(FREIGHT_CLASSES)}"))


def _check_postal_address(a: postal_address_pb2.PostalAddress, path: str, out: list[FieldViolation]) -> None:
    if len(a.lines) > MAX_ADDRESS_LINES:
        out.append(FieldViolation(f"{path}.lines", f"at most {MAX_ADDRESS_LINES} lines"))
    for i, line in enumerate(a.lines[:MAX_ADDRESS_LINES]):
        _check_text(line, f"{path}.lines[{i}]", MAX_ADDRESS_LINE, out, least=1)
    _check_text(a.city, f"{path}.city", MAX_CITY, out)
    if a.region and not REGION_CODE.fullmatch(a.region):
        out.append(FieldViolation(f"{path}.region", "1 to 3 characters from [A-Z0-9], e.g. TX"))
    if a.postal_code and not POSTAL_CODE.fullmatch(a.postal_code):
        out.append(FieldViolation(f"{path}.postal_code", "at most 15 characters from [A-Za-z0-9 -]"))
    if a.country_code and not COUNTRY_CODE.fullmatch(a.country_code):
        out.append(FieldViolation(f"{path}.country_code", "an ISO 3166-1 alpha-2 code, e.g. US"))


def _check_facility_code(code: tender_pb2.FacilityCode, path: str, out: list[FieldViolation]) -> None:
    if not FACILITY_CODE_QUALIFIER.fullmatch(code.qualifier):
        out.append(FieldViolation(f"{path}.qualifier", "required: the X12 N1-03 qualifier, 1 to 2 of [A-Z0-9]"))
    if not FACILITY_CODE.fullmatch(code.code):
        out.append(FieldViolation(f"{path}.code", "required: the X12 N1-04 code, 2 to 80 characters"))


def _check_hazmat(h: hazmat_pb2.Hazmat, path: str, out: list[FieldViolation]) -> None:
    if not _UN_NUMBER.fullmatch(h.un_number):
        out.append(FieldViolation(f"{path}.un_number", "required: UN or NA followed by four digits, e.g. UN1203"))
    if not h.hazard_class or len(h.hazard_class) > 8 or not _HAZARD_CLASS.fullmatch(h.hazard_class):
        out.append(FieldViolation(f"{path}.hazard_class", "required: a hazard class or division, e.g. 3 or 2.1"))
    if h.packing_group not in _PACKING_GROUPS:
        out.append(FieldViolation(f"{path}.packing_group", "must be I, II, III or empty"))
    if len(h.proper_shipping_name) > MAX_PROPER_SHIPPING_NAME:
        out.append(FieldViolation(f"{path}.proper_shipping_name", f"at most {MAX_PROPER_SHIPPING_NAME} characters"))
    if h.emergency_phone and not _E164.fullmatch(h.emergency_phone):
        out.append(FieldViolation(f"{path}.emergency_phone", "must be an E.164 number, e.g. +18004249300"))


def _input_stop(sent: tender_pb2.Stop) -> tender_pb2.Stop:
    """A stop as a client sent it: its placement (output only) cleared, to be placed again."""
    stop = tender_pb2.Stop()
    stop.CopyFrom(sent)
    for name in ("location_source", "placed_location", "geofence_radius_meters"):
        stop.ClearField(name)
    return stop


def input_fields(sent: tender_pb2.Tender) -> tender_pb2.Tender:
    """The input fields of a tender sent by a client (output-only fields ignored)."""
    inputs = tender_pb2.Tender(tms_load_id=sent.tms_load_id, equipment=sent.equipment, weight_lb=sent.weight_lb,
                               special_instructions=sent.special_instructions)
    for name in ("origin", "destination", "pickup_window", "delivery_window", "hazmat", "offered_rate"):
        if sent.HasField(name):
            getattr(inputs, name).CopyFrom(getattr(sent, name))
    inputs.stops.extend(_input_stop(s) for s in sent.stops)
    inputs.references.extend(sent.references)
    inputs.commodities.extend(sent.commodities)
    return inputs


# --- stops and their placement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Centroid:
    """A ZIP code's centroid (placement rule 3) and the place it names."""

    lat: float
    lon: float
    city: str
    region: str
    zip_code: str


def zip5(address: postal_address_pb2.PostalAddress) -> str | None:
    """The five-digit US ZIP code of an address (ZIP+4 cut to its ZIP), or None (no code, not US, not a ZIP)."""
    if address.country_code not in ("", "US"):
        return None
    match = _ZIP.fullmatch(address.postal_code)
    return match.group(1) if match else None


def _placed_stop(location: location_pb2.Location, source: int) -> tender_pb2.Stop:
    return tender_pb2.Stop(location=location, location_source=source, placed_location=location)


def derive_stops(tender: tender_pb2.Tender) -> None:
    """A tender given as origin and destination: its stops (a PICKUP at the origin in the pickup window, a
    DELIVERY at the destination in the delivery window), placed as given. Needs ``origin`` and ``destination``."""
    del tender.stops[:]
    pickup = _placed_stop(tender.origin, Source.LOCATION_SOURCE_GIVEN)
    pickup.type = StopType.TYPE_PICKUP
    if tender.HasField("pickup_window"):
        pickup.window.CopyFrom(tender.pickup_window)
    delivery = _placed_stop(tender.destination, Source.LOCATION_SOURCE_GIVEN)
    delivery.type = StopType.TYPE_DELIVERY
    if tender.HasField("delivery_window"):
        delivery.window.CopyFrom(tender.delivery_window)
    tender.stops.extend([pickup, delivery])


def place_stop(stop: tender_pb2.Stop, facility: facility_pb2.Facility | None, centroid: Centroid | None) -> bool:
    """Place ``stop`` in place by the first rule that applies (Stop: the facility found for it, its coordinates,
    its ZIP code's centroid); whether one did. The caller looked the facility and the centroid up."""
    given = stop.location
    if facility is not None:
        stop.facility = facility.name
        stop.location_source = Source.LOCATION_SOURCE_FACILITY
        stop.placed_location.CopyFrom(facility.location)
        stop.placed_location.address = given.address or facility.location.address or facility.display_name
        stop.geofence_radius_meters = facility.geofence_radius_meters
    elif _has_coordinates(given):
        stop.location_source = Source.LOCATION_SOURCE_GIVEN
        stop.placed_location.CopyFrom(given)
    elif centroid is not None:
        stop.location_source = Source.LOCATION_SOURCE_POSTAL_CODE
        stop.placed_location.CopyFrom(location_pb2.Location(
            lat=centroid.lat, lon=centroid.lon,
            address=given.address or f"{centroid.city}, {centroid.region} {centroid.zip_code}".strip(", ")))
    else:
        return False
    return True


def raise_not_placeable(violations: list[FieldViolation]) -> None:
    """INVALID_ARGUMENT, reason STOP_NOT_PLACEABLE, naming each stop that could not be placed."""
    if violations:
        raise InvalidArgument(f"stops that cannot be placed: {', '.join(v.field for v in violations[:5])}",
                              reason="STOP_NOT_PLACEABLE", violations=violations)


def _same_window(a: time_window_pb2.TimeWindow, b: time_window_pb2.TimeWindow) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def derive_lane_fields(tender: tender_pb2.Tender, sent: tender_pb2.Tender, check: set[str], *,
                       prefix: str = "tender") -> list[FieldViolation]:
    """Set ``origin``, ``destination`` and the windows from the (placed) stops; a violation for each field of
    ``check`` that ``sent`` sets to something else (Tender, "Stops and the lane fields")."""
    first, last = tender.stops[0], tender.stops[-1]
    derived = {"origin": first.placed_location, "destination": last.placed_location,
               "pickup_window": first.window if first.HasField("window") else None,
               "delivery_window": last.window if last.HasField("window") else None}
    side = {"origin": "the first stop's placed_location", "destination": "the last stop's placed_location",
            "pickup_window": "the first stop's window", "delivery_window": "the last stop's window"}
    out = []
    for name in LANE_FIELDS:
        if name not in check or not sent.HasField(name):
            continue
        mine, theirs = derived[name], getattr(sent, name)
        if name in ("origin", "destination"):
            same = (mine.lat, mine.lon) == (theirs.lat, theirs.lon)
        else:
            same = mine is not None and _same_window(mine, theirs)
        if not same:
            out.append(FieldViolation(f"{prefix}.{name}", f"given by the stops ({side[name]}): leave it unset or "
                                                          "send the same"))
    for name, value in derived.items():
        if value is None:
            tender.ClearField(name)
        else:
            getattr(tender, name).CopyFrom(value)
    return out


def raise_if_invalid(violations: list[FieldViolation]) -> None:
    if violations:
        fields = ", ".join(v.field for v in violations[:5])
        raise InvalidArgument(f"invalid tender: {fields}", violations=violations)


# --- updates ------------------------------------------------------------------------------------------


def _normalise_path(path: str) -> str:
    return _CAMEL.get(path, path)


def _mask_paths(mask: list[str], updatable: tuple[str, ...]) -> list[str]:
    """An update mask's paths in snake_case (an empty mask or ``*``: every updatable field), or INVALID_ARGUMENT
    naming those that cannot be updated."""
    paths = [_normalise_path(p) for p in mask if p]
    if not paths or paths == ["*"]:
        paths = list(updatable)
    bad = [p for p in paths if p not in updatable]
    if bad:
        raise InvalidArgument(
            f"update_mask names fields that cannot be updated: {', '.join(bad)}",
            violations=[FieldViolation("update_mask", f"{p!r} is not updatable (updatable: "
                                                      f"{', '.join(updatable)})") for p in bad])
    return paths


def apply_update(current: tender_pb2.Tender, patch: tender_pb2.Tender, mask: list[str], now: datetime
                 ) -> tuple[tender_pb2.Tender, bool]:
    """The tender with ``patch``'s masked fields applied, and whether the load must be re-evaluated.

    PENDING/OFFERED: any updatable field (an empty mask or ``*``: all of them). ACCEPTED: only
    ``special_instructions``. Terminal states: nothing (INVALID_TENDER_STATE).
    """
    paths = _mask_paths(mask, UPDATABLE_FIELDS)
    state = current.state
    if state in TERMINAL_STATES:
        raise FailedPrecondition(f"a {state_name(state)} tender cannot be changed",
                                 reason="INVALID_TENDER_STATE", metadata={"state": State.Name(state)})
    if state == State.STATE_ACCEPTED and set(paths) != {"special_instructions"}:
        raise FailedPrecondition("an ACCEPTED tender accepts changes to special_instructions only",
                                 reason="INVALID_TENDER_STATE", metadata={"state": State.Name(state)})
    updated = tender_pb2.Tender()
    updated.CopyFrom(current)
    for path in paths:
        if path in {"origin", "destination", "pickup_window", "delivery_window", "hazmat", "offered_rate"}:
            if patch.HasField(path):
                getattr(updated, path).CopyFrom(getattr(patch, path))
            else:
                updated.ClearField(path)
        elif path == "stops":
            del updated.stops[:]
            updated.stops.extend(_input_stop(s) for s in patch.stops)
        elif path in {"references", "commodities"}:
            updated.ClearField(path)
            getattr(updated, path).extend(getattr(patch, path))
        else:
            setattr(updated, path, getattr(patch, path))
    _follow_lane_fields(updated, patch, set(paths))
    # An update that sends no stops gives its places by the lane fields (whose paths its violations name, as before
    # stops existed); the stops followed them.
    violations = validate_tender(updated, now, only=set(paths) | ({"hazmat"} if "special_instructions" in paths
                                                                  else set()),
                                 lane_fields_given=not ("stops" in paths and patch.stops))
    raise_if_invalid(violations)
    return updated, state != State.STATE_ACCEPTED and set(paths) != {"special_instructions"}


def lane_fields_sent_with_stops(patch: tender_pb2.Tender, mask: list[str]) -> set[str]:
    """The lane fields an update must send equal to what its new stops give (those it names beside them)."""
    paths = {_normalise_path(p) for p in mask if p}
    if not paths or paths == {"*"}:
        paths = set(UPDATABLE_FIELDS)
    return paths & set(LANE_FIELDS) if "stops" in paths and patch.stops else set()


def _unplace(stop: tender_pb2.Stop) -> None:
    for name in ("location_source", "placed_location", "geofence_radius_meters"):
        stop.ClearField(name)


def _follow_lane_fields(updated: tender_pb2.Tender, patch: tender_pb2.Tender, paths: set[str]) -> None:
    """Keep the stops and the lane fields one load after an update (UpdateTenderRequest.update_mask): the stops
    sent win; else a lane field changes its stop; a tender without stops (or ``stops`` cleared) derives them."""
    touched = paths & {*LANE_FIELDS, "stops"}
    if not touched or ("stops" in paths and patch.stops):
        return  # nothing of the load's places, or new stops to place (their lane fields follow once placed)
    if "stops" in paths or not updated.stops:
        if updated.HasField("origin") and updated.HasField("destination"):
            derive_stops(updated)
        else:
            del updated.stops[:]  # the lane fields' own checks name what is missing
        return
    first, last = updated.stops[0], updated.stops[-1]
    for name, stop in (("origin", first), ("destination", last)):
        if name in paths:
            stop.location.CopyFrom(getattr(updated, name))
            stop.ClearField("facility")
            stop.ClearField("facility_code")
            _unplace(stop)
    for name, stop in (("pickup_window", first), ("delivery_window", last)):
        if name in paths:
            if updated.HasField(name):
                stop.window.CopyFrom(getattr(updated, name))
            else:
                stop.ClearField("window")


def compute_etag(tender: tender_pb2.Tender | facility_pb2.Facility) -> str:
    """A version tag of a tender's (or a facility's) content (update_time changes on every write, so does the
    tag)."""
    copy = type(tender)()
    copy.CopyFrom(tender)
    copy.etag = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:20]


# --- evaluation ---------------------------------------------------------------------------------------


@dataclass
class Assessment:
    """What the policy says about a load before capacity and price are known."""

    lane: lane_pb2.Lane
    lane_policy: LanePolicy | None
    origin_market: Market | None
    destination_market: Market | None
    route_miles: float
    transit: timedelta
    #: Earliest feasible pickup: the pickup window's start, or now if later.
    earliest_pickup: datetime
    pickup_end: datetime
    #: True if every start in the pickup window needs night operation.
    needs_night: bool
    violations: list[tender_pb2.EligibilityViolation] = field(default_factory=list)

    def violate(self, rule: int, description: str, field_path: str = "") -> None:
        self.violations.append(tender_pb2.EligibilityViolation(rule=rule, description=description,
                                                               field=field_path))


def _candidate_starts(start: datetime, end: datetime) -> list[datetime]:
    starts, t = [], start
    while t < end and len(starts) < 14 * 48:
        starts.append(t)
        t += timedelta(minutes=30)
    return starts or [start]


def assess(tender: tender_pb2.Tender, policy: EligibilityPolicy, now: datetime) -> Assessment:
    """Lane, distance, transit time and every eligibility violation the policy alone can decide."""
    o, d = tender.origin, tender.destination
    facts = policy.facts
    om, dm = facts.market_for(o.lat, o.lon), facts.market_for(d.lat, d.lon)
    lane = lane_pb2.Lane(origin_region=om.code if om else "", destination_region=dm.code if dm else "")
    lane_policy = policy.lane(om.code, dm.code) if om and dm else None
    # The lane facts' plan through every stop in order: the same miles the mission will plan and the quote will
    # price.
    points = [(s.placed_location.lat, s.placed_location.lon) for s in tender.stops] or [(o.lat, o.lon),
                                                                                         (d.lat, d.lon)]
    miles = facts.plan(points).miles
    transit = facts.transit(miles)
    p_start, p_end = window_bounds(tender.pickup_window)
    earliest = max(p_start, now)
    zone = om.timezone if om else "UTC"
    needs_night = all(facts.night_minutes(s, transit, zone) > 0 for s in _candidate_starts(earliest, p_end))
    a = Assessment(lane=lane, lane_policy=lane_policy, origin_market=om, destination_market=dm,
                   route_miles=miles, transit=transit, earliest_pickup=earliest, pickup_end=p_end,
                   needs_night=needs_night)
    lane_text = f"lane {lane.origin_region or '(unserved)'} > {lane.destination_region or '(unserved)'}"
    if om is None:
        a.violate(Rule.RULE_LANE_NOT_APPROVED, "the origin is not within the service area of any fleet market",
                  "origin")
    if dm is None:
        a.violate(Rule.RULE_LANE_NOT_APPROVED, "the destination is not within the service area of any fleet market",
                  "destination")
    if om and dm and lane_policy is None:
        a.violate(Rule.RULE_LANE_NOT_APPROVED, f"{lane_text} is not on the fleet's approved lane list")
    if tender.equipment and equipment_pb2.Equipment.Name(tender.equipment) not in policy.equipment:
        a.violate(Rule.RULE_EQUIPMENT_NOT_SUPPORTED,
                  f"no vehicle of the fleet pulls {equipment_pb2.Equipment.Name(tender.equipment)}", "equipment")
    max_weight = (lane_policy.max_weight_lb if lane_policy and lane_policy.max_weight_lb else policy.max_weight_lb)
    if tender.weight_lb > max_weight:
        a.violate(Rule.RULE_OVERWEIGHT, f"{tender.weight_lb} lb exceeds the {max_weight} lb the fleet may carry"
                  + (f" on {lane_text}" if lane_policy and lane_policy.max_weight_lb else ""), "weight_lb")
    if tender.HasField("hazmat"):
        cls = tender.hazmat.hazard_class
        if cls not in policy.hazmat_classes_carried:
            a.violate(Rule.RULE_HAZMAT_NOT_PERMITTED, f"the fleet does not carry hazmat class {cls}",
                      "hazmat.hazard_class")
        elif lane_policy is not None and cls not in lane_policy.hazmat_classes:
            a.violate(Rule.RULE_HAZMAT_NOT_PERMITTED, f"{lane_text} is not approved for hazmat class {cls}",
                      "hazmat.hazard_class")
    if lane_policy is not None and not lane_policy.night_operation and needs_night:
        a.violate(Rule.RULE_NIGHT_OPERATION_RESTRICTED,
                  f"every pickup time in the window needs night operation ({facts.night_start_hour:02d}:00-"
                  f"{facts.night_end_hour:02d}:00 local), which {lane_text} does not permit", "pickup_window")
    for market, loc, name in ((om, o, "origin"), (dm, d, "destination")):
        if market and not market.urban_core_approved and market.miles_to(loc.lat, loc.lon) <= \
                market.urban_core_radius_miles:
            a.violate(Rule.RULE_URBAN_ZONE_RESTRICTED,
                      f"the {name} is in the {market.name} urban core, not approved for autonomous operation", name)
    regions = {c for c in (lane.origin_region, lane.destination_region) if c}
    move_end = p_end + transit
    for advisory in policy.advisories(regions, earliest, move_end):
        if advisory.restricted:
            a.violate(Rule.RULE_WEATHER_RESTRICTED,
                      f"{advisory.description or 'weather outside the operating limits'} in {advisory.region}"
                      f" until {advisory.end.isoformat()}")
    if tender.HasField("delivery_window"):
        _, d_end = window_bounds(tender.delivery_window)
        if earliest + transit > d_end:
            a.violate(Rule.RULE_WINDOW_INFEASIBLE,
                      f"the route takes {_hours(transit)}: picked up at {earliest.isoformat()} the load arrives "
                      f"after the delivery window ends", "delivery_window")
    return a


def _hours(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def risk(tender: tender_pb2.Tender, a: Assessment, policy: EligibilityPolicy, planned_start: datetime
         ) -> tuple[int, list[tender_pb2.RiskReason]]:
    """Risk score 0-100 and its reasons (largest contribution first): a deterministic function of the load,
    the lane policy, the planned start and the weather advisories."""
    reasons: list[tuple[int, int, str]] = []
    if tender.HasField("hazmat"):
        cls = tender.hazmat.hazard_class
        severe = cls.startswith(("1", "2.3", "6.1", "7"))
        reasons.append((Factor.FACTOR_HAZMAT, 30 if severe else 20, f"hazmat class {cls} ({tender.hazmat.un_number})"))
    zone = a.origin_market.timezone if a.origin_market else "UTC"
    facts = policy.facts
    night = facts.night_minutes(planned_start, a.transit, zone)
    if night:
        reasons.append((Factor.FACTOR_NIGHT_OPERATION, min(25, 5 + round(3 * night / 60)),
                        f"{_hours(timedelta(minutes=night))} of the route is between {facts.night_start_hour:02d}:00 "
                        f"and {facts.night_end_hour:02d}:00 local"))
    regions = {c for c in (a.lane.origin_region, a.lane.destination_region) if c}
    advisories = [w for w in policy.advisories(regions, planned_start, planned_start + a.transit) if not w.restricted]
    if advisories:
        reasons.append((Factor.FACTOR_ADVERSE_WEATHER, min(25, 15 * len(advisories)),
                        "; ".join(f"{w.description or 'weather advisory'} in {w.region}" for w in advisories)))
    urban = [name for market, loc, name in ((a.origin_market, tender.origin, "origin"),
                                            (a.destination_market, tender.destination, "destination"))
             if market and market.miles_to(loc.lat, loc.lon) <= market.urban_core_radius_miles]
    if urban:
        reasons.append((Factor.FACTOR_URBAN_SEGMENT, 6 * len(urban),
                        f"the {' and the '.join(urban)} {'is' if len(urban) == 1 else 'are'} in a dense urban core"))
    lp = a.lane_policy
    if lp is not None and lp.pilot:
        reasons.append((Factor.FACTOR_NEW_LANE, 10, "the lane is in its pilot phase: human check-ins apply"))
    if lp is not None and lp.connectivity_gap_miles > 0:
        reasons.append((Factor.FACTOR_CONNECTIVITY_GAP, min(15, 3 + round(lp.connectivity_gap_miles / 10)),
                        f"{lp.connectivity_gap_miles:g} mi of the route has known cellular coverage gaps"))
    if tender.HasField("delivery_window"):
        _, d_end = window_bounds(tender.delivery_window)
        slack = d_end - (planned_start + a.transit)
        if slack < TIGHT_SLACK:
            reasons.append((Factor.FACTOR_TIGHT_WINDOW, 15 if slack < timedelta(hours=1) else 10,
                            f"{_hours(max(slack, timedelta(0)))} of slack before the delivery window ends"))
    max_weight = lp.max_weight_lb if lp and lp.max_weight_lb else policy.max_weight_lb
    ratio = tender.weight_lb / max_weight
    if ratio >= 0.85:
        reasons.append((Factor.FACTOR_HEAVY_LOAD, min(15, 5 + round(10 * (ratio - 0.85) / 0.15)),
                        f"{tender.weight_lb} lb is {ratio:.0%} of the {max_weight} lb maximum"))
    reasons.sort(key=lambda r: (-r[1], r[0]))
    out = [tender_pb2.RiskReason(factor=f, contribution=c, description=t) for f, c, t in reasons]
    return min(100, sum(r.contribution for r in out)), out


@dataclass(frozen=True)
class Capacity:
    """What the fleet said about capacity: availability windows within the pickup window."""

    windows: list[tuple[datetime, datetime]]


@dataclass(frozen=True)
class Price:
    """What billing quoted."""

    quote: str
    total: money_pb2.Money
    lines: list[charge_line_pb2.ChargeLine]
    expire_time: datetime | None


def evaluate(tender: tender_pb2.Tender, a: Assessment, policy: EligibilityPolicy, capacity: Capacity | None,
             price: Price | None, now: datetime, offer_ttl: timedelta = DEFAULT_OFFER_TTL) -> tender_pb2.Tender:
    """``tender`` evaluated: OFFERED with its offer, or REJECTED with every reason. ``lane`` is set.

    ``capacity`` and ``price`` are None when the assessment already rejects the load (they are not asked).
    """
    result = tender_pb2.Tender()
    result.CopyFrom(tender)
    result.lane.CopyFrom(a.lane)
    result.ClearField("offer")
    del result.rejection_reasons[:]
    violations = list(a.violations)
    windows = [(max(s, a.earliest_pickup), e) for s, e in (capacity.windows if capacity else [])
               if e > a.earliest_pickup]
    if capacity is not None and not windows:
        violations.append(tender_pb2.EligibilityViolation(
            rule=Rule.RULE_NO_CAPACITY, description="no vehicle with the right equipment is available at the origin "
            "in the pickup window", field="pickup_window"))
    if violations or price is None:
        result.state = State.STATE_REJECTED
        result.rejection_reasons.extend(violations)
        result.state_reason = "not eligible: " + "; ".join(v.description for v in violations)
        return result
    planned = windows[0][0]
    score, reasons = risk(tender, a, policy, planned)
    eta = planned + a.transit
    expire = min(now + offer_ttl, a.pickup_end)
    if price.expire_time is not None:
        expire = min(expire, price.expire_time)
    expire = expire.replace(microsecond=expire.microsecond // 1000 * 1000)
    offer = result.offer
    offer.pickup_availability.extend(_window(s, e) for s, e in windows)
    offer.estimated_delivery_window.CopyFrom(_window(eta, eta + DELIVERY_ESTIMATE_WIDTH))
    offer.price.CopyFrom(price.total)
    offer.price_lines.extend(price.lines)
    offer.quote = price.quote
    offer.route_miles = a.route_miles
    offer.risk_score = score
    offer.risk_reasons.extend(reasons)
    offer.create_time.CopyFrom(to_timestamp(now))
    offer.expire_time.CopyFrom(to_timestamp(expire))
    result.state = State.STATE_OFFERED
    result.state_reason = ""
    return result


def offer_expired(tender: tender_pb2.Tender, now: datetime) -> bool:
    """True if the tender is OFFERED and its offer's expire_time has passed (millisecond precision, as the
    lapse loop's schedule)."""
    return (tender.state == State.STATE_OFFERED and tender.offer.HasField("expire_time")
            and tender.offer.expire_time.ToMilliseconds() <= int(now.timestamp() * 1000))


def choose_pickup_window(tender: tender_pb2.Tender, requested: time_window_pb2.TimeWindow | None
                         ) -> time_window_pb2.TimeWindow:
    """The pickup window AcceptTender books: the request's (inside one availability window, >= 30 min) or the
    first availability window."""
    available = [window_bounds(w) for w in tender.offer.pickup_availability]
    if requested is None or not (requested.HasField("start_time") or requested.HasField("end_time")):
        if not available:
            raise FailedPrecondition("the offer has no pickup availability", reason="INVALID_TENDER_STATE",
                                     metadata={"state": State.Name(tender.state)})
        return _window(*available[0])
    out: list[FieldViolation] = []
    bounds = _check_window(requested, "pickup_window", out)
    if bounds is not None:
        start, end = bounds
        if end - start < ACCEPT_MIN_WINDOW:
            out.append(FieldViolation("pickup_window.end_time", "the window must last at least 30 minutes"))
        elif not any(s <= start and end <= e for s, e in available):
            out.append(FieldViolation("pickup_window", "must be within one of offer.pickup_availability"))
    if out:
        raise InvalidArgument("pickup_window is not one of the offered windows", violations=out)
    return _window(*bounds)  # type: ignore[misc]


def check_reason_length(text: str, field_path: str) -> None:
    if len(text) > MAX_REASON:
        raise InvalidArgument(f"{field_path} is too long",
                              violations=[FieldViolation(field_path, f"at most {MAX_REASON} characters")])


def decline_state_reason(reason: int, comment: str) -> str:
    """The ``state_reason`` of a declined tender: the comment, else the reason's name; INVALID_ARGUMENT for a
    reason that is not a DeclineTenderRequest.Reason value."""
    if reason not in tender_service_pb2.DeclineTenderRequest.Reason.values():
        raise InvalidArgument("reason is not a DeclineTenderRequest.Reason value",
                              violations=[FieldViolation("reason", "unknown value")])
    reason_name = tender_service_pb2.DeclineTenderRequest.Reason.Name(reason).removeprefix("REASON_")
    return comment or ("" if reason_name == "UNSPECIFIED" else f"declined: {reason_name}")


# --- dispatch -----------------------------------------------------------------------------------------

#: Mission states from which the tender may still be changed or cancelled (the vehicle has not departed).
_BEFORE_DEPARTURE = {mission_pb2.Mission.STATE_DISPATCHED, mission_pb2.Mission.STATE_PRE_TRIP}


def mission_for(tender: tender_pb2.Tender) -> mission_pb2.Mission:
    """The mission CreateMission is asked for once ``tender`` is ACCEPTED: its load, and a pickup in the
    accepted window and a delivery in the tender's (or the offer's estimated) delivery window."""
    delivery = tender.delivery_window if tender.HasField("delivery_window") else \
        tender.offer.estimated_delivery_window
    mission = mission_pb2.Mission(
        tender=tender.name, quote=tender.offer.quote,
        load=mission_pb2.LoadDetails(tms_load_id=tender.tms_load_id, equipment=tender.equipment,
                                     weight_lb=tender.weight_lb, special_instructions=tender.special_instructions))
    if not tender.stops:  # recorded before tenders had stops
        mission.stops.extend([
            mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=tender.origin,
                             planned_window=tender.accepted_pickup_window),
            mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=tender.destination,
                             planned_window=delivery)])
    last = len(tender.stops) - 1
    for i, stop in enumerate(tender.stops):
        # The two enums share their numbers (PICKUP 1, DELIVERY 2).
        added = mission.stops.add(type=stop.type, location=stop.placed_location)
        if i == 0:
            added.planned_window.CopyFrom(tender.accepted_pickup_window)
        elif i == last:
            added.planned_window.CopyFrom(delivery)
        elif stop.HasField("window"):
            added.planned_window.CopyFrom(stop.window)
        if stop.geofence_radius_meters:
            added.geofence.CopyFrom(geofence_pb2.Geofence(circle=geofence_pb2.Geofence.Circle(
                center=stop.placed_location, radius_meters=stop.geofence_radius_meters)))
    if tender.HasField("hazmat"):
        mission.load.hazmat.CopyFrom(tender.hazmat)
    return mission


def refuse_if_departed(mission_name: str, mission: mission_pb2.Mission) -> None:
    """FAILED_PRECONDITION, MISSION_IN_PROGRESS, once the vehicle of ``mission`` (the tender's mission
    ``mission_name`` as read) has left the origin; a mission in EXCEPTION counts by the state it resumes."""
    state = mission.resume_state if mission.state == mission_pb2.Mission.STATE_EXCEPTION else mission.state
    if state not in _BEFORE_DEPARTURE:
        raise FailedPrecondition(f"{mission_name} has departed; the tender can no longer be changed",
                                 reason="MISSION_IN_PROGRESS", metadata={"mission": mission_name})


# --- the facility registry ----------------------------------------------------------------------------


def facility_name(facility_id: str) -> str:
    return f"facilities/{facility_id}"


def parse_facility_name(name: str, *, field: str = "name") -> str:
    """The facility id in ``facilities/{facility}``, or INVALID_ARGUMENT (INVALID_RESOURCE_NAME) naming ``field``."""
    return parse_name(name, "facilities", field=field)


def facility_code_key(code: tender_pb2.FacilityCode) -> str:
    """A code as one string: the qualifier (never a slash) and the code."""
    return f"{code.qualifier}/{code.code}"


def facility_input(sent: facility_pb2.Facility) -> facility_pb2.Facility:
    """The input fields of a facility sent by a client (output-only fields ignored)."""
    inputs = facility_pb2.Facility(display_name=sent.display_name, geofence_radius_meters=sent.geofence_radius_meters,
                                   codes=sent.codes)
    for name in ("location", "address"):
        if sent.HasField(name):
            getattr(inputs, name).CopyFrom(getattr(sent, name))
    return inputs


def validate_facility(facility: facility_pb2.Facility, *, prefix: str = "facility",
                      only: set[str] | None = None) -> list[FieldViolation]:
    """Field violations of a facility's input fields (all, or those in ``only``)."""
    out: list[FieldViolation] = []

    def want(name: str) -> bool:
        return only is None or name in only

    if want("display_name"):
        _check_text(facility.display_name, f"{prefix}.display_name", MAX_FACILITY_NAME, out, least=1)
    if want("location"):
        _check_location(facility.location, f"{prefix}.location", out, facility.HasField("location"))
    if want("address") and facility.HasField("address"):
        _check_postal_address(facility.address, f"{prefix}.address", out)
    radius = facility.geofence_radius_meters
    low, high = FACILITY_GEOFENCE_RADIUS_METERS
    if want("geofence_radius_meters") and radius != 0 and not (math.isfinite(radius) and low <= radius <= high):
        out.append(FieldViolation(f"{prefix}.geofence_radius_meters", f"0 (the default) or {low} to {high} meters"))
    if want("codes"):
        if len(facility.codes) > MAX_FACILITY_CODES:
            out.append(FieldViolation(f"{prefix}.codes", f"at most {MAX_FACILITY_CODES} codes"))
        seen: set[str] = set()
        for i, code in enumerate(facility.codes[:MAX_FACILITY_CODES]):
            _check_facility_code(code, f"{prefix}.codes[{i}]", out)
            if facility_code_key(code) in seen:
                out.append(FieldViolation(f"{prefix}.codes[{i}]", "the same code twice"))
            seen.add(facility_code_key(code))
    return out


def apply_facility_update(current: facility_pb2.Facility, patch: facility_pb2.Facility, mask: list[str]
                          ) -> facility_pb2.Facility:
    """The facility with ``patch``'s masked fields applied (an empty mask or ``*``: every updatable field), or
    INVALID_ARGUMENT naming the fields that cannot be updated or are invalid."""
    paths = _mask_paths(mask, FACILITY_UPDATABLE_FIELDS)
    updated = facility_pb2.Facility()
    updated.CopyFrom(current)
    for path in paths:
        if path in ("location", "address"):
            if patch.HasField(path):
                getattr(updated, path).CopyFrom(getattr(patch, path))
            else:
                updated.ClearField(path)
        elif path == "codes":
            del updated.codes[:]
            updated.codes.extend(patch.codes)
        else:
            setattr(updated, path, getattr(patch, path))
    violations = validate_facility(updated, only=set(paths))
    if violations:
        raise InvalidArgument(f"invalid facility: {', '.join(v.field for v in violations[:5])}", violations=violations)
    return updated
