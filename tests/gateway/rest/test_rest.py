"""REST transcoding at the real gateway: the seed payload, tenancy, mass assignment, size and rate limits."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from .conftest import bearer, error_info

#: The seed article's payload, verbatim (its dates are replaced where they must lie in the future).
SEED_TENDER = json.loads((Path(__file__).resolve().parents[3] / "docs" / "examples" / "seed-tender.json").read_text())


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seed_tender(load_id: str | None = None) -> dict:
    """The seed payload with its pickup window moved to tomorrow (the tender book refuses past windows)."""
    start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
    return {**SEED_TENDER, "tenderId": load_id or f"TND-{uuid.uuid4().hex[:12]}",
            "pickupWindow": f"{_rfc3339(start)}/{_rfc3339(start + timedelta(hours=10))}"}


async def create(http: httpx.AsyncClient, token: str, payload: dict, **headers: str) -> httpx.Response:
    return await http.post("/api/v1/tenders", json=payload, headers={**bearer(token), **headers})


async def test_seed_tender_accepted_verbatim(http, token, vehicle: str) -> None:
    payload = seed_tender()
    response = await create(http, token("seedco"), payload)
    assert response.status_code == 200, response.text
    tender = response.json()
    assert tender["name"].startswith("tenders/")
    assert tender["carrier"] == "carriers/seedco"
    assert tender["tmsLoadId"] == payload["tenderId"]
    assert tender["equipment"] == "EQUIPMENT_DRY_VAN_53FT"
    assert tender["weightLb"] == 42000
    assert tender["specialInstructions"] == "Hazmat=false"
    start, end = payload["pickupWindow"].split("/")
    assert tender["pickupWindow"] == {"startTime": start, "endTime": end}
    assert tender["origin"] == SEED_TENDER["origin"]
    assert tender["state"] == "STATE_OFFERED", tender
    assert tender["offer"]["price"]["currencyCode"] and tender["offer"]["pickupAvailability"]
    # Responses are in this API's shape only: no legacy keys come back.
    assert "tenderId" not in tender


async def test_tender_read_back_through_rest_and_listed(http, token) -> None:
    credentials = token("readback")
    created = (await create(http, credentials, seed_tender())).json()
    got = await http.get(f"/api/v1/{created['name']}", headers=bearer(credentials))
    assert got.status_code == 200, got.text
    assert got.json()["name"] == created["name"]
    listed = await http.get("/api/v1/tenders", params={"pageSize": "10"}, headers=bearer(credentials))
    assert listed.status_code == 200, listed.text
    assert [t["name"] for t in listed.json()["tenders"]] == [created["name"]]


async def test_idempotency_key_header_sets_request_id(http, token) -> None:
    credentials = token("idem")
    payload = seed_tender()
    key = str(uuid.uuid4())
    first = await create(http, credentials, payload, **{"Idempotency-Key": key})
    again = await create(http, credentials, payload, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json()["name"] == again.json()["name"]
    other = await create(http, credentials, {**payload, "weightLb": 1000}, **{"Idempotency-Key": key})
    assert other.status_code == 422, other.text  # the IETF Idempotency-Key draft's status for a reused key
    assert error_info(other.json())["reason"] == "REQUEST_ID_REUSED"


async def test_other_carriers_resources_are_404(http, token) -> None:
    owner, intruder = token("owner-co"), token("intruder-co")
    name = (await create(http, owner, seed_tender())).json()["name"]
    for method, path, body in [("GET", f"/api/v1/{name}", None), ("POST", f"/api/v1/{name}:accept", {}),
                               ("POST", f"/api/v1/{name}:decline", {}), ("POST", f"/api/v1/{name}:cancel", {}),
                               ("PATCH", f"/api/v1/{name}?updateMask=weightLb", {"weightLb": 1000})]:
        response = await http.request(method, path, json=body, headers=bearer(intruder))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == 5
    listed = await http.get("/api/v1/tenders", headers=bearer(intruder))
    assert listed.status_code == 200 and listed.json().get("tenders", []) == []
    assert (await http.get(f"/api/v1/{name}", headers=bearer(owner))).status_code == 200


async def test_output_only_fields_are_refused(http, token) -> None:
    payload = {**seed_tender(), "state": "STATE_ACCEPTED", "carrier": "carriers/other",
               "offer": {"price": {"currencyCode": "USD", "amountMinor": "1"}}}
    response = await create(http, token("massco"), payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3
    assert error_info(body)["reason"] == "OUTPUT_ONLY_FIELD"
    violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
    assert {v["field"] for v in violations} == {"tender.state", "tender.carrier", "tender.offer"}


async def test_output_only_fields_in_snake_case_are_refused_too(http, token) -> None:
    response = await create(http, token("massco"), {**seed_tender(), "create_time": "2026-01-01T00:00:00Z"})
    assert response.status_code == 400
    violations = next(d for d in response.json()["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
    # Refused by its name already: the document names lowerCamelCase fields only.
    assert violations[0]["field"] == "tender.createTime"


async def test_bad_json_is_400_invalid_argument(http, token) -> None:
    response = await http.post("/api/v1/tenders", content=b"{not json", headers=bearer(token("jsonco")))
    assert response.status_code == 400
    assert response.json()["code"] == 3 and error_info(response.json())["reason"] == "INVALID_JSON"
    unknown = await create(http, token("jsonco"), {**seed_tender(), "colour": "red"})
    assert unknown.status_code == 400
    wrong_type = await create(http, token("jsonco"), {**seed_tender(), "weightLb": "heavy"})
    assert wrong_type.status_code == 400


async def test_oversize_body_is_413(http, token) -> None:
    big = {**seed_tender(), "specialInstructions": "x" * (1024 * 1024 + 10)}
    response = await create(http, token("bigco"), big)
    assert response.status_code == 413
    assert error_info(response.json())["reason"] == "REQUEST_TOO_LARGE"


async def test_oversize_chunked_body_without_length_is_413(http, token) -> None:
    async def chunks():
        for _ in range(40):
            yield b"x" * 32768

    response = await http.post("/api/v1/tenders", content=chunks(),
                               headers={**bearer(token("bigco")), "Content-Type": "application/json"})
    assert response.status_code == 413


async def test_oversize_is_refused_before_authentication(http) -> None:
    response = await http.post("/api/v1/tenders", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413


async def test_rate_limit_is_429_with_retry_after_per_tenant(http, token) -> None:
    noisy = token("noisy-co", "webhook:read")
    responses = await asyncio.gather(*(http.get("/api/v1/webhookSubscriptions", headers=bearer(noisy))
                                       for _ in range(150)))
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert all(r.status_code in {200, 429} for r in responses), {r.status_code for r in responses}
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["code"] == 8 and error_info(limited[0].json())["reason"] == "RATE_LIMITED"
    # Another tenant is not affected by the noisy one.
    quiet = await http.get("/api/v1/webhookSubscriptions", headers=bearer(token("quiet-co", "webhook:read")))
    assert quiet.status_code == 200


async def test_a_refused_tenant_is_answered_from_memory_only_where_429_is_the_answer(http, token) -> None:
    """While the store's refusal holds, the gateway answers the tenant's requests before its routing (app.py):
    the same 429 as the store's, and every other answer (404, 403, 413, the API document) unchanged."""
    noisy = bearer(token("remembered-co", "webhook:read"))
    responses = await asyncio.gather(*(http.get("/api/v1/webhookSubscriptions", headers=noisy) for _ in range(150)))
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    probes = await asyncio.gather(
        http.get("/api/v1/webhookSubscriptions", headers=noisy),
        http.get("/api/v1/nothing-here", headers=noisy),
        http.get("/api/v1/tenders", headers=noisy),  # tender:read, which the token lacks
        http.post("/api/v1/tenders", content=b"x" * (1024 * 1024 + 1), headers=noisy),
        http.get("/openapi.json", headers=noisy))
    assert [p.status_code for p in probes] == [429, 404, 403, 413, 200], [p.text[:200] for p in probes]
    assert probes[0].json() == refused[0].json() and probes[0].headers["retry-after"] == refused[0].headers[
        "retry-after"]
    assert error_info(probes[2].json())["reason"] == "MISSING_SCOPE"


