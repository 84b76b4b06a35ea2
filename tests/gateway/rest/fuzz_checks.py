"""Schemathesis hooks of the REST fuzz runs (loaded through ``SCHEMATHESIS_HOOKS``): one check, stricter in
what it forgives than it looks.

``positive_data_acceptance`` fails whenever a request the document allows is refused. A few refusals depend on
what no JSON Schema can state, and only those are forgiven, each by what the server says:

* ``INVALID_FILTER``: an AIP-160 filter is a small language (services/runtime/_filters.py), not a pattern;
* ``INVALID_PAGE_TOKEN``: a page token is valid only if this API issued it, for the same query (AIP-158);
* ``FAILED_PRECONDITION`` (gRPC code 9) with one of :data:`STATE_REASONS`: the request is well formed but the
  resource's state refuses it;
* a rule that ties fields together or holds against the clock (:data:`CROSS_FIELD`, each field with its
  descriptions): a window's end after its start and within its maximum length, a location other than 0,0;
* a message sent as query parameters (a KPI report's ``lane``, ``baselineCostPerMile``) is checked whole: when
  one of its parameters is there, its other required ones must be too, which OpenAPI cannot say of separate
  parameters; forgiven only for a parameter the request did not send;
* :data:`REQUEST_ONLY_VALUES`: values a response may carry and a request may not set, in one shared schema;
* :data:`DNS_DEPENDENT`: a webhook destination must resolve, to public addresses only (the SSRF guard), which
  depends on DNS at the time, not on the URL's form (which the document does state).

Anything else a schema-valid request is refused with stays a failure: the document must state that limit.
"""

from __future__ import annotations

import json
import re

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

#: ErrorInfo reasons of refusals no schema can express (see the module's docstring). STOP_NOT_PLACEABLE: whether a
#: stop can be placed depends on the carrier's facility registry and on which ZIP codes exist, not on the form.
BEYOND_SCHEMA_REASONS = frozenset({"INVALID_FILTER", "INVALID_PAGE_TOKEN", "STOP_NOT_PLACEABLE"})
_FAILED_PRECONDITION = 9
#: FAILED_PRECONDITION reasons a well-formed request meets through the state of what it names (gRPC code 9 with
#: any other reason stays a failure): tender and mission lifecycles, offers and quotes that lapse, the fleet.
STATE_REASONS = frozenset({
    "INVALID_TENDER_STATE", "OFFER_EXPIRED", "MISSION_IN_PROGRESS", "QUOTE_EXPIRED", "NO_RATE_CARD",
    "INVALID_MISSION_STATE", "MISSION_NOT_DISPATCHED", "MISSION_UNAVAILABLE", "INVALID_DELIVERY_STATE",
    "VEHICLE_NOT_ELIGIBLE", "VEHICLE_ASSIGNED", "NO_VEHICLE_AVAILABLE", "CHECK_IN_REQUIRED",
    "PRE_TRIP_CHECK_FAILED", "POD_DISPUTED", "POD_DISPUTE_ESCALATED", "REPORT_TOO_LARGE",
    "MISSION_FRAMES_EXCEEDED", "MISSION_SCOPE_UNSUPPORTED", "EVIDENCE_INCOMPLETE", "NO_CURRENT_MISSION",
})
_WINDOW_ORDER = ("must be after start_time", "start_time and end_time are both required")
#: Rules between fields, or against the clock, as (field without indices, description prefixes): a window's end
#: after its start and within its length, in the future and not too far ahead; a location other than 0,0.
CROSS_FIELD: dict[str, tuple[str, ...]] = {
    "tender.pickup_window.end_time": (*_WINDOW_ORDER, "the window must last", "must be in the future"),
    "tender.pickup_window.start_time": ("at most 14 days ahead",),
    "tender.delivery_window.end_time": (*_WINDOW_ORDER, "the window must last", "must be in the future",
                                        "must be after pickup_window.start_time"),
    "tender.delivery_window.start_time": ("at most 28 days ahead",),
    "pickup_window": ("start_time and end_time are both required", "must be within one of offer.pickup_availability"),
    "pickup_window.end_time": (*_WINDOW_ORDER, "the window must last"),
    "mission.stops.planned_window": ("start_time and end_time are both required",),
    "mission.stops.planned_window.end_time": _WINDOW_ORDER,
    # The report window: its end after its start, at most 366 days after it (its times' own range, 1970-9999, is a
    # one-field limit the document states: services/runtime/limits.py KPI_REPORT_TIME, never forgiven here).
    "start_time": ("must be before end_time",),
    "end_time": ("must be after start_time", "must be at most"),
    # A command's expiry against the clock; a waypoint other than 0,0.
    "vehicle_command.expire_time": ("must be in the future", "at most 24 hours ahead"),
    "vehicle_command.reroute.waypoints": ("lat in [-90, 90] and lon in [-180, 180], not 0,0",),
    # A mission exception's waypoints are a reroute's: with another contingency they mean nothing.
    "exception.reroute_waypoints": ("only for REROUTE",),
    "tender.origin": ("required: (0, 0)", "given by the stops"),
    "tender.destination": ("required: (0, 0)", "given by the stops"),
    "tender.pickup_window": ("given by the stops",),
    "tender.delivery_window": ("given by the stops",),
    "facility.location": ("required: (0, 0)",),
    # A tender's stops (issue 15): their order (a pickup first, a delivery last), the first one's window (it is the
    # pickup window) and the windows' rules as above, an X12 qualifier that only KIND_OTHER requires.
    "tender.stops": ("2 to 10 stops",),  # none, when the lane fields give them: a rule between fields
    "tender.stops.type": ("the first stop is a PICKUP", "the last stop is a DELIVERY"),
    "tender.stops.window": ("required on the first stop",),
    "tender.stops.window.end_time": (*_WINDOW_ORDER, "the window must last", "must be in the future",
                                     "must be after the pickup window's start_time"),
    "tender.stops.window.start_time": ("at most 14 days ahead", "at most 28 days ahead"),
    "tender.stops.references.qualifier": ("required for KIND_OTHER",),
    "tender.references.qualifier": ("required for KIND_OTHER",),
}
#: A webhook subscription's SUSPENDED state is the service's own: answered, never accepted.
REQUEST_ONLY_VALUES = ("webhook_subscription.state",)
#: Field violation descriptions of services/gateway/webhooks/destinations.py's address checks, on its URL only.
DNS_DEPENDENT = {"webhook_subscription.url": ("host does not resolve", "must resolve to public addresses only")}


