"""Field limits that both the services enforcing them and the gateway publishing them (its OpenAPI document) read.

A limit lives here when a client can be told it in a schema: a pattern, a range, a set of values. The services
check their fields against these constants; :data:`FIELD_SCHEMAS` states the same constants as JSON Schema,
keyed by the proto field's full name, for services/gateway/rest/openapi.py. Rules that tie fields together (a
window's end after its start) stay in the services' domain code: no schema of one field can state them.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CURRENCY_CODE", "FIELD_SCHEMAS", "MARKET_CODE", "PACKING_GROUPS", "REQUEST_ID", "TENDER_WEIGHT_LB",
           "TMS_LOAD_ID"]

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

FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "haulmesh.type.v1.Lane.origin_region": {"pattern": MARKET_CODE.pattern},
    "haulmesh.type.v1.Lane.destination_region": {"pattern": MARKET_CODE.pattern},
    "haulmesh.type.v1.Money.currency_code": {"pattern": CURRENCY_CODE.pattern},
    "haulmesh.tender.v1.Tender.tms_load_id": {"pattern": TMS_LOAD_ID.pattern},
    "haulmesh.type.v1.Hazmat.packing_group": {"enum": list(PACKING_GROUPS)},
    "haulmesh.tender.v1.Tender.weight_lb": {"minimum": TENDER_WEIGHT_LB[0], "maximum": TENDER_WEIGHT_LB[1]},
}
