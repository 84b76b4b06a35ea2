"""The console over real HTTP against the session's mesh (whose gateway is in dev mode, as `haulmesh run`'s is):
the dev login, the session the REST door accepts, its CSRF rule, sign-out, and the pages' contract."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services.gateway.console.app import CSRF_HEADER, SESSION_COOKIE
from services.runtime import Mesh

from ..rest import conftest as rest
from ..rest.conftest import bearer, error_info
from ..rest.test_rest import create, seed_tender

token, vehicle = rest.token, rest.vehicle  # the REST tests' fixtures: a dev token, a truck at Houston
REGION_TESTIDS = ("fleet-map", "tender-board", "mission-list", "exception-queue", "webhook-log", "kpi-report")


@pytest.fixture
async def browser(mesh: Mesh):
    """A cookie-keeping client like a browser's, not following redirects (the tests look at each)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=15) as client:
        yield client


async def dev_login(client: httpx.AsyncClient, role: str, carrier: str) -> httpx.Response:
    answer = await client.get("/console/dev-login", params={"role": role, "carrier": carrier})
    assert answer.status_code == 303, answer.text
    return answer


async def test_a_page_without_a_session_sends_the_browser_to_sign_in(browser: httpx.AsyncClient) -> None:
    answer = await browser.get("/console/tenders")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?return_to=/console/tenders"
    sign_in = await browser.get("/console/login")
    assert sign_in.status_code == 200
    # dev mode: one link per role, no identity provider
    for role in ("tms-user", "fleet-operator", "billing-admin", "platform-admin"):
        assert f"/console/dev-login?role={role}" in sign_in.text
    assert "default-src 'none'" in sign_in.headers["content-security-policy"]


async def test_the_dev_login_signs_in_and_the_overview_shows_every_region(browser: httpx.AsyncClient) -> None:
    carrier = f"console-{uuid.uuid4().hex[:8]}"
    answer = await dev_login(browser, "tms-user", carrier)
    assert answer.headers["location"] == "/console/"
    cookie = answer.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    overview = await browser.get("/console/")
    assert overview.status_code == 200
    for testid in REGION_TESTIDS:
        assert f'data-testid="{testid}"' in overview.text
    assert f'data-carrier="{carrier}"' in overview.text
    session = (await browser.get("/console/session")).json()
    assert session["carrier"] == carrier and session["roles"] == ["tms-user"]
    assert "tender:respond" in session["scopes"] and "billing:reconcile" not in session["scopes"]
    # Each region's full page exists and shows that region alone.
    page = await browser.get("/console/kpis")
    assert 'data-testid="kpi-report"' in page.text and 'data-testid="tender-board"' not in page.text
    assert (await browser.get("/console/nowhere")).status_code == 404


async def test_the_rest_api_accepts_the_session_with_its_roles_scopes(browser: httpx.AsyncClient) -> None:
    carrier = f"console-{uuid.uuid4().hex[:8]}"
    await dev_login(browser, "billing-admin", carrier)
    listed = await browser.get("/api/v1/invoices")
    assert listed.status_code == 200, listed.text
    # a billing admin's roles grant no tender:create
    refused = await browser.post("/api/v1/tenders", json={}, headers={CSRF_HEADER: "1"})
    assert refused.status_code == 403
    assert error_info(refused.json())["reason"] == "MISSING_SCOPE"


async def test_a_change_with_the_session_needs_the_console_header(browser: httpx.AsyncClient) -> None:
    carrier = f"console-{uuid.uuid4().hex[:8]}"
    await dev_login(browser, "tms-user", carrier)
    body = {"url": "https://example.com/hook", "eventTypes": ["haulmesh.tender.v1.offered"]}
    forged = await browser.post("/api/v1/webhookSubscriptions", json=body)
    assert forged.status_code == 403
    assert error_info(forged.json())["reason"] == "CSRF_HEADER_REQUIRED"
    listed = await browser.get("/api/v1/webhookSubscriptions")
    assert listed.json().get("webhookSubscriptions", []) == []  # nothing was made


async def test_sign_out_ends_the_session_everywhere(browser: httpx.AsyncClient, mesh: Mesh) -> None:
    await dev_login(browser, "fleet-operator", "acme")
    stolen = browser.cookies[SESSION_COOKIE]
    assert (await browser.get("/api/v1/missions")).status_code == 200
    out = await browser.post("/console/logout")
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=15,
                                 cookies={SESSION_COOKIE: stolen}) as other:
        answer = await other.get("/api/v1/missions")
    assert answer.status_code == 401
    assert error_info(answer.json())["reason"] == "SESSION_ENDED"