async def test_unknown_route_and_wrong_verb(http, token) -> None:
    credentials = bearer(token("routeco"))
    missing = await http.get("/api/v1/nothing-here", headers=credentials)
    assert missing.status_code == 404 and missing.json()["code"] == 5
    wrong = await http.delete("/api/v1/tenders/01j9z3k6v8q2m4n5p7r9s1t3w5", headers=credentials)
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH"}
    assert wrong.json()["code"] == 12


async def test_unknown_query_parameter_is_400(http, token) -> None:
    response = await http.get("/api/v1/tenders", params={"colour": "red"}, headers=bearer(token("queryco")))
    assert response.status_code == 400


async def test_truck_ingest_route_is_not_served_with_bearer_tokens(http, token) -> None:
    response = await http.post("/api/v1/telemetry/ingest", json={}, headers=bearer(token("truckco")))
    assert response.status_code == 501
    assert error_info(response.json())["reason"] == "MTLS_REQUIRED"


async def test_a_watch_of_an_unknown_mission_is_a_json_404_not_a_stream(http, token) -> None:
    # Errors before the stream starts keep the JSON error contract (tests/telemetry_reads covers the stream).
    response = await http.get("/api/v1/missions/01j9z3k6v8q2m4n5p7r9s1t3w5:watchTelemetry",
                              headers=bearer(token("streamco")))
    assert response.status_code == 404 and response.headers["content-type"].startswith("application/json")
    assert error_info(response.json())["reason"] == "MISSION_NOT_FOUND"


async def test_other_carriers_missions_are_404(http, token, vehicle: str) -> None:
    owner, intruder = token("mowner-co"), token("mintruder-co")
    tender = (await create(http, owner, seed_tender())).json()
    assert tender["state"] == "STATE_OFFERED", tender
    accepted = await http.post(f"/api/v1/{tender['name']}:accept", json={}, headers=bearer(owner))
    assert accepted.status_code == 200, accepted.text

    async def mission_name() -> str:
        for _ in range(100):
            current = (await http.get(f"/api/v1/{tender['name']}", headers=bearer(owner))).json()
            if current.get("mission"):
                return current["mission"]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no mission dispatched for {current}")

    mission = await mission_name()
    assert (await http.get(f"/api/v1/{mission}", headers=bearer(owner))).status_code == 200
    for method, path, body in [("GET", f"/api/v1/{mission}", None),
                               ("POST", f"/api/v1/{mission}:recordCheckIn",
                                {"checkIn": {"point": "POINT_DEPARTURE", "outcome": "OUTCOME_PROCEED"}})]:
        response = await http.request(method, path, json=body, headers=bearer(intruder))
        assert response.status_code == 404, (method, path, response.text)
    listed = await http.get("/api/v1/missions", headers=bearer(intruder))
    assert listed.status_code == 200 and listed.json().get("missions", []) == []
