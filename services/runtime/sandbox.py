"""``haulmesh sandbox`` (``make sandbox``): the whole mesh with a sandbox carrier, synthetic tenders and simulated
trucks running the rollout's rescue scenarios, to watch on the console or to rehearse the command centre.

What runs:

* the mesh as ``haulmesh run`` starts it (embedded store, dev certificates, the gateway in dev mode with the console's
  dev login signing in to the sandbox carrier);
* N trucks, each a separate ``haulmesh-edge simulate`` process waiting for a mission, with its own certificate and
  spool; each runs one scenario of :data:`SCENARIOS` (round robin), and after its run the truck submits its proof of
  delivery (``haulmesh-edge pod --submit``) when it arrived, then waits for the next mission;
* a TMS: synthetic tenders at ``--tenders-per-minute`` on every lane of the eligibility policy whose markets the lane
  facts know, accepted as soon as offered. The simulator drives any of them: the mission's planned route (a known
  road's waypoints, else straight between the stops) travels with its assignment. A truck waits for its next mission
  where its last run ended, so the TMS tenders the lanes whose origin an available truck can reach within the pickup
  window (where the fleet believes its trucks are): a load no truck reaches in time is refused for no capacity, and
  a TMS that tendered Atlanta → Houston to a fleet waiting in Houston would see half its tenders refused.
  ``SandboxConfig.lanes`` tenders fixed lanes in order instead;
* a command-centre hand: due check-ins recorded with PROCEED after ``check_in_delay_seconds`` (so a lane's first
  missions flow; the console shows them due in between), a truck under remote control handed back after
  ``takeover_hold_seconds``, and a road closure with no mapped way around it (the mission service stopped the
  truck) reopened after ``closure_reopen_real_seconds``: the truck resumed, the exception resolved.

Nothing here bypasses the mesh: the TMS goes through the REST door with a dev token, the command-centre hand through
the REST door too (its check-ins) and the operator's gRPC (the hand-back, the resume, where the trucks are), the
trucks over their mTLS streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import httpx

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import command_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2

from . import pki
from ._keys import carrier_metadata
from ._mesh import Mesh
from .lanes import LaneFacts, Market, Point, load_lane_facts
from .tokens import mint

__all__ = ["SCENARIOS", "Sandbox", "SandboxConfig", "SandboxLane", "SandboxTruck", "reachable_lanes", "sandbox_lanes",
           "synthetic_tender"]

_log = logging.getLogger("haulmesh.sandbox")

#: Scenario name → the simulator's ``--scenario`` (None: a clean run). The rollout's sandbox phase: "synthetic tenders
#: and rescue scenarios (simulated sensor faults, connectivity loss)".
SCENARIOS: Mapping[str, str | None] = {
    "clean": None,
    "sensor-fault": "sensor-fault",
    "road-closure": "road-closure",
    "connectivity-loss": "connectivity-loss",  # its length: SandboxConfig.outage_real_seconds
    "pre-trip-failure": "pre-trip-failure",
    "takeover": "takeover",
}
#: What the sandbox's TMS does over REST (tender, accept, read missions, record check-ins), and nothing more.
_TMS_SCOPES = "tender:create tender:read tender:respond mission:read mission:checkin"
_HOME = "US-TX-HOU"
#: How long an arrived truck waits for its mission to be ARRIVED before giving up its proof of delivery.
_DELIVERY_WAIT_SECONDS = 60.0
_DELIVERY_ATTEMPTS = 3
#: Reports kept per truck (a sandbox runs for days).
_REPORTS_KEPT = 100
#: A synthetic tender's pickup window; a truck can take a load whose origin it reaches (deadhead at the planning
#: speed) before the window ends, which is how the mission service counts capacity.
_PICKUP_WINDOW = timedelta(hours=10)
#: In a market whose urban core is not approved for autonomous operation, a stop lies this far outside the core.
_OUTSIDE_CORE_MILES = 5.0
#: Vehicles read per ListVehicles page (the sandbox's trucks are at most 200; the roster may hold others).
_VEHICLES_PAGE = 1000


@dataclass(frozen=True)
class SandboxConfig:
    """What the sandbox runs (``haulmesh sandbox --help`` says each)."""

    carrier: str = "sandbox"
    trucks: int = 6
    tenders_per_minute: float = 2.0
    speedup: float = 240.0
    frame_every_sim_seconds: int = 10
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    #: When each truck's scenario starts, simulated minutes after departure (None: the scenario's own time).
    scenario_at_sim_minutes: float | None = None
    #: End each truck's run after this many simulated minutes (None: drive to the destination).
    max_sim_minutes: float | None = None
    #: How long the connectivity-loss scenario's dead zone lasts in real time: past the telemetry service's liveness
    #: timeout (30 s by default), so that the loss is seen, raised and resolved on reconnection.
    outage_real_seconds: float = 45.0
    #: How long a truck stands at the pickup being loaded (real seconds) before its pre-trip check: the command
    #: centre clears a lane's first missions for departure meanwhile, so the truck's start is not refused for it.
    pickup_dwell_real_seconds: float = 5.0
    check_in_delay_seconds: float = 5.0
    takeover_hold_seconds: float = 20.0
    #: How long a stopped truck waits for an operator's resume (real seconds) before its run ends: a minimal-risk
    #: stop is the command centre's to clear, from the console.
    stop_hold_real_seconds: float = 3600.0
    #: A road closure with no mapped way around it stops the truck (the mission service's rule); this long after the
    #: exception was raised (real seconds) the command centre's hand reopens the road: resume, then resolve. Shorter
    #: than the stop hold, or the truck's run ends on the shoulder first.
    closure_reopen_real_seconds: float = 30.0
    #: Tender these lanes ((origin, destination) market codes of the eligibility policy) in this order, round robin,
    #: instead of at random among the lanes a truck can reach: a rehearsal that runs the same way every time.
    lanes: tuple[tuple[str, str], ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise ValueError(f"unknown scenario {unknown[0] if unknown else '(none)'!r}: one or more of "
                             f"{', '.join(SCENARIOS)}")
        if not 1 <= self.trucks <= 200:
            raise ValueError(f"trucks must be 1-200, not {self.trucks}")
        if not 0 < self.tenders_per_minute <= 600:
            raise ValueError(f"tenders per minute must be in (0, 600], not {self.tenders_per_minute}")
        if not 1 <= self.speedup <= 3600:
            raise ValueError(f"speedup must be 1-3600, not {self.speedup}")
        if not 0 <= self.closure_reopen_real_seconds < self.stop_hold_real_seconds:
            raise ValueError(f"the closure reopen delay ({self.closure_reopen_real_seconds:g} s) must be shorter "
                             f"than the stop hold ({self.stop_hold_real_seconds:g} s): the truck would give up first")


@dataclass(frozen=True)
class SandboxLane:
    """A lane the sandbox tenders: its market codes and where its loads are picked up and delivered."""

    origin: str
    destination: str
    origin_point: Point
    destination_point: Point


def sandbox_lanes(policy: Mapping[str, Any], facts: LaneFacts) -> list[SandboxLane]:
    """Every lane of the eligibility policy whose two markets the lane facts know, in the policy's order. Its stops
    are the markets' terminals, except in a market whose urban core is not approved for autonomous operation
    (Phoenix): there just outside the core, on the side facing the lane's other end, as a shipper's yard on the
    edge of town, so that the tender is not refused for the urban core."""
    lanes = []
    for lane in policy.get("lanes", ()):
        origin, destination = facts.market(lane.get("origin", "")), facts.market(lane.get("destination", ""))
        if origin is None or destination is None:
            continue
        lanes.append(SandboxLane(origin.code, destination.code, _stop_in(origin, destination),
                                 _stop_in(destination, origin)))
    return lanes


def _stop_in(market: Market, other: Market) -> Point:
    miles = market.miles_to(other.lat, other.lon)
    if market.urban_core_approved or not miles:
        return market.lat, market.lon
    # Straight towards the other market in degrees: a few miles off a great circle's bearing is no matter here.
    fraction = (market.urban_core_radius_miles + _OUTSIDE_CORE_MILES) / miles
    return (round(market.lat + (other.lat - market.lat) * fraction, 5),
            round(market.lon + (other.lon - market.lon) * fraction, 5))


def reachable_lanes(lanes: list[SandboxLane], trucks_at: list[Point], facts: LaneFacts) -> list[SandboxLane]:
    """The lanes whose origin one of the trucks at ``trucks_at`` reaches within a synthetic tender's pickup window
    (road miles by the lane facts at their planning speed: the deadhead the mission service counts capacity by)."""
    reach_miles = _PICKUP_WINDOW.total_seconds() / 3600 * facts.planning_speed_mph
    return [lane for lane in lanes if any(facts.road_miles(at, lane.origin_point) < reach_miles for at in trucks_at)]


def synthetic_tender(rng: random.Random, lane: SandboxLane, now: datetime) -> dict[str, Any]:
    """A TMS's tender on ``lane`` (REST JSON): pickup within the next hour, a dry van, a plausible weight."""
    pickup = (now + timedelta(minutes=rng.randint(1, 60))).replace(second=0, microsecond=0)
    end = pickup + _PICKUP_WINDOW
    return {
        "tenderId": f"SBX-{now:%Y%m%d}-{uuid.uuid4().hex[:8].upper()}",
        "origin": {"lat": lane.origin_point[0], "lon": lane.origin_point[1], "address": lane.origin},
        "destination": {"lat": lane.destination_point[0], "lon": lane.destination_point[1],
                        "address": lane.destination},
        "pickupWindow": f"{pickup:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}",
        "equipment": "53FT_DRYVAN",
        "weightLb": rng.randrange(18_000, 44_000, 500),
        "specialInstructions": "sandbox: synthetic load",
    }