def _camel(path: str) -> str:
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m[1].upper(), part) for part in path.split("."))


def _forgiven_field(field: str, description: str, query: dict) -> bool:
    bare = re.sub(r"\[[^]]*\]", "", field)  # mission.stops[2].planned_window -> mission.stops.planned_window
    if description.startswith(CROSS_FIELD.get(bare, ())) or description.startswith(DNS_DEPENDENT.get(bare, ())) \
            or bare in REQUEST_ONLY_VALUES:
        return True
    # A message sent in part as query parameters: another of its parameters was sent, this one was not.
    message, _, _ = _camel(bare).rpartition(".")
    sent_part = any(str(key).startswith(f"{message}.") for key in query) if message else False
    return sent_part and _camel(bare) not in query and bare not in query


def _refused_beyond_schema(body: bytes, query: dict) -> bool:
    try:
        status = json.loads(body)
    except ValueError:
        return False
    if not isinstance(status, dict):
        return False
    details = [d for d in status.get("details", []) if isinstance(d, dict)]
    reasons = {d.get("reason") for d in details if str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")}
    if status.get("code") == _FAILED_PRECONDITION:
        return bool(reasons) and reasons <= STATE_REASONS
    if reasons and reasons <= BEYOND_SCHEMA_REASONS:
        return True
    fields = [(v.get("field", ""), v.get("description", "")) for d in details
              if str(d.get("@type", "")).endswith("google.rpc.BadRequest") for v in d.get("fieldViolations", [])]
    return bool(fields) and all(_forgiven_field(f, text, query) for f, text in fields)


@schemathesis.check
def positive_data_acceptance_within_schema(ctx, response, case) -> bool | None:
    """``positive_data_acceptance``, forgiving only the refusals the module's docstring lists."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:
        if response.status_code == 400 and _refused_beyond_schema(response.content, dict(case.query or {})):
            return None
        if response.status_code == 422 and _key_reused(response.content):
            return None
        raise


def _key_reused(body: bytes) -> bool:
    """422 REQUEST_ID_REUSED: the fuzzer sent an Idempotency-Key (``"0"``, say) it had sent before with another body.
    Whether a key is free depends on what was sent before, not on the request's form; CreateFacility, whose valid
    bodies are easy to generate, meets it first."""
    try:
        status = json.loads(body)
    except ValueError:
        return False
    details = status.get("details", []) if isinstance(status, dict) else []
    return {d.get("reason") for d in details if isinstance(d, dict)
            and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")} == {"REQUEST_ID_REUSED"}
