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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from haulmesh.mission.v1 import mission_pb2
from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from haulmesh.type.v1 import (
    charge_line_pb2,
    equipment_pb2,
    hazmat_pb2,
    lane_pb2,
    location_pb2,
    money_pb2,
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
    E164,
    HAZARD_CLASS,
    MAX_ADDRESS,
    MAX_PROPER_SHIPPING_NAME,
    MAX_SPECIAL_INSTRUCTIONS,
    PACKING_GROUPS,
    REQUEST_ID,
    TENDER_UPDATABLE_FIELDS,
    TENDER_WEIGHT_LB,
    TMS_LOAD_ID,
    UN_NUMBER,
)

from .eligibility import EligibilityPolicy, LanePolicy, Market

__all__ = [
    "ACCEPT_MIN_WINDOW",
    "DEFAULT_OFFER_TTL",
    "MAX_WEIGHT_LB",
    "MIN_WEIGHT_LB",
    "TERMINAL_STATES",
    "UPDATABLE_FIELDS",
    "Action",
    "Assessment",
    "Capacity",
    "EtagMismatch",
    "Price",
    "State",
    "apply_update",
    "assess",
    "check_reason_length",
    "choose_pickup_window",
    "compute_etag",
    "decline_state_reason",
    "evaluate",
    "input_fields",
    "instant",
    "mission_for",
    "offer_expired",
    "parse_tender_name",
    "raise_if_invalid",
    "refuse_if_departed",
    "risk",
    "state_name",
    "target_state",
    "tender_name",
    "transition",
    "validate_request_id",
    "validate_tender",
    "window_bounds",
]

State = tender_pb2.Tender.State
Rule = tender_pb2.EligibilityViolation.Rule
Factor = tender_pb2.RiskReason.Factor

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
          "specialInstructions": "special_instructions", "tmsLoadId": "tms_load_id"}

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
                    only: set[str] | None = None) -> list[FieldViolation]:
    """Field violations of the input fields of ``tender`` (all of them, or the fields in ``only``)."""
    out: list[FieldViolation] = []
    p = f"{prefix}." if prefix else ""

    def want(name: str) -> bool:
        return only is None or name in only

    if want("tms_load_id") and not _TMS_LOAD_ID.fullmatch(tender.tms_load_id):
        out.append(FieldViolation(f"{p}tms_load_id", "required: 1 to 64 characters from [A-Za-z0-9._:/-]"))
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
            pickup = _check_window(tender.pickup_window, f"{p}pickup_window", sub)
            if want("pickup_window"):
                out.extend(sub)
                if pickup is not None:
                    start, end = pickup
                    if end - start < MIN_PICKUP_WINDOW:
                        out.append(FieldViolation(f"{p}pickup_window.end_time",
                                                  "the window must last at least 30 minutes"))
                    if end <= now:
                        out.append(FieldViolation(f"{p}pickup_window.end_time", "must be in the future"))
                    if start > now + MAX_AHEAD:
                        out.append(FieldViolation(f"{p}pickup_window.start_time", "at most 14 days ahead"))
    if want("delivery_window") and tender.HasField("delivery_window"):
        delivery = _check_window(tender.delivery_window, f"{p}delivery_window", out)
        if delivery is not None:
            start, end = delivery
            if end <= now:
                out.append(FieldViolation(f"{p}delivery_window.end_time", "must be in the future"))
            if pickup is not None and end <= pickup[0]:
                out.append(FieldViolation(f"{p}delivery_window.end_time", "must be after pickup_window.start_time"))
            if start > now + MAX_AHEAD + MAX_WINDOW:
                out.append(FieldViolation(f"{p}delivery_window.start_time", "at most 28 days ahead"))
    if want("equipment") and (tender.equipment == equipment_pb2.EQUIPMENT_UNSPECIFIED
                              or tender.equipment not in equipment_pb2.Equipment.values()):
        out.append(FieldViolation(f"{p}equipment", "required: an Equipment value"))
    if want("weight_lb") and not MIN_WEIGHT_LB <= tender.weight_lb <= MAX_WEIGHT_LB:
        out.append(FieldViolation(f"{p}weight_lb", f"must be in [{MIN_WEIGHT_LB}, {MAX_WEIGHT_LB}] pounds"))
    if want("hazmat") and tender.HasField("hazmat"):
        _check_hazmat(tender.hazmat, f"{p}hazmat", out)
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


def input_fields(sent: tender_pb2.Tender) -> tender_pb2.Tender:
    """The input fields of a tender sent by a client (output-only fields ignored)."""
    inputs = tender_pb2.Tender(tms_load_id=sent.tms_load_id, equipment=sent.equipment, weight_lb=sent.weight_lb,
                               special_instructions=sent.special_instructions)
    for name in ("origin", "destination", "pickup_window", "delivery_window", "hazmat"):
        if sent.HasField(name):
            getattr(inputs, name).CopyFrom(getattr(sent, name))
    return inputs


def raise_if_invalid(violations: list[FieldViolation]) -> None:
    if violations:
        fields = ", ".join(v.field for v in violations[:5])
        raise InvalidArgument(f"invalid tender: {fields}", violations=violations)


# --- updates ------------------------------------------------------------------------------------------


def _normalise_path(path: str) -> str:
    return _CAMEL.get(path, path)


def apply_update(current: tender_pb2.Tender, patch: tender_pb2.Tender, mask: list[str], now: datetime
                 ) -> tuple[tender_pb2.Tender, bool]:
    """The tender with ``patch``'s masked fields applied, and whether the load must be re-evaluated.

    PENDING/OFFERED: any updatable field (an empty mask or ``*``: all of them). ACCEPTED: only
    ``special_instructions``. Terminal states: nothing (INVALID_TENDER_STATE).
    """
    paths = [_normalise_path(p) for p in mask if p]
    if not paths or paths == ["*"]:
        paths = list(UPDATABLE_FIELDS)
    bad = [p for p in paths if p not in UPDATABLE_FIELDS]
    if bad:
        raise InvalidArgument(
            f"update_mask names fields that cannot be updated: {', '.join(bad)}",
            violations=[FieldViolation("update_mask", f"{p!r} is not updatable (updatable: "
                                                      f"{', '.join(UPDATABLE_FIELDS)})") for p in bad])
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
        if path in {"origin", "destination", "pickup_window", "delivery_window", "hazmat"}:
            if patch.HasField(path):
                getattr(updated, path).CopyFrom(getattr(patch, path))
            else:
                updated.ClearField(path)
        else:
            setattr(updated, path, getattr(patch, path))
    violations = validate_tender(updated, now, only=set(paths) | ({"hazmat"} if "special_instructions" in paths
                                                                  else set()))
    raise_if_invalid(violations)
    return updated, state != State.STATE_ACCEPTED and set(paths) != {"special_instructions"}


def compute_etag(tender: tender_pb2.Tender) -> str:
    """A version tag of the tender's content (update_time changes on every write, so does the tag)."""
    copy = tender_pb2.Tender()
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
    # The lane facts' plan: the same miles the mission will plan and the quote will price.
    miles = facts.plan([(o.lat, o.lon), (d.lat, d.lon)]).miles
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
                                     weight_lb=tender.weight_lb, special_instructions=tender.special_instructions),
        stops=[mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=tender.origin,
                                planned_window=tender.accepted_pickup_window),
               mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=tender.destination,
                                planned_window=delivery)])
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