def _eligibility_policy() -> dict[str, Any]:
    # The tender service's own default policy file (package data), as a client reads a published document.
    return json.loads(resources.files("services.tender").joinpath("eligibility.json").read_text())


@dataclass
class SandboxTruck:
    """One simulated truck: its process, its runs and what they reported."""

    vehicle_id: str
    scenario: str
    #: The last runs' reports (the simulator's JSON line), newest last.
    reports: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_REPORTS_KEPT))
    process: asyncio.subprocess.Process | None = None


class Sandbox:
    """The sandbox on a started mesh (see the module docstring)."""

    def __init__(self, mesh: Mesh, config: SandboxConfig, *, say: Callable[[str], None] = print) -> None:
        self.mesh = mesh
        self.config = config
        self.say = say
        self.rng = random.Random(config.seed)  # noqa: S311 - synthetic loads, not secrets
        self.trucks = [SandboxTruck(f"SBX-TRK-{i + 1:03d}", scenario)
                       for i, scenario in zip(range(config.trucks), itertools.cycle(config.scenarios), strict=False)]
        self.facts = load_lane_facts()
        self.lanes = sandbox_lanes(_eligibility_policy(), self.facts)
        if not self.lanes:
            raise ValueError("no lane of the eligibility policy joins two markets of the lane facts")
        if config.lanes:
            known = {(lane.origin, lane.destination): lane for lane in self.lanes}
            if unknown := [f"{o} > {d}" for o, d in config.lanes if (o, d) not in known]:
                raise ValueError(f"lane {unknown[0]} is not a lane of the eligibility policy between known markets")
            self.lanes = [known[pair] for pair in config.lanes]
        #: Tenders sent, by the state they were left in (accepted, rejected, ...).
        self.tenders: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._channel: grpc.aio.Channel | None = None
        self._telemetry_channel: grpc.aio.Channel | None = None
        self._ops: mission_service_pb2_grpc.MissionServiceStub | None = None
        self._commands: telemetry_service_pb2_grpc.TelemetryServiceStub | None = None
        self._tendered = 0
        self._stopping = False

    @property
    def console_url(self) -> str:
        return (f"http://127.0.0.1:{self.mesh.http_port}/console/dev-login?role=fleet-operator"
                f"&carrier={self.config.carrier}")

    async def start(self) -> None:
        """Register and start the trucks, then the TMS and the command-centre hand."""
        token = mint(carrier=self.config.carrier, scopes=_TMS_SCOPES, state_dir=self.mesh.state_dir,
                     subject="sandbox-tms", ttl_seconds=24 * 3600)
        self._http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.mesh.http_port}", timeout=30,
                                       headers={"Authorization": f"Bearer {token}"})
        self._channel = grpc.aio.secure_channel(self.mesh.address("mission"), self.mesh.operator_credentials())
        self._ops = ops = mission_service_pb2_grpc.MissionServiceStub(self._channel)
        self._telemetry_channel = grpc.aio.secure_channel(self.mesh.address("telemetry"),
                                                          self.mesh.operator_credentials())
        self._commands = telemetry_service_pb2_grpc.TelemetryServiceStub(self._telemetry_channel)
        ca = pki.load_ca(self.mesh.cert_dir)
        for truck in self.trucks:
            if not (self.mesh.cert_dir / f"vehicle-{truck.vehicle_id}.pem").exists():
                issued = pki.issue(ca, pki.identity_for("vehicle", truck.vehicle_id), valid_days=30)
                pki.write_pem_files(self.mesh.cert_dir, f"vehicle-{truck.vehicle_id}", issued, ca.certificate_pem)
            try:
                await ops.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
                    vehicle_id=truck.vehicle_id, vehicle=vehicle_pb2.Vehicle(
                        display_name=f"Sandbox truck {truck.vehicle_id}", home_region=_HOME,
                        capabilities=vehicle_pb2.VehicleCapabilities(
                            equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                            night_operations=True))), timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # registered by an earlier sandbox: fine
                    raise
            self._tasks.append(asyncio.create_task(self._drive(truck), name=f"truck {truck.vehicle_id}"))
        self._tasks.append(asyncio.create_task(self._tms(), name="tms"))
        self._tasks.append(asyncio.create_task(self._command_centre(ops), name="command centre"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for truck in self.trucks:
            await _terminate(truck.process)
        if self._http is not None:
            await self._http.aclose()
        for channel in (self._channel, self._telemetry_channel):
            if channel is not None:
                await channel.close()

    # --- the trucks ---------------------------------------------------------------------------------------

    def _edge(self, truck: SandboxTruck, *args: str) -> list[str]:
        folder = self.mesh.state_dir / "sandbox" / truck.vehicle_id
        folder.mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-m", "edge_client", "--cert-dir", str(self.mesh.cert_dir),
                "--target", self.mesh.address("telemetry"), *args[:1], "--vehicle", truck.vehicle_id,
                "--spool", str(folder / "spool.db"), *args[1:]]

    async def _drive(self, truck: SandboxTruck) -> None:
        while not self._stopping:
            try:
                report = await self._run_once(truck)
                if report.get("arrived"):
                    await self._deliver(truck)
            except (OSError, httpx.HTTPError, ValueError) as exc:  # a mesh restart or a slow store: drive on
                self.say(f"truck {truck.vehicle_id}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1)

    async def _run_once(self, truck: SandboxTruck) -> dict[str, Any]:
        """One run of the simulator: wait for a mission, drive it with the truck's scenario; its JSON report."""
        config = self.config
        args = ["simulate", "--wait-for-mission", "--route-from-assignment", "--speedup", str(config.speedup),
                "--frame-every-sim-seconds", str(config.frame_every_sim_seconds), "--quiet",
                "--stop-hold-seconds", str(max(1, round(config.stop_hold_real_seconds * config.speedup))),
                "--backoff-base", "0.2", "--backoff-cap", "2", "--drain-seconds", "30",
                "--pickup-dwell-minutes", f"{config.pickup_dwell_real_seconds * config.speedup / 60:g}"]
        if (scenario := SCENARIOS[truck.scenario]) is not None:
            if scenario == "connectivity-loss":
                scenario += f":{config.outage_real_seconds * config.speedup / 60:g}"
            args += ["--scenario", scenario]
            if config.scenario_at_sim_minutes is not None:
                args += ["--scenario-at", str(config.scenario_at_sim_minutes)]
        if config.max_sim_minutes is not None:
            args += ["--max-sim-minutes", str(config.max_sim_minutes)]
        with self._log_path(truck).open("ab") as log:
            truck.process = await asyncio.create_subprocess_exec(
                *self._edge(truck, *args), stdout=asyncio.subprocess.PIPE, stderr=log)
            out, _ = await truck.process.communicate()
        lines = out.decode(errors="replace").strip().splitlines()
        report: dict[str, Any] = {"exit": truck.process.returncode}
        with contextlib.suppress(ValueError, IndexError):
            report.update(json.loads(lines[-1]))
        truck.reports.append(report)
        self.say(f"truck {truck.vehicle_id} ({truck.scenario}): run ended, {report.get('frames', 0)} frames, "
                 f"{'arrived' if report.get('arrived') else 'not arrived'} (exit {report['exit']})")
        return report

    def _log_path(self, truck: SandboxTruck) -> Path:
        return self.mesh.state_dir / "logs" / f"edge-{truck.vehicle_id}.log"

    async def _deliver(self, truck: SandboxTruck) -> None:
        """The truck's proof of delivery for the mission it arrived with, built from its own spool and submitted once
        the mission is ARRIVED (an exception still open at arrival is the command centre's to close first)."""
        mine = [m for m in await self._missions() if m.get("vehicle") == f"vehicles/{truck.vehicle_id}"]
        if not mine:
            return
        mission = mine[0]["name"]
        for _ in range(_DELIVERY_ATTEMPTS):  # an exception raised at arrival is closed first (command centre)
            if not await self._until_arrived(truck, mission):
                return
            with self._log_path(truck).open("ab") as log:
                pod = await asyncio.create_subprocess_exec(
                    *self._edge(truck, "pod", "--mission", mission, "--received-by", "Sandbox consignee", "--submit",
                                "--mission-target", self.mesh.address("mission")), stdout=log, stderr=log)
                await pod.wait()
            if pod.returncode == 0:
                self.say(f"truck {truck.vehicle_id}: proof of delivery for {mission} submitted")
                return
        self.say(f"truck {truck.vehicle_id}: proof of delivery for {mission} refused {_DELIVERY_ATTEMPTS} times "
                 f"(see {self._log_path(truck)})")

    async def _until_arrived(self, truck: SandboxTruck, mission: str) -> bool:
        assert self._http is not None
        deadline, answer = time.monotonic() + _DELIVERY_WAIT_SECONDS, {}
        while time.monotonic() < deadline:
            answer = (await self._http.get(f"/api/v1/{mission}")).json()
            if answer.get("state") == "STATE_ARRIVED":
                return True
            await asyncio.sleep(1)
        still = [e.get("kind", "?") for e in answer.get("exceptions", []) if not e.get("resolveTime")]
        self.say(f"truck {truck.vehicle_id}: arrived, but {mission} is {answer.get('state')} (open: "
                 f"{', '.join(still) or 'none'}): no proof submitted")
        return False

    async def _missions(self) -> list[dict[str, Any]]:
        assert self._http is not None
        answer = await self._http.get("/api/v1/missions", params={"pageSize": 100})
        answer.raise_for_status()
        return list(answer.json().get("missions", []))

    # --- the TMS ------------------------------------------------------------------------------------------

    async def _tms(self) -> None:
        assert self._http is not None
        period = 60.0 / self.config.tenders_per_minute
        while True:
            try:
                lane = await self._next_lane()
                answer = await self._http.post("/api/v1/tenders", json=synthetic_tender(
                    self.rng, lane, datetime.now(UTC)), headers={"Idempotency-Key": str(uuid.uuid4())})
                tender = answer.json()
                if answer.status_code != 200:
                    self.say(f"tender refused: {answer.status_code} {tender.get('message', '')}")
                elif tender.get("state") == "STATE_OFFERED":
                    accepted = await self._http.post(f"/api/v1/{tender['name']}:accept", json={})
                    body = accepted.json()
                    self.tenders[body.get("state", "?")] += 1
                    if body.get("mission"):
                        await self._clear_departure(body["mission"])
                    self.say(f"tender {tender['name']} {lane.origin} → {lane.destination}: offered, "
                             f"{'accepted → ' + body['mission'] if body.get('mission') else body.get('message', '')}")
                else:
                    self.tenders[tender.get("state", "?")] += 1
                    reasons = ", ".join(r.get("description", "") for r in tender.get("rejectionReasons", []))
                    self.say(f"tender {tender['name']} {lane.origin} → {lane.destination}: "
                             f"{tender.get('state', '?').removeprefix('STATE_').lower()} {reasons}".rstrip())
            except (httpx.HTTPError, grpc.aio.AioRpcError, ValueError) as exc:  # a service restarting: next time
                self.say(f"tender not sent: {type(exc).__name__}: {exc}")
            await asyncio.sleep(period)

    async def _next_lane(self) -> SandboxLane:
        """The configured lanes in turn; else a lane at random among those an available truck can reach (any lane
        when every truck is busy: the TMS does not know the fleet, its tender is then refused for no capacity)."""
        if self.config.lanes:
            self._tendered += 1
            return self.lanes[(self._tendered - 1) % len(self.lanes)]
        return self.rng.choice(reachable_lanes(self.lanes, await self._available_trucks_at(), self.facts)
                               or self.lanes)

    async def _available_trucks_at(self) -> list[Point]:
        """Where the sandbox's available trucks are as dispatch sees them: the position each last reported (where
        its last run ended), else its home terminal."""
        assert self._ops is not None
        mine, found, token = {f"vehicles/{truck.vehicle_id}" for truck in self.trucks}, [], ""
        while True:
            page = await self._ops.ListVehicles(mission_service_pb2.ListVehiclesRequest(
                page_size=_VEHICLES_PAGE, page_token=token, filter="availability = AVAILABLE"), timeout=10)
            for vehicle in page.vehicles:
                if vehicle.name not in mine:
                    continue
                if vehicle.HasField("last_location"):
                    found.append((vehicle.last_location.lat, vehicle.last_location.lon))
                elif (home := self.facts.market(vehicle.home_region)) is not None:
                    found.append((home.lat, home.lon))
            if not (token := page.next_page_token):
                return found

    # --- the command centre's hand ------------------------------------------------------------------------

    async def _command_centre(self, ops: mission_service_pb2_grpc.MissionServiceStub) -> None:
        assert self._http is not None
        while True:
            try:
                for mission in await self._missions():
                    await self._check_in(mission)
                    await self._hand_back(ops, mission)
                    await self._reopen_road(ops, mission)
                    await self._close_at_arrival(ops, mission)
            except (httpx.HTTPError, grpc.aio.AioRpcError, ValueError) as exc:
                self.say(f"command centre: {type(exc).__name__}: {exc}")
            await asyncio.sleep(2)

    async def _clear_departure(self, mission_name: str) -> None:
        """A lane's first missions need a remote operator's DEPARTURE check-in before the truck may start: given at
        once, before the truck's pre-trip frame comes back (a start refused for it is not retried)."""
        assert self._http is not None
        mission = (await self._http.get(f"/api/v1/{mission_name}")).json()
        if mission.get("checkInRequirement", {}).get("required"):
            await self._record_check_in(mission_name, "POINT_DEPARTURE")

    async def _check_in(self, mission: dict[str, Any]) -> None:
        """En-route and arrival check-ins, ``check_in_delay_seconds`` after they fell due."""
        due = mission.get("checkInRequirement", {}).get("nextDueTime")
        state = mission.get("resumeState") if mission.get("state") == "STATE_EXCEPTION" else mission.get("state")
        point = {"STATE_DISPATCHED": "POINT_DEPARTURE", "STATE_PRE_TRIP": "POINT_DEPARTURE",
                 "STATE_ENROUTE": "POINT_ENROUTE", "STATE_ARRIVED": "POINT_ARRIVAL"}.get(state or "")
        if not due or point is None:
            return
        if point != "POINT_DEPARTURE" and _age_seconds(due) < self.config.check_in_delay_seconds:
            return
        await self._record_check_in(mission["name"], point)

    async def _record_check_in(self, mission_name: str, point: str) -> None:
        assert self._http is not None
        answer = await self._http.post(f"/api/v1/{mission_name}:recordCheckIn", json={
            "checkIn": {"point": point, "outcome": "OUTCOME_PROCEED", "notes": "sandbox command centre"}})
        if answer.status_code == 200:
            self.say(f"check-in {point.removeprefix('POINT_').lower()} recorded for {mission_name}")

    async def _close_at_arrival(self, ops: mission_service_pb2_grpc.MissionServiceStub,
                                mission: dict[str, Any]) -> None:
        """The truck at its destination with a closure rerouted around or a monitored exception (a deviation from
        the route corridor) still open: the command centre closes it (the mission stays in EXCEPTION until a person
        says so), so the delivery can be recorded."""
        if mission.get("state") != "STATE_EXCEPTION" or mission.get("resumeState") != "STATE_ARRIVED":
            return
        for exception in mission.get("exceptions", []):
            if exception.get("contingency") in ("CONTINGENCY_REROUTE", "CONTINGENCY_CONTINUE") \
                    and not exception.get("resolveTime"):
                await ops.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
                    name=mission["name"], exception_id=exception["exceptionId"],
                    resolution="sandbox: the truck reached its stop"),
                    metadata=carrier_metadata(self.config.carrier), timeout=10)
                self.say(f"{mission['name']}: {exception['kind'].removeprefix('KIND_').lower()} closed, the truck "
                         "reached its stop")

    async def _reopen_road(self, ops: mission_service_pb2_grpc.MissionServiceStub, mission: dict[str, Any]) -> None:
        """A road closure no mapped road leads around: the mission service stopped the truck (a minimal-risk stop)
        until an operator sends a route or resumes it. ``closure_reopen_real_seconds`` after it was raised, the hand
        does what a person would once the road reopens: the truck's resume (once: the request id is the
        exception's), then the exception resolved, so that the mission runs on to its delivery."""
        assert self._commands is not None
        for exception in mission.get("exceptions", []):
            if (exception.get("kind") != "KIND_ROAD_CLOSURE" or exception.get("resolveTime")
                    or exception.get("contingency") != "CONTINGENCY_MINIMAL_RISK_STOP" or not mission.get("vehicle")
                    or _age_seconds(exception["raiseTime"]) < self.config.closure_reopen_real_seconds):
                continue
            mission_id = mission["name"].removeprefix("missions/")
            await self._commands.CreateVehicleCommand(telemetry_service_pb2.CreateVehicleCommandRequest(
                parent=mission["vehicle"], request_id=f"sandbox-reopen:{mission_id}:{exception['exceptionId']}",
                vehicle_command=command_pb2.VehicleCommand(
                    resume=stream_pb2.ResumeVehicle(), reason="sandbox: the road reopened")), timeout=10)
            await ops.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
                name=mission["name"], exception_id=exception["exceptionId"],
                resolution="sandbox: the road reopened; the truck resumed"),
                metadata=carrier_metadata(self.config.carrier), timeout=10)
            self.say(f"road closure on {mission['name']}: reopened, the truck resumed")

    async def _hand_back(self, ops: mission_service_pb2_grpc.MissionServiceStub, mission: dict[str, Any]) -> None:
        for exception in mission.get("exceptions", []):
            if (exception.get("contingency") != "CONTINGENCY_HUMAN_TAKEOVER" or exception.get("resolveTime")
                    or not exception.get("takeover", {}).get("controlTime")
                    or _age_seconds(exception["takeover"]["controlTime"]) < self.config.takeover_hold_seconds):
                continue
            await ops.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
                name=mission["name"], exception_id=exception["exceptionId"],
                resolution="sandbox: the remote operator hands control back"),
                metadata=carrier_metadata(self.config.carrier), timeout=10)
            self.say(f"takeover on {mission['name']}: control handed back to the truck")


def _age_seconds(timestamp: str) -> float:
    return time.time() - datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def _terminate(process: asyncio.subprocess.Process | None) -> None:
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 5)
    except TimeoutError:
        process.kill()
        await process.wait()

