"""The console in a real browser: Debian's chromium through Debian's chromedriver (Selenium, nothing downloaded),
against a mesh of its own with the sandbox running, signed in through the dev login. What a person would check:
the overview draws every region and passes axe; a tender created over REST appears on the board and is accepted
there; a truck moves on the map as its frames arrive; a sensor fault shows in the queue and the minimal-risk stop
sent from there reaches the simulated truck, which acknowledges it; a takeover asked there is handed over and back
by the truck; a reroute typed there is checked and followed; a new exception alerts any page; a failed webhook is
replayed; the KPI chart draws the report's figures. Each test saves a screenshot under build/screenshots/."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from services.runtime import Mesh
from services.runtime.lanes import load_lane_facts
from services.runtime.sandbox import Sandbox, SandboxConfig, sandbox_lanes, synthetic_tender
from services.runtime.tokens import mint

from ...conftest import Pki, running_mesh, wait_for
from ..rest.conftest import ALL_SCOPES
from ..webhooks.receiver import Receiver

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CARRIER = "sandbox"  # the dev login's default carrier, the sandbox's own
WEBHOOK_ENV = {"HAULMESH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8", "HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.2,0.2",
               "HAULMESH_WEBHOOK_RETRY_JITTER": "0", "HAULMESH_WEBHOOK_TIMEOUT_SECONDS": "2"}


class Browser:
    """A headless chromium; every Selenium call runs in a thread so the sandbox's loop keeps running meanwhile."""

    def __init__(self, base_url: str, profile: Path) -> None:
        assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
            "the browser tests need Debian's chromium and chromium-driver (.ci/run installs them: apt-get install " \
            "chromium chromium-driver)"
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager downloads nothing
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                     "--use-angle=swiftshader", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1100",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.base_url = base_url

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    async def open(self, path: str) -> None:
        await self.run(self.driver.get, self.base_url + path)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, script, *args)

    async def until(self, script: str, *args: Any, timeout_seconds: float = 30) -> Any:
        """Poll a script (``return ...``) until it answers something truthy."""
        return await wait_for(lambda: self.js(script, *args), timeout_seconds=timeout_seconds, interval_seconds=0.25)

    async def click(self, css: str) -> None:
        element = await self.run(self.driver.find_element, By.CSS_SELECTOR, css)
        await self.run(element.click)

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        assert await self.run(self.driver.save_screenshot, str(path))
        return path

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
async def console_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Mesh, Sandbox]]:
    """A mesh of its own (loopback webhooks, quick retries) with the sandbox: a truck on a clean run and one whose
    lidar fails a few simulated minutes after departure, a tender every two minutes (the board's test tenders the
    other truck's load)."""
    config = SandboxConfig(carrier=CARRIER, trucks=2, scenarios=("clean", "sensor-fault"), tenders_per_minute=0.5,
                           speedup=60, frame_every_sim_seconds=2, scenario_at_sim_minutes=1,
                           stop_hold_real_seconds=600, takeover_hold_seconds=600, seed=3)
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("console-mesh"), env=WEBHOOK_ENV) as mesh:
        sandbox = Sandbox(mesh, config, say=lambda _line: None)
        await sandbox.start()
        try:
            yield mesh, sandbox
        finally:
            await sandbox.stop()


