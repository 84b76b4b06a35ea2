"""``haulmesh sandbox`` (``make sandbox``): the whole mesh with a sandbox carrier, synthetic tenders and simulated
trucks running the rollout's rescue scenarios, to watch on the console or to rehearse the command centre.

What runs:

* the mesh as ``haulmesh run`` starts it (embedded store, dev certificates, the gateway in dev mode with the console's
  dev login signing in to the sandbox carrier);
* N trucks, each a separate ``haulmesh-edge simulate`` process waiting for a mission, with its own certificate and
  spool; each runs one scenario of :data:`SCENARIOS` (round robin), and after its run the truck submits its proof of
  delivery (``haulmesh-edge pod --submit``) when it arrived, then waits for the next mission;
* a TMS: synthetic tenders at ``--tenders-per-minute`` on the lanes of the eligibility policy the simulator can
  drive (those with a known route in the lane facts), accepted as soon as offered;
* a command-centre hand: due check-ins recorded with PROCEED after ``check_in_delay_seconds`` (so a lane's first
  missions flow; the console shows them due in between), and a truck under remote control handed back after
  ``takeover_hold_seconds``.

Nothing here bypasses the mesh: the TMS goes through the REST door with a dev token, the command-centre hand through
the REST door too (its check-ins) and the operator's gRPC (the hand-back), the trucks over their mTLS streams.
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
from haulmesh.type.v1 import equipment_pb2

from . import pki
from ._keys import carrier_metadata
from ._mesh import Mesh
from .lanes import LaneFacts, load_lane_facts
from .tokens import mint

__all__ = ["SCENARIOS", "Sandbox", "SandboxConfig", "SandboxTruck", "sandbox_lanes", "synthetic_tender"]

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


@dataclass(frozen=True)
class SandboxLane:
    origin: str
    destination: str
    origin_point: tuple[float, float]
    destination_point: tuple[float, float]


def sandbox_lanes(policy: Mapping[str, Any], facts: LaneFacts) -> list[SandboxLane]:
    """The eligibility policy's lanes the simulator can drive: both markets known and a route of the lane facts
    between them, either way (the simulator follows a known route's waypoints, backwards on the way home)."""
    lanes = []
    for lane in policy.get("lanes", ()):
        origin, destination = facts.market(lane.get("origin", "")), facts.market(lane.get("destination", ""))
        if origin is None or destination is None:
            continue
        ends = [(origin.lat, origin.lon), (destination.lat, destination.lon)]
        if facts.known_route(ends) is None and facts.known_route(ends[::-1]) is None:
            continue
        lanes.append(SandboxLane(origin.code, destination.code, (origin.lat, origin.lon),
                                 (destination.lat, destination.lon)))
    return lanes


def synthetic_tender(rng: random.Random, lane: SandboxLane, now: datetime) -> dict[str, Any]:
    """A TMS's tender on ``lane`` (REST JSON): pickup within the next hour, a dry van, a plausible weight."""
    pickup = (now + timedelta(minutes=rng.randint(1, 60))).replace(second=0, microsecond=0)
    return {
        "tenderId": f"SBX-{now:%Y%m%d}-{uuid.uuid4().hex[:8].upper()}",
        "origin": {"lat": lane.origin_point[0], "lon": lane.origin_point[1], "address": lane.origin},
        "destination": {"lat": lane.destination_point[0], "lon": lane.destination_point[1],
                        "address": lane.destination},
        "pickupWindow": f"{pickup:%Y-%m-%dT%H:%M:%SZ}/{pickup + timedelta(hours=10):%Y-%m-%dT%H:%M:%SZ}",
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
        self.lanes = sandbox_lanes(_eligibility_policy(), load_lane_facts())
        if not self.lanes:
            raise ValueError("no lane of the eligibility policy has a route the simulator can drive")
        #: Tenders sent, by the state they were left in (accepted, rejected, ...).
        self.tenders: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._channel: grpc.aio.Channel | None = None
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
        ops = mission_service_pb2_grpc.MissionServiceStub(self._channel)
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
        if self._channel is not None:
            await self._channel.close()

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
            lane = self.rng.choice(self.lanes)
            try:
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
            except (httpx.HTTPError, ValueError) as exc:  # the mesh restarting a service: try again next time
                self.say(f"tender not sent: {type(exc).__name__}: {exc}")
            await asyncio.sleep(period)

    # --- the command centre's hand ------------------------------------------------------------------------

    async def _command_centre(self, ops: mission_service_pb2_grpc.MissionServiceStub) -> None:
        assert self._http is not None
        while True:
            try:
                for mission in await self._missions():
                    await self._check_in(mission)
                    await self._hand_back(ops, mission)
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

