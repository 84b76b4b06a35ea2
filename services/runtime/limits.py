"""Field limits that both the services enforcing them and the gateway publishing them (its OpenAPI document) read.

A limit lives here when a client can be told it in a schema: a pattern, a range, a set of values. The services
check their fields against these constants; :data:`FIELD_SCHEMAS` states the same constants as JSON Schema,
keyed by the proto field's full name, for services/gateway/rest/openapi.py. Rules that tie fields together (a
window's end after its start) stay in the services' domain code: no schema of one field can state them.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "COMMODITY_PIECES",
    "COUNTRY_CODE",
    "CURRENCY_CODE",
    "E164",
    "FACILITY_CODE",
    "FACILITY_CODE_QUALIFIER",
    "FACILITY_GEOFENCE_RADIUS_METERS",
    "FACILITY_NAME",
    "FACILITY_UPDATABLE_FIELDS",
    "FIELD_SCHEMAS",
    "FREIGHT_CLASSES",
    "HAZARD_CLASS",
    "KPI_BASELINE_MINOR",
    "KPI_REPORT_SECONDS",
    "KPI_REPORT_TIME",
    "MARKET_CODE",
    "MAX_ADDRESS",
    "MAX_ADDRESS_LINE",
    "MAX_ADDRESS_LINES",
    "MAX_CITY",
    "MAX_COMMAND_EXCEPTION_ID",
    "MAX_COMMAND_REASON",
    "MAX_COMMODITIES",
    "MAX_COMMODITY_DESCRIPTION",
    "MAX_EXCEPTION_DESCRIPTION",
    "MAX_EXCEPTION_RESOLUTION",
    "MAX_FACILITY_CODES",
    "MAX_FACILITY_NAME",
    "MAX_PROPER_SHIPPING_NAME",
    "MAX_REFERENCE_DESCRIPTION",
    "MAX_REFERENCE_VALUE",
    "MAX_REROUTE_WAYPOINTS",
    "MAX_SPECIAL_INSTRUCTIONS",
    "MAX_STOP_NAME",
    "MAX_STOP_REFERENCES",
    "MAX_TENDER_REFERENCES",
    "MESSAGE_SCHEMAS",
    "NMFC_CODE",
    "PACKING_GROUPS",
    "PIECE_UNIT",
    "PLAIN_TEXT",
    "POSTAL_CODE",
    "REFERENCE_QUALIFIER",
    "REGION_CODE",
    "REQUEST_ID",
    "TENDER_STOPS",
    "TENDER_UPDATABLE_FIELDS",
    "TENDER_WEIGHT_LB",
    "TMS_LOAD_ID",
    "UN_NUMBER",
    "mask_schema",
]

#: ``request_id`` / ``Idempotency-Key``: 1 to 128 characters from [A-Za-z0-9._:-].
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: A market (region) code such as US-TX-HOU: country, state or province, market.
MARKET_CODE = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}-[A-Z]{3}$")
#: A tender's load id in the TMS: 1 to 64 characters from [A-Za-z0-9._:/-].
TMS_LOAD_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
#: ISO 4217 currency code.
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
#: A tender's cargo weight in pounds, inclusive (80,000 lb: the US federal gross-weight limit).
TENDER_WEIGHT_LB = (1, 80_000)
#: Hazmat packing groups (49 CFR 173); empty when none applies.
PACKING_GROUPS = ("", "I", "II", "III")
#: A UN / NA hazardous-material number, e.g. UN1203.
UN_NUMBER = re.compile(r"^(UN|NA)[0-9]{4}$")
#: Hazard classes 1-9 with divisions (1.1-1.6, 2.1-2.3, 4.1-4.3, 5.1-5.2, 6.1-6.2) and class 1 compatibility
#: group letters (e.g. "1.4S").
HAZARD_CLASS = re.compile(r"^(1(\.[1-6][A-LN-S]?)?|2(\.[1-3])?|3|4(\.[1-3])?|5(\.[12])?|6(\.[12])?|7|8|9)$")
#: An E.164 telephone number, e.g. +18004249300.
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
#: Longest text, in characters: a location's address, a hazmat proper shipping name, a tender's instructions.
MAX_ADDRESS = 500
MAX_PROPER_SHIPPING_NAME = 200
MAX_SPECIAL_INSTRUCTIONS = 2000
#: An operator's command to a truck (telemetry's domain/operator_commands.py): why, the exception it answers, and
#: a reroute's waypoints.
MAX_COMMAND_REASON = 500
MAX_COMMAND_EXCEPTION_ID = 64
MAX_REROUTE_WAYPOINTS = 100
#: A mission exception (mission's domain/changes.py): what happened, and how it was resolved.
MAX_EXCEPTION_DESCRIPTION = 1000
MAX_EXCEPTION_RESOLUTION = 1000
#: A truck's refusal of a takeover step as recorded on the takeover (mission's domain/takeover.py).
MAX_TAKEOVER_REFUSAL = 500

#: A KPI report's baseline cost per mile, in minor units (10,000.00 a mile in a two-decimal currency: beyond
#: any truck).
KPI_BASELINE_MINOR = (1, 1_000_000)
#: A KPI report window's times (start_time, end_time) as Unix seconds, inclusive: 1970-01-01T00:00:00Z (no fact of
#: the platform is older than the Unix epoch its indexes count from) to 9999-12-31T23:59:59Z (RFC 3339's and
#: Python's last second; nanoseconds within it are fine).
KPI_REPORT_SECONDS = (0, 253_402_300_799)
#: The lower end of that range in the times' proto-JSON form (RFC 3339 as protobuf reads it: upper-case T and Z, at
#: most 9 fractional digits), for the OpenAPI document: a date-time format has no bounds in JSON Schema, a pattern
#: can state years 1970-9999. On 1970-01-01 a positive offset could name a time in 1969 (00:30+01:00), so on that
#: date a time is given in UTC or with a negative offset (+00:00 is UTC); 1969-12-31 with a negative offset, though it
#: can name a time inside the range, is not admitted either (a regular expression cannot compare a time with its
#: offset in less than kilobytes). The upper end is every Timestamp's own: protobuf reads nothing after
#: 9999-12-31T23:59:59.999999999Z, so 9999-12-31 with a negative offset may be refused as INVALID_JSON, as in any
#: other date-time field. Dates that do not exist (02-30) are the date-time format's to refuse.
KPI_REPORT_TIME = re.compile(
    r"^(?!1970-01-01T.*\+(?!00:00$))"
    r"(?:19[7-9][0-9]|[2-9][0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$")
#: The fields UpdateTender may change (an empty mask or ``*``: all of them).
TENDER_UPDATABLE_FIELDS = ("origin", "destination", "pickup_window", "delivery_window", "equipment", "weight_lb",
                           "hazmat", "special_instructions", "stops", "references", "commodities", "offered_rate")


def mask_schema(fields: tuple[str, ...]) -> dict[str, Any]:
    """An update_mask (proto-JSON: comma-separated paths) naming only ``fields``, in snake_case or lowerCamelCase,
    or ``*``."""
    names = sorted({spelling for f in fields for spelling in (f, re.sub(r"_([a-z0-9])", lambda m: m[1].upper(), f))},
                   key=lambda n: (-len(n), n))  # longest first: no name is cut short by a prefix of it
    one = "(?:" + "|".join(re.escape(n) for n in names) + ")"
    return {"pattern": rf"^(?:\*|{one}(?:,{one})*)?$"}


#: Keyed by the proto field's full name, or (for a field of a message type used elsewhere with other limits) by
#: the request's full name and the field path inside it.
FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "haulmesh.billing.v1.GetKpiReportRequest.baseline_cost_per_mile.amount_minor": {
        "minimum": KPI_BASELINE_MINOR[0], "maximum": KPI_BASELINE_MINOR[1]},
    "haulmesh.billing.v1.GetKpiReportRequest.start_time": {"pattern": KPI_REPORT_TIME.pattern},
    "haulmesh.billing.v1.GetKpiReportRequest.end_time": {"pattern": KPI_REPORT_TIME.pattern},
    "haulmesh.tender.v1.UpdateTenderRequest.update_mask": mask_schema(TENDER_UPDATABLE_FIELDS),
    "haulmesh.type.v1.Lane.origin_region": {"pattern": MARKET_CODE.pattern},
    "haulmesh.type.v1.Lane.destination_region": {"pattern": MARKET_CODE.pattern},
    "haulmesh.type.v1.Money.currency_code": {"pattern": CURRENCY_CODE.pattern},
    "haulmesh.tender.v1.Tender.tms_load_id": {"pattern": TMS_LOAD_ID.pattern},
    "haulmesh.type.v1.Hazmat.packing_group": {"enum": list(PACKING_GROUPS)},
    "haulmesh.type.v1.Hazmat.un_number": {"pattern": UN_NUMBER.pattern},
    "haulmesh.type.v1.Hazmat.hazard_class": {"pattern": HAZARD_CLASS.pattern},
    "haulmesh.type.v1.Hazmat.emergency_phone": {"anyOf": [{"const": ""}, {"pattern": E164.pattern}]},
    "haulmesh.type.v1.Hazmat.proper_shipping_name": {"maxLength": MAX_PROPER_SHIPPING_NAME},
    "haulmesh.type.v1.Location.lat": {"minimum": -90, "maximum": 90},
    "haulmesh.type.v1.Location.lon": {"minimum": -180, "maximum": 180},
    "haulmesh.type.v1.Location.address": {"maxLength": MAX_ADDRESS},
    "haulmesh.tender.v1.Tender.special_instructions": {"maxLength": MAX_SPECIAL_INSTRUCTIONS},
    "haulmesh.tender.v1.Tender.weight_lb": {"minimum": TENDER_WEIGHT_LB[0], "maximum": TENDER_WEIGHT_LB[1]},
    "haulmesh.telemetry.v1.VehicleCommand.reason": {"minLength": 1, "maxLength": MAX_COMMAND_REASON},
    "haulmesh.telemetry.v1.StopVehicle.exception_id": {"maxLength": MAX_COMMAND_EXCEPTION_ID},
    "haulmesh.telemetry.v1.Reroute.exception_id": {"maxLength": MAX_COMMAND_EXCEPTION_ID},
    "haulmesh.telemetry.v1.Reroute.waypoints": {"minItems": 1, "maxItems": MAX_REROUTE_WAYPOINTS},
    "haulmesh.mission.v1.MissionException.description": {"maxLength": MAX_EXCEPTION_DESCRIPTION},
    "haulmesh.mission.v1.MissionException.reroute_waypoints": {"maxItems": MAX_REROUTE_WAYPOINTS},
    # Required text is more than white space (the service strips it before it looks).
    "haulmesh.mission.v1.ResolveMissionExceptionRequest.exception_id": {"maxLength": MAX_COMMAND_EXCEPTION_ID,
                                                                        "pattern": r"\S"},
    "haulmesh.mission.v1.ResolveMissionExceptionRequest.resolution": {"maxLength": MAX_EXCEPTION_RESOLUTION,
                                                                      "pattern": r"\S"},
}

#: Rules of a whole message a schema can state, keyed by its full name: a oneof of which one member is required
#: (proto cannot mark a oneof REQUIRED; at most one is stated for every oneof by the document itself), a required
#: repeated field. ``required`` adds to the fields' own.
MESSAGE_SCHEMAS: dict[str, dict[str, Any]] = {
    "haulmesh.telemetry.v1.VehicleCommand": {
        "anyOf": [{"required": [member]} for member in ("stop", "reroute", "resume", "cancelAssignment")]},
    # proto3 cannot mark a repeated field REQUIRED: a reroute without waypoints is no reroute.
    "haulmesh.telemetry.v1.Reroute": {"required": ["waypoints"]},
}


# --- a tender's stops, references and commodities, and the facility registry (issue 15: what an X12 204 carries) ---

#: A tender's stops, inclusive: a pickup and a delivery at least; at most the mission's own bound
#: (services/mission/domain/checks.py MAX_STOPS), so every tender's stops pass to its mission.
TENDER_STOPS = (2, 10)
#: References of a tender, of one stop; their value and description (X12 L11-01 is 1/50 in later versions; 80
#: leaves room), and the X12 reference qualifier (element 128: 2 to 3 characters).
MAX_TENDER_REFERENCES = 20
MAX_STOP_REFERENCES = 10
MAX_REFERENCE_VALUE = 80
MAX_REFERENCE_DESCRIPTION = 80
REFERENCE_QUALIFIER = re.compile(r"^[A-Z0-9]{2,3}$")
#: A stop's place name (X12 N1-02 is 1/60).
MAX_STOP_NAME = 60
#: Commodity lines of a tender, their description, piece count (inclusive), the pieces' unit code, the NMFC item
#: (item number, optionally a sub: "100240-02") and the NMFC freight classes.
MAX_COMMODITIES = 20
MAX_COMMODITY_DESCRIPTION = 200
COMMODITY_PIECES = (0, 1_000_000)
PIECE_UNIT = re.compile(r"^[A-Z0-9]{1,8}$")
NMFC_CODE = re.compile(r"^[0-9]{1,6}(-[0-9]{1,2})?$")
FREIGHT_CLASSES = ("50", "55", "60", "65", "70", "77.5", "85", "92.5", "100", "110", "125", "150", "175", "200",
                   "250", "300", "400", "500")
#: A postal address (X12 N3: two lines of 1/55; N4: city 2/30, state 2/2, postal code 3/15, country 2/3; we take
#: ISO 3166-1 alpha-2 countries and up to 3-character region codes).
MAX_ADDRESS_LINES = 2
MAX_ADDRESS_LINE = 55
MAX_CITY = 30
REGION_CODE = re.compile(r"^[A-Z0-9]{1,3}$")
POSTAL_CODE = re.compile(r"^[A-Za-z0-9 -]{1,15}$")
COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
#: A facility's id code: X12 N1-03 (qualifier, 1/2) and N1-04 (code, 2/80, no control characters); codes per
#: facility; its display name; its geofence radius in meters, inclusive (haulmesh.type.v1.Geofence's circle; 0:
#: the mission's default).
FACILITY_CODE_QUALIFIER = re.compile(r"^[A-Z0-9]{1,2}$")
FACILITY_CODE = re.compile(r"^[^\x00-\x1f\x7f]{2,80}$")
MAX_FACILITY_CODES = 10
MAX_FACILITY_NAME = 200
FACILITY_GEOFENCE_RADIUS_METERS = (25, 50_000)
#: The fields UpdateFacility may change (an empty mask or ``*``: all of them).
FACILITY_UPDATABLE_FIELDS = ("display_name", "location", "address", "geofence_radius_meters", "codes")


#: Free text without control characters (a tender's and a facility's names, references, commodity lines, addresses).
PLAIN_TEXT = re.compile(r"^[^\x00-\x1f\x7f]*$")
#: A tender stop's facility: empty, or a facility's resource name.
FACILITY_NAME = re.compile(r"^facilities/[a-z0-9][a-z0-9-]{0,62}$")


def _empty_or(pattern: re.Pattern[str]) -> dict[str, Any]:
    return {"anyOf": [{"const": ""}, {"pattern": pattern.pattern}]}


def _text(least: int, most: int) -> dict[str, Any]:
    pattern = PLAIN_TEXT.pattern.replace("]*$", "]+$") if least else PLAIN_TEXT.pattern
    return {"type": "string", **({"minLength": least} if least else {}), "maxLength": most, "pattern": pattern}


FIELD_SCHEMAS.update({
    # None (the lane fields give the two stops) or 2 to 10; "never one" is the tender's rule of stops against lane
    # fields (the document's examples show one item of every list, so it is not stated as a `not` here).
    "haulmesh.tender.v1.Tender.stops": {"maxItems": TENDER_STOPS[1]},
    "haulmesh.tender.v1.Stop.facility": _empty_or(FACILITY_NAME),
    "haulmesh.tender.v1.Tender.references": {"maxItems": MAX_TENDER_REFERENCES},
    "haulmesh.tender.v1.Tender.commodities": {"maxItems": MAX_COMMODITIES},
    "haulmesh.tender.v1.Stop.display_name": _text(0, MAX_STOP_NAME),
    "haulmesh.tender.v1.Stop.references": {"maxItems": MAX_STOP_REFERENCES},
    "haulmesh.tender.v1.Reference.qualifier": _empty_or(REFERENCE_QUALIFIER),
    "haulmesh.tender.v1.Reference.value": _text(1, MAX_REFERENCE_VALUE),
    "haulmesh.tender.v1.Reference.description": _text(0, MAX_REFERENCE_DESCRIPTION),
    "haulmesh.tender.v1.Commodity.description": _text(1, MAX_COMMODITY_DESCRIPTION),
    "haulmesh.tender.v1.Commodity.piece_count": {"minimum": COMMODITY_PIECES[0], "maximum": COMMODITY_PIECES[1]},
    "haulmesh.tender.v1.Commodity.piece_unit": _empty_or(PIECE_UNIT),
    "haulmesh.tender.v1.Commodity.weight_lb": {"minimum": 0, "maximum": TENDER_WEIGHT_LB[1]},
    "haulmesh.tender.v1.Commodity.nmfc_code": _empty_or(NMFC_CODE),
    "haulmesh.tender.v1.Commodity.freight_class": {"enum": ["", *FREIGHT_CLASSES]},
    "haulmesh.tender.v1.FacilityCode.qualifier": {"pattern": FACILITY_CODE_QUALIFIER.pattern},
    "haulmesh.tender.v1.FacilityCode.code": {"pattern": FACILITY_CODE.pattern},
    "haulmesh.tender.v1.Facility.display_name": _text(1, MAX_FACILITY_NAME),
    "haulmesh.tender.v1.Facility.codes": {"maxItems": MAX_FACILITY_CODES, "uniqueItems": True},
    "haulmesh.tender.v1.Facility.geofence_radius_meters": {
        "anyOf": [{"const": 0}, {"minimum": FACILITY_GEOFENCE_RADIUS_METERS[0],
                                 "maximum": FACILITY_GEOFENCE_RADIUS_METERS[1]}]},
    "haulmesh.tender.v1.UpdateFacilityRequest.update_mask": mask_schema(FACILITY_UPDATABLE_FIELDS),
    "haulmesh.type.v1.PostalAddress.lines": {"maxItems": MAX_ADDRESS_LINES, "items": _text(1, MAX_ADDRESS_LINE)},
    "haulmesh.type.v1.PostalAddress.city": _text(0, MAX_CITY),
    "haulmesh.type.v1.PostalAddress.region": _empty_or(REGION_CODE),
    "haulmesh.type.v1.PostalAddress.postal_code": _empty_or(POSTAL_CODE),
    "haulmesh.type.v1.PostalAddress.country_code": _empty_or(COUNTRY_CODE),
})

# A tender is given by its lane fields or by its stops (tender.proto, "Stops and the lane fields"); UpdateTender's
# body is the same schema, and before stops it required the three lane fields outright.
MESSAGE_SCHEMAS["haulmesh.tender.v1.Tender"] = {
    "anyOf": [{"required": ["origin", "destination", "pickupWindow"]},
              {"required": ["stops"], "properties": {"stops": {"minItems": TENDER_STOPS[0]}}}]}