@pytest.fixture(scope="module")
async def browser(console_mesh: tuple[Mesh, Sandbox], tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[Browser]:
    mesh, _ = console_mesh
    started = await asyncio.to_thread(Browser, f"http://127.0.0.1:{mesh.http_port}",
                                      tmp_path_factory.mktemp("chromium-profile"))
    try:
        await started.open("/console/dev-login?role=platform-admin")
        await started.until("return document.body.dataset.page === 'overview'")
        yield started
    finally:
        await asyncio.to_thread(started.quit)


@pytest.fixture(scope="module")
async def tms(console_mesh: tuple[Mesh, Sandbox]) -> AsyncIterator[httpx.AsyncClient]:
    """The TMS's own REST client for the sandbox carrier."""
    mesh, _ = console_mesh
    token = mint(carrier=CARRIER, scopes=ALL_SCOPES, state_dir=mesh.state_dir)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=15,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


REGIONS_LOADED = ("return [...document.querySelectorAll('section[data-region]')]"
                  ".every(s => s.dataset.loaded === 'true')")


async def test_the_overview_draws_every_region_and_passes_axe(browser: Browser) -> None:
    await browser.open("/console/")
    await browser.until(REGIONS_LOADED)
    testids = await browser.js("return [...document.querySelectorAll('[data-testid]')].map(e => e.dataset.testid)")
    assert set(testids) >= {"fleet-map", "tender-board", "mission-list", "exception-queue", "webhook-log",
                            "kpi-report"}
    # the map reached idle with the shipped outlines: nothing fetched from another origin
    await browser.until("return window.map && window.map.loaded() && window.map.isStyleLoaded()")
    foreign = await browser.js("return performance.getEntriesByType('resource').map(e => e.name)"
                               ".filter(n => !n.startsWith(location.origin))")
    assert foreign == []
    # the README's picture: with the sandbox's trucks on the map (the first frames arrive a few seconds in)
    await browser.until("return window.fleetMapTrucks >= 1 && document.querySelector('.mission-list, "
                        "section[data-region=mission-list] tbody tr')", timeout_seconds=60)
    await asyncio.sleep(1)  # the map's next draw (every 0.5 s)
    path = await browser.screenshot("console-overview")
    assert path.stat().st_size > 10_000
    await browser.js("const s = document.createElement('script'); s.src = '/console/vendor/axe.min.js';"
                     "s.onload = () => axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})"
                     ".then(r => { window.axeResult = r.violations.map(v => [v.id, v.impact, v.nodes.length]); })"
                     ".catch(e => { window.axeResult = [['axe failed', 'critical', String(e)]]; });"
                     "document.head.append(s);")
    violations = (await browser.until("return window.axeResult && {found: window.axeResult}",
                                      timeout_seconds=60))["found"]
    serious = [v for v in violations if v[1] in ("serious", "critical")]
    assert serious == [], violations


async def test_a_tender_created_over_rest_is_accepted_on_the_board(browser: Browser, tms: httpx.AsyncClient) -> None:
    lane = sandbox_lanes({"lanes": [{"origin": "US-TX-HOU", "destination": "US-GA-ATL"}]}, load_lane_facts())[0]
    created = await tms.post("/api/v1/tenders", json=synthetic_tender(random.Random(), lane, datetime.now(UTC)))
    tender = created.json()
    assert created.status_code == 200 and tender["state"] == "STATE_OFFERED", tender
    tender_id = tender["name"].split("/")[-1]
    await browser.open("/console/tenders")
    row = f"tr[data-tender='{tender_id}']"
    accept = f"{row}[data-state='STATE_OFFERED'] button[data-action='accept']"
    await browser.until(f"return document.querySelector(\"{accept}\")")
    await browser.screenshot("tender-board-offered")
    await browser.click(f"{row} button[data-action='accept']")
    await browser.until(f"return document.querySelector(\"{row}[data-state='STATE_ACCEPTED']\")")
    await browser.screenshot("tender-board-accepted")
    after = (await tms.get(f"/api/v1/{tender['name']}")).json()
    assert after["state"] == "STATE_ACCEPTED" and after["mission"]


async def test_a_truck_moves_on_the_map_as_frames_arrive(browser: Browser) -> None:
    await browser.open("/console/map")
    await browser.until("return window.map && window.map.loaded() && window.fleetMapTrucks >= 1", timeout_seconds=60)
    positions = ("return Object.fromEntries([...document.querySelectorAll('table.trucks tbody tr')]"
                 ".map(r => [r.dataset.vehicle, r.children[4].textContent]))")
    first = await browser.until(positions)
    # Any truck will do (one may be stopped on the shoulder by its sensor fault by now): one whose fix changes.
    moved = await browser.until(f"const before = {json.dumps(first)}; const now = (() => {{ {positions} }})();"
                                "return Object.keys(now).find(v => v in before && now[v] !== before[v])",
                                timeout_seconds=30)
    rendered = await browser.js("return window.map.queryRenderedFeatures({layers: ['trucks']})"
                                ".map(f => f.properties.vehicle)")
    assert moved in rendered
    await browser.screenshot("fleet-map")


async def test_a_missions_timeline_shows_its_frames_as_they_arrive(browser: Browser, tms: httpx.AsyncClient) -> None:
    mission = await wait_for(lambda: _enroute(tms), timeout_seconds=60)
    await browser.open(f"/console/missions/{mission}")
    newest = "return Math.max(0, ...[...document.querySelectorAll('.live-frames tr[data-sequence]')]" \
             ".map(r => Number(r.dataset.sequence)))"
    first = await browser.until(newest, timeout_seconds=30)
    later = await browser.until(f"const n = (() => {{ {newest} }})(); return n > {first} && n", timeout_seconds=30)
    assert later > first
    await browser.screenshot("mission-timeline")


async def _enroute(tms: httpx.AsyncClient) -> str | None:
    """A mission of the clean truck, driving (the other may stand on the shoulder: no new frames there)."""
    listed = (await tms.get("/api/v1/missions")).json().get("missions", [])
    return next((m["name"].split("/")[-1] for m in listed if m["state"] == "STATE_ENROUTE"
                 and not any(e["kind"] == "KIND_SENSOR_FAULT" for e in m.get("exceptions", []))), None)


async def test_a_sensor_fault_is_queued_and_its_stop_reaches_the_truck(browser: Browser) -> None:
    await browser.open("/console/exceptions")
    fault = "tr[data-kind='KIND_SENSOR_FAULT'] button[data-action='stop']"
    await browser.until(f"return document.querySelector(\"{fault}\")", timeout_seconds=90)
    await browser.click(fault)  # the first click asks to confirm; nothing is sent yet
    assert await browser.js(f"return document.querySelector(\"{fault}\").dataset.confirm") == "yes"
    await browser.click(fault)
    done = "return document.querySelector(\"tr[data-kind='KIND_SENSOR_FAULT'] [data-command='stop']\")" \
           "?.dataset.commandState"
    state = await browser.until(f"const s = (() => {{ {done} }})(); return s && s !== 'STATE_QUEUED' && "
                                "s !== 'STATE_ACCEPTED' && s", timeout_seconds=30)
    await browser.screenshot("exception-queue-stop")
    assert state == "STATE_COMPLETED"  # the simulated truck acknowledged it: stopped


async def test_a_takeover_asked_in_the_queue_reaches_the_truck_and_is_handed_back(browser: Browser,
                                                                                   tms: httpx.AsyncClient) -> None:
    """From a sensor fault's row: "Take over" raises a HUMAN_TAKEOVER exception (the truck is sent hand_over and
    answers once the remote operator has control), "Hand back" resolves it (the truck is sent hand_back and drives
    itself again); both steps confirmed, both recorded with the truck's times and the person's name."""
    await browser.open("/console/exceptions")
    # From the lidar's failure (the truck stopped on the shoulder): before it, the scenario's fault is still growing
    # and its own minimal-risk stop would take the truck out of the remote operator's hands.
    take = "tr[data-kind='KIND_SENSOR_FAULT'][data-contingency='CONTINGENCY_MINIMAL_RISK_STOP'] " \
           "button[data-action='take-over']"
    await browser.until(f"return document.querySelector(\"{take}\")", timeout_seconds=90)
    mission = await browser.js(f"return document.querySelector(\"{take}\").dataset.mission")
    await browser.click(take)
    await browser.click(take)  # confirmed
    control = f"tr[data-mission='{mission}'][data-contingency='CONTINGENCY_HUMAN_TAKEOVER'] [data-takeover]"
    await browser.until(f"return document.querySelector(\"{control}\")?.textContent.includes('in control since')",
                        timeout_seconds=30)
    await browser.screenshot("exception-queue-takeover")
    hand_back = f"tr[data-mission='{mission}'] button[data-action='hand-back']"
    await browser.click(hand_back)
    await browser.click(hand_back)

    async def handed_back() -> dict | None:
        current = (await tms.get(f"/api/v1/missions/{mission}")).json()
        return next((e for e in current.get("exceptions", []) if e.get("takeover", {}).get("handBackTime")), None)
    try:
        exception = await wait_for(handed_back, timeout_seconds=30)
    except TimeoutError:
        current = (await tms.get(f"/api/v1/missions/{mission}")).json()
        raise AssertionError(f"no hand-back confirmed: {current.get('exceptions')}") from None
    takeover = exception["takeover"]
    assert takeover["requestTime"] <= takeover["controlTime"] <= takeover["handBackRequestTime"] \
        <= takeover["handBackTime"]
    assert exception["raisedBy"].endswith("via haulmesh-console") and exception["resolvedBy"] == exception["raisedBy"]
    # Handed back, the takeover leaves the queue (the sensor fault it answered stays until resolved).
    await browser.until(f"return !document.querySelector(\"{control}\")", timeout_seconds=10)


async def test_a_new_exception_alerts_whatever_page_is_open(browser: Browser, tms: httpx.AsyncClient) -> None:
    await browser.open("/console/webhooks")  # a page without the queue
    await browser.until(REGIONS_LOADED)
    listed = (await tms.get("/api/v1/missions", params={"filter": 'state = "STATE_EXCEPTION"'})).json()["missions"]
    mission = listed[0]["name"]
    await asyncio.sleep(3.5)  # one look at the missions as they were: what was open then is not new
    raised = await tms.post(f"/api/v1/{mission}:raiseException", json={"exception": {
        "kind": "KIND_CARGO", "contingency": "CONTINGENCY_CONTINUE", "description": "seal number mismatch"}})
    assert raised.status_code == 200, raised.text
    exception = raised.json()["exception"]["exceptionId"]
    try:
        alert = await browser.until("return [...document.querySelectorAll('#alerts li')].map(li => li.textContent)"
                                    ".find(t => t.includes('cargo on'))", timeout_seconds=15)
        assert "New exception:" in alert and listed[0]["vehicle"].split("/")[-1] in alert
        await browser.screenshot("alert-new-exception")
    finally:
        await tms.post(f"/api/v1/{mission}:resolveException", json={"exceptionId": exception,
                                                                      "resolution": "seal checked at the shoulder"})


async def test_a_reroute_typed_in_the_queue_is_checked_and_reaches_the_truck(browser: Browser) -> None:
    await browser.open("/console/exceptions")
    row = "tr[data-kind='KIND_SENSOR_FAULT'][data-contingency='CONTINGENCY_MINIMAL_RISK_STOP']"
    await browser.until(f"return document.querySelector(\"{row} button[data-action='reroute']\")", timeout_seconds=90)
    await browser.click(f"{row} button[data-action='reroute']")
    field = f"{row} textarea[data-field='waypoints']"
    await browser.until(f"return document.querySelector(\"{field}\")")

    async def send(text: str) -> None:
        element = await browser.run(browser.driver.find_element, By.CSS_SELECTOR, field)
        await browser.run(element.clear)
        await browser.run(element.send_keys, text)
        await browser.click(f"{row} form[data-form='waypoints'] button[type='submit']")

    await send("Birmingham please")
    problem = await browser.until(f"return document.querySelector(\"{row} form .problem\")?.textContent")
    assert 'waypoint 1 ("Birmingham please")' in problem  # said, nothing sent
    await send("32.2988, -90.1848\n33.5186, -86.8104")
    done = f"return document.querySelector(\"{row} [data-command='reroute']\")?.dataset.commandState"
    state = await browser.until(f"const s = (() => {{ {done} }})(); return s && s !== 'STATE_QUEUED' && "
                                "s !== 'STATE_ACCEPTED' && s", timeout_seconds=30)
    await browser.screenshot("exception-queue-reroute")
    assert state == "STATE_COMPLETED"  # the simulated truck follows the two waypoints


async def test_a_failed_webhook_is_replayed_from_the_log(browser: Browser, tms: httpx.AsyncClient) -> None:
    healed: list[bool] = []
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = Receiver([f"whsec_{secret}"], respond=lambda _n: 204 if healed else 500).start()
    try:
        created = await tms.post("/api/v1/webhookSubscriptions", json={
            "displayName": "TMS (failing)", "url": receiver.url(), "eventTypes": ["*"], "secret": f"whsec_{secret}"})
        assert created.status_code == 200, created.text
        subscription = created.json()["name"]
        lane = sandbox_lanes({"lanes": [{"origin": "US-TX-HOU", "destination": "US-GA-ATL"}]}, load_lane_facts())[0]
        await tms.post("/api/v1/tenders", json=synthetic_tender(random.Random(), lane, datetime.now(UTC)))

        async def failed():
            listed = (await tms.get(f"/api/v1/{subscription}/deliveries")).json().get("deliveries", [])
            return [d for d in listed if d["state"] == "STATE_FAILED"]
        try:
            first = (await wait_for(failed, timeout_seconds=30))[0]
        except TimeoutError:
            listed = (await tms.get(f"/api/v1/{subscription}/deliveries")).json()
            raise AssertionError(f"no delivery failed: {listed} {receiver.received[:3]}") from None
        healed.append(True)
        await browser.open("/console/webhooks")
        button = f"tr[data-delivery='{first['name'].split('/')[-1]}'] button[data-action='replay']"
        await browser.until(f"return document.querySelector(\"{button}\")")
        await browser.click(button)
        replayed = await browser.until("return [...document.querySelectorAll(\"tr[data-state='STATE_SUCCEEDED']\")]"
                                       ".map(r => r.textContent).find(t => t.includes('replay of'))",
                                       timeout_seconds=30)
        assert first["name"].split("/")[-1] in replayed
        await browser.screenshot("webhook-log-replayed")
        original = (await tms.get(f"/api/v1/{first['name']}")).json()
        assert original["state"] == "STATE_FAILED"  # the original row is left as it was
    finally:
        receiver.stop()


async def test_the_kpi_chart_draws_the_reports_figures(browser: Browser, tms: httpx.AsyncClient) -> None:
    await browser.open("/console/kpis")
    await browser.until("return document.querySelector(\"section[data-chart='drawn']\")", timeout_seconds=30)
    drawn = await browser.js("return [...document.querySelectorAll('section[data-testid=kpi-report] canvas')].map("
                             "c => Object.fromEntries(Chart.getChart(c).data.datasets.map(d => [d.label, d.data])))")
    report = (await tms.get("/api/v1/kpiReport")).json()
    completed = [row.get("missionsCompleted", 0) for row in report.get("rows", [])]
    assert drawn[0]["Completed"] == completed
    # the rates chart: percent with one decimal, a rate the report could not compute left out (None), not zero
    success = [None if "successRate" not in row else round(row["successRate"] * 1000) / 10
               for row in report.get("rows", [])]
    assert drawn[1]["Success"] == success
    assert report.get("rows"), "the sandbox's missions are in the report"
    await browser.screenshot("kpi-report")


def test_the_readme_shows_a_screenshot_these_tests_take() -> None:
    """The README's picture of the console is build/screenshots/console-overview.png as the overview test saves it,
    committed as docs/images/console-overview.png (copy it again when the console's look changes): a PNG the README
    names, of the size the browser here draws (when the overview test ran first, as it does in this module)."""
    committed = ROOT / "docs" / "images" / "console-overview.png"
    assert "docs/images/console-overview.png" in (ROOT / "README.md").read_text()
    assert committed.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "docs/images/console-overview.png is not a PNG"
    taken = SCREENSHOTS / "console-overview.png"
    if taken.exists():
        assert _png_size(committed) == _png_size(taken), "the README's screenshot is not this browser's overview"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]  # IHDR's width and height, big-endian
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")
