"""A multi-stop tender and the facility registry over REST (issue 15), through the real gateway and mesh."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx

from .conftest import bearer, error_info


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(hours_ahead: float, hours: float) -> dict:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours_ahead)
    return {"startTime": _rfc3339(start), "endTime": _rfc3339(start + timedelta(hours=hours))}


def _facility(code: str) -> dict:
    return {"displayName": "ACME DC 7 - Houston", "location": {"lat": 29.8069, "lon": -95.4012},
            "address": {"lines": ["1200 Dock Rd"], "city": "Houston", "region": "TX", "postalCode": "77018"},
            "geofenceRadiusMeters": 300, "codes": [{"qualifier": "93", "code": code}]}


def _tender(code: str) -> dict:
    """What an X12 204 carries, as the REST API takes it: three stops (coordinates, an N1 code, a ZIP code)."""
    return {
        "tmsLoadId": f"REST-STP-{uuid.uuid4().hex[:10]}", "equipment": "EQUIPMENT_DRY_VAN_53FT", "weightLb": 38000,
        "stops": [
            {"type": "TYPE_PICKUP", "location": {"lat": 29.749907, "lon": -95.358421}, "window": _window(20, 10)},
            {"type": "TYPE_PICKUP", "facilityCode": {"qualifier": "93", "code": code}, "window": _window(24, 4)},
            {"type": "TYPE_DELIVERY", "displayName": "CONSIGNEE",
             "address": {"city": "Atlanta", "region": "GA", "postalCode": "30303"}},
        ],
        "references": [{"kind": "KIND_BILL_OF_LADING", "qualifier": "BM", "value": "BOL-1"},
                       {"kind": "KIND_OTHER", "qualifier": "CR", "value": "CUST-REF-9"}],
        "commodities": [{"description": "Paper towels", "pieceCount": 22, "pieceUnit": "PLT", "freightClass": "70"}],
        "offeredRate": {"currencyCode": "USD", "amountMinor": "245000"},
    }


async def test_a_multi_stop_tender_placed_from_the_registry_over_rest(http: httpx.AsyncClient, token,
                                                                      vehicle: str) -> None:
    credentials = bearer(token("stops-co"))
    code = f"DC-{uuid.uuid4().hex[:8]}"
    facility = await http.post("/api/v1/facilities", json=_facility(code), headers=credentials)
    assert facility.status_code == 200, facility.text
    sent = _tender(code)
    answer = await http.post("/api/v1/tenders", json=sent, headers=credentials)
    assert answer.status_code == 200, answer.text
    tender = answer.json()
    assert tender["state"] == "STATE_OFFERED", tender
    assert [s["locationSource"] for s in tender["stops"]] == [
        "LOCATION_SOURCE_GIVEN", "LOCATION_SOURCE_FACILITY", "LOCATION_SOURCE_POSTAL_CODE"]
    assert tender["stops"][1]["facility"] == facility.json()["name"]
    assert tender["stops"][1]["geofenceRadiusMeters"] == 300
    assert tender["origin"] == tender["stops"][0]["placedLocation"]
    assert tender["destination"] == tender["stops"][2]["placedLocation"]
    assert tender["pickupWindow"] == sent["stops"][0]["window"]
    # What the 204 carried comes back as sent (the answer also spells out the default values).
    for key in ("references", "commodities"):
        assert [{k: v for k, v in got.items() if k in mine} for got, mine in zip(tender[key], sent[key],
                                                                                 strict=True)] == sent[key]
    assert tender["offeredRate"] == sent["offeredRate"]
    got = await http.get(f"/api/v1/{tender['name']}", headers=credentials)
    assert got.json() == tender


async def test_an_unplaceable_stop_is_a_400_naming_it_in_the_body_s_spelling(http: httpx.AsyncClient, token) -> None:
    sent = _tender(f"NOPE-{uuid.uuid4().hex[:6]}")  # no facility carries it, and no ZIP code on that stop
    answer = await http.post("/api/v1/tenders", json=sent, headers=bearer(token("stops-co")))
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert error_info(body)["reason"] == "STOP_NOT_PLACEABLE"
    violations = [v for d in body["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]
    assert [v["field"] for v in violations] == ["tender.stops[1]"]


async def test_facilities_over_rest_crud_etag_and_404_for_another_carrier(http: httpx.AsyncClient, token) -> None:
    owner, intruder = bearer(token("fac-owner")), bearer(token("fac-intruder"))
    created = await http.post("/api/v1/facilities", json=_facility(f"Y-{uuid.uuid4().hex[:8]}"),
                              headers={**owner, "Idempotency-Key": str(uuid.uuid4())})
    assert created.status_code == 200, created.text
    facility = created.json()
    name, etag = facility["name"], facility["etag"]
    for method, path, body in [("GET", f"/api/v1/{name}", None),
                               ("PATCH", f"/api/v1/{name}?updateMask=displayName", {"displayName": "x"}),
                               ("DELETE", f"/api/v1/{name}", None)]:
        response = await http.request(method, path, json=body, headers=intruder)
        assert response.status_code == 404, (method, response.text)
        assert error_info(response.json())["reason"] == "FACILITY_NOT_FOUND"
    assert (await http.get("/api/v1/facilities", headers=intruder)).json().get("facilities", []) == []
    listed = await http.get("/api/v1/facilities", params={"pageSize": "1"}, headers=owner)
    assert [f["name"] for f in listed.json()["facilities"]] == [name]
    patched = await http.patch(f"/api/v1/{name}", params={"updateMask": "displayName"},
                               json={"displayName": "Yard 3", "etag": etag}, headers=owner)
    assert patched.status_code == 200 and patched.json()["displayName"] == "Yard 3", patched.text
    stale = await http.delete(f"/api/v1/{name}", params={"etag": etag}, headers=owner)
    assert stale.status_code == 409 and error_info(stale.json())["reason"] == "ETAG_MISMATCH", stale.text
    gone = await http.delete(f"/api/v1/{name}", params={"etag": patched.json()["etag"]}, headers=owner)
    assert gone.status_code == 200, gone.text
    assert (await http.get(f"/api/v1/{name}", headers=owner)).status_code == 404
    reader = bearer(token("fac-owner", scopes="facility:read"))
    refused = await http.post("/api/v1/facilities", json=_facility("Z-1"), headers=reader)
    assert refused.status_code == 403 and error_info(refused.json())["metadata"]["scope"] == "facility:write"