@pytest.mark.parametrize("return_to", ["https://evil.example/", "//evil.example/console/", "/api/v1/tenders",
                                       "/console/\\evil", "/console//evil.example"])
async def test_sign_in_never_redirects_off_the_console(browser: httpx.AsyncClient, return_to: str) -> None:
    answer = await browser.get("/console/dev-login", params={"role": "tms-user", "return_to": return_to})
    assert answer.headers["location"] == "/console/"


async def test_a_bad_dev_login_says_which_roles_exist(browser: httpx.AsyncClient) -> None:
    answer = await browser.get("/console/dev-login", params={"role": "root"})
    assert answer.status_code == 400
    assert "tms-user" in answer.text and SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    bad_carrier = await browser.get("/console/dev-login", params={"role": "tms-user", "carrier": "Not A Carrier"})
    assert bad_carrier.status_code == 400


async def test_assets_are_served_from_a_fixed_list(browser: httpx.AsyncClient) -> None:
    script = await browser.get("/console/assets/console.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert (await browser.get("/console/assets/..%2f..%2fapp.py")).status_code == 404
    assert (await browser.get("/console/vendor/package.json")).status_code == 404
    basemap = await browser.get("/console/vendor/us-states.geojson")
    assert basemap.status_code == 200, "make console-assets installs the basemap"
    assert basemap.json()["type"] == "FeatureCollection"


async def test_the_command_centre_raises_a_takeover_and_hands_it_back(browser: httpx.AsyncClient, token,
                                                                       vehicle: str) -> None:
    """A fleet operator's session raises and resolves a mission's exceptions over REST (the console's rescue
    actions), named as the person; a TMS user's session may not (its roles grant no ``mission:exception``)."""
    carrier = f"console-{uuid.uuid4().hex[:8]}"
    tms = token(carrier)
    tender = (await create(browser, tms, seed_tender())).json()
    accepted = await browser.post(f"/api/v1/{tender['name']}:accept", json={}, headers=bearer(tms))
    mission = accepted.json()["mission"]
    takeover = {"exception": {"kind": "KIND_CARGO", "severity": "SEVERITY_CRITICAL",
                              "contingency": "CONTINGENCY_HUMAN_TAKEOVER", "description": "reefer alarm"}}
    await dev_login(browser, "tms-user", carrier)
    refused = await browser.post(f"/api/v1/{mission}:raiseException", json=takeover, headers={CSRF_HEADER: "1"})
    assert refused.status_code == 403 and error_info(refused.json())["reason"] == "MISSING_SCOPE"

    await dev_login(browser, "fleet-operator", carrier)
    raised = await browser.post(f"/api/v1/{mission}:raiseException", json=takeover,
                                headers={CSRF_HEADER: "1", "Idempotency-Key": f"takeover-{uuid.uuid4().hex}"})
    assert raised.status_code == 200, raised.text
    exception = raised.json()["exception"]
    assert raised.json()["mission"]["state"] == "STATE_EXCEPTION"
    assert exception["contingency"] == "CONTINGENCY_HUMAN_TAKEOVER" and exception["takeover"]["requestTime"]
    assert exception["raisedBy"].endswith("via haulmesh-console"), exception
    blank = await browser.post(f"/api/v1/{mission}:resolveException", headers={CSRF_HEADER: "1"},
                               json={"exceptionId": exception["exceptionId"], "resolution": "  "})
    assert blank.status_code == 400  # a resolution says how
    resolved = await browser.post(f"/api/v1/{mission}:resolveException", headers={CSRF_HEADER: "1"},
                                  json={"exceptionId": exception["exceptionId"], "resolution": "handed back"})
    assert resolved.status_code == 200, resolved.text
    after = resolved.json()["exception"]
    assert after["resolvedBy"] == exception["raisedBy"] and after["takeover"]["handBackRequestTime"]
    # Another carrier's session does not see the mission at all.
    await dev_login(browser, "fleet-operator", f"other-{uuid.uuid4().hex[:8]}")
    other = await browser.post(f"/api/v1/{mission}:resolveException", headers={CSRF_HEADER: "1"},
                               json={"exceptionId": exception["exceptionId"], "resolution": "not mine"})
    assert other.status_code == 404
