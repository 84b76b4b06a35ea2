"""``make demo``: the whole seed flow, from a TMS tender to a reconciled invoice, with a simulated truck.

It starts the store and every service on free ports (state in .haulmesh/demo, recreated each run), a local
webhook receiver standing in for the TMS, and the edge simulator as truck AU-TRK-1001, then drives the
seed's flow and waits for each milestone as the TMS sees it (signed webhooks, and the mission over REST):

    tender posted over REST with a dev token (the seed's payload) → offer → accepted → mission dispatched
    → the truck powers up and gets its assignment over its telemetry stream → its CommandAck: PRE_TRIP
    → its signed pre-trip HEALTH frame: ENROUTE → geofence exit at the pickup, ETA updates as it drives
    → a dead zone: connectivity lost, a CONNECTIVITY_LOSS exception, the spool replayed on reconnect
    → the delivery geofence: ARRIVED → proof of delivery built and signed by the truck's edge client, its
    telemetry log hash recomputed by the server → invoice billing the miles measured from the signed frames
    (with their provenance) → reconciled → the frames archived (Parquet) → the pilot's KPI report → the
    mission's evidence pack exported, verified offline, and shown to fail with one byte changed,

with a progress bar of the drive (redrawn in place on a terminal, plain lines otherwise). It ends with a
summary: frames recorded by the truck and stored by the server (none lost, none stored twice), webhooks by
type with every signature verified, the audit chain intact. Exit status 0 only if every step happened.

The truck is a subprocess running the edge CLI (``python -m edge_client simulate``), as a truck would run
it: its own process, its own spool, its own mTLS identity, and its CPU apart from the demo's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import uvicorn
from localmesh import fresh_mesh, register_truck
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_client.simulator import CRUISE_KPH, lane_between
from edge_client.spool import Spool
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    METERS_PER_MILE,
    Mesh,
    carrier_metadata,
    cli,
    connect_async,
    connect_sync,
    free_port,
    great_circle_miles,
    poll_until,
    tokens,
    verify_audit_log,
)
from services.telemetry.store import TelemetryStore

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".haulmesh" / "demo"
CARRIER = "russell-transport"
#: The seed's truck on the demo's own fresh store. On an external store (REDIS_URL) a new truck per run: the store
#: remembers earlier runs' trucks (their roster entries, their stored sequences).
TRUCK = f"AU-TRK-{secrets.token_hex(3).upper()}" if os.environ.get("REDIS_URL") else "AU-TRK-1001"
SCOPES = ("tender:create tender:read tender:update tender:cancel tender:respond mission:read mission:checkin "
          "billing:read billing:reconcile telemetry:read webhook:read webhook:write report:read")

# The drive: Houston → Atlanta (≈ 12 simulated hours at 105 km/h) in about 36 real seconds. One position
# frame every 15 simulated seconds keeps the truck at ~80 frames/s (a few % of one core for signing and
# the spool's fsyncs) and the telemetry service far below its capacity, on a 2-core machine.
SPEEDUP = 1200
FRAME_EVERY_SIM_SECONDS = 15
# The dead zone: 100 simulated minutes (5 real seconds) of no link, 6 simulated hours into the drive
# (rural Mississippi). Long enough to be declared lost with the short liveness timeout below.
OUTAGE_AT_SIM_MINUTES = 360
OUTAGE_SIM_MINUTES = 100
# The demo's mesh announces a 0.5 s heartbeat and declares a truck lost after 2 s of silence (defaults:
# 5 s and 15 s), so that a 5-second dead zone is seen as one.
# Fleet state reaches the roster every 2 s (default 10 s), so the ETA shows on GET mission during the short drive.
MESH_ENV = {"HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "HAULMESH_TELEMETRY_LIVENESS_TIMEOUT_SECONDS": "2",
            "HAULMESH_TELEMETRY_FLEET_FLUSH_SECONDS": "2"}
STEP_TIMEOUT_SECONDS = 20.0

# The seed's tender, as the seed writes it (docs/examples/seed-tender.json); only the pickup window moves to
# tomorrow (the seed's date is in the past, and the tender service rightly refuses windows in the past).
SEED_TENDER = json.loads((ROOT / "docs" / "examples" / "seed-tender.json").read_text())

TTY = sys.stdout.isatty()
BOLD, DIM, GREEN, RED, YELLOW, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m") \
    if TTY else ("", "", "", "", "", "")
_began = time.monotonic()


def elapsed() -> float:
    """Seconds since the demo started."""
    return time.monotonic() - _began


class View:
    """The live terminal view: lines as things happen, and one progress bar of the drive below them.

    On a terminal the bar is redrawn in place (carriage return, erase line) and every printed line goes
    above it; elsewhere (CI, a pipe) the bar becomes a plain line at every tenth of the drive. Plain ANSI
    rather than a terminal library: one line redrawn in place is all it takes.
    """

    def __init__(self) -> None:
        self._bar = ""
        self._tenth = -1

    def print(self, text: str) -> None:
        if self._bar:
            sys.stdout.write("\r\033[2K")
        print(text, flush=True)
        if self._bar:
            sys.stdout.write(self._bar)
            sys.stdout.flush()

    def bar(self, fraction: float, text: str) -> None:
        fraction = max(0.0, min(1.0, fraction))
        if not TTY:
            if int(fraction * 10) > self._tenth:
                self._tenth = int(fraction * 10)
                self.print(f"{elapsed():6.1f}s  drive {fraction:4.0%}  {text}")
            return
        columns = shutil.get_terminal_size((120, 24)).columns
        width = 28 if columns >= 120 else 16
        filled = round(fraction * width)
        # A bar that wraps cannot be redrawn in place: the text is cut to the terminal's width.
        text = text[: max(0, columns - width - 16)]
        line = f"{elapsed():6.1f}s  {GREEN}{'█' * filled}{DIM}{'░' * (width - filled)}{RESET} {fraction:4.0%}  {text}"
        self._bar = line
        sys.stdout.write("\r\033[2K" + line)
        sys.stdout.flush()

    def close_bar(self) -> None:
        if self._bar:
            sys.stdout.write("\r\033[2K")
            sys.stdout.flush()
            self._bar = ""


VIEW = View()


def step(text: str) -> None:
    VIEW.print(f"{DIM}{elapsed():6.1f}s{RESET}  {BOLD}{text}{RESET}")


def milestone(text: str) -> None:
    VIEW.print(f"{DIM}{elapsed():6.1f}s{RESET}  {GREEN}✓{RESET} {BOLD}{text}{RESET}")


def detail(text: str) -> None:
    VIEW.print(f"         {text}")


class DemoFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


def _data(event: dict) -> dict:
    """The payload of a webhook event: its one ``data`` field (``haulmesh.telemetry.v1.eta_updated`` is
    ``telemetryEtaUpdated`` in proto-JSON)."""
    area, name = event.get("type", "").removeprefix("haulmesh.").split(".v1.")
    key = area + "".join(part.title() for part in name.split("_"))
    return event.get(key, {})


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds(duration: str) -> float:
    """A proto-JSON Duration ("4.512s")."""
    return float(duration.removesuffix("s") or 0)


class WebhookReceiver:
    """The TMS's webhook endpoint: verifies every delivery's signature (Standard Webhooks) independently."""

    def __init__(self) -> None:
        self.port = free_port()
        self.secret: bytes | None = None
        self.received: list[dict] = []
        self.rejected = 0
        app = Starlette(routes=[Route("/hooks/haulmesh", self._hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                     access_log=False, lifespan="off"))
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/haulmesh"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        if self.secret is None:
            return False
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return False
        expected = base64.b64encode(hmac.new(self.secret, f"{msg_id}.{stamp}.".encode() + body,
                                             hashlib.sha256).digest()).decode()
        offered = [s.partition(",")[2] for s in headers.get("webhook-signature", "").split()]
        return any(hmac.compare_digest(expected, s) for s in offered)

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        if not self.verify({k.lower(): v for k, v in request.headers.items()}, body):
            self.rejected += 1
            return Response(status_code=401)
        self.received.append(json.loads(body))
        return Response(status_code=204)

    def types(self) -> list[str]:
        return [e.get("type", "") for e in self.received]

    def find(self, short_type: str, where: Callable[[dict], bool] = lambda _: True) -> dict | None:
        """The payload of the first verified event of ``haulmesh.<short_type>`` matching ``where``."""
        wanted = f"haulmesh.{short_type}"
        return next((_data(e) for e in self.received if e.get("type") == wanted and where(_data(e))), None)

    def all(self, short_type: str) -> list[dict]:
        wanted = f"haulmesh.{short_type}"
        return [_data(e) for e in self.received if e.get("type") == wanted]

    def state_reached(self, state: str, previous: str | None = None) -> dict | None:
        """The first ``mission.v1.state_changed`` to ``state`` (from ``previous``, if given)."""
        return self.find("mission.v1.state_changed", lambda d: d.get("mission", {}).get("state") == state and (
            previous is None or d.get("previousState") == previous))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task


#: The simulator's dead zone as `make demo` drives it (the EDI demo drives without one).
DEAD_ZONE_ARGS = ("--scenario", f"connectivity-loss:{OUTAGE_SIM_MINUTES}", "--scenario-at", str(OUTAGE_AT_SIM_MINUTES))


class Truck:
    """Truck AU-TRK-1001: the edge CLI's simulator in its own process, and what the demo reads of it.

    ``speedup`` and ``scenario_args`` (the simulator's ``--scenario`` options) are `make demo`'s unless given."""

    def __init__(self, mesh: Mesh, *, speedup: int = SPEEDUP, scenario_args: tuple[str, ...] = DEAD_ZONE_ARGS) -> None:
        self.mesh = mesh
        self.speedup = speedup
        self.scenario_args = scenario_args
        self.dir = mesh.state_dir / "edge" / TRUCK
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spool_path = self.dir / "spool.db"
        self.log_path = mesh.state_dir / "logs" / "edge.log"
        self.process: asyncio.subprocess.Process | None = None
        self.report: dict[str, Any] = {}
        self._spool: Spool | None = None
        self._log = None

    async def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_client", "--cert-dir", str(self.mesh.cert_dir),
            "--target", self.mesh.address("telemetry"),
            "simulate", "--vehicle", TRUCK, "--spool", str(self.spool_path), "--wait-for-mission",
            "--route-from-assignment", "--speedup", str(self.speedup),
            "--frame-every-sim-seconds", str(FRAME_EVERY_SIM_SECONDS), *self.scenario_args,
            "--backoff-base", "0.2", "--backoff-cap", "1", "--drain-seconds", "30", "--quiet",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=self._log)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def progress(self) -> dict[str, Any]:
        """The simulator's saved progress (distance, simulated seconds), rewritten every 10 simulated s."""
        try:
            return json.loads((self.dir / "spool.sim.json").read_text())
        except (OSError, ValueError):
            return {}

    def spool_stats(self):
        """The truck's spool as the truck sees it (SQLite WAL: a second reader never blocks the writer)."""
        if self._spool is None:
            if not self.spool_path.exists():
                return None
            self._spool = Spool(self.spool_path)
        return self._spool.stats()

    async def finish(self, timeout_seconds: float) -> dict[str, Any]:
        """Waits for the simulator to drain its spool and exit; its JSON report."""
        assert self.process is not None and self.process.stdout is not None
        try:
            out = await asyncio.wait_for(self.process.stdout.read(), timeout_seconds)
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            raise DemoFailed(f"step 'truck drains its spool': the edge process did not finish within "
                             f"{timeout_seconds:.0f}s (log: {self.log_path})") from None
        lines = out.decode().strip().splitlines()
        expect(bool(lines), f"the edge process printed no report (exit {self.process.returncode}, "
                            f"log: {self.log_path})")
        self.report = json.loads(lines[-1])
        expect(self.process.returncode == 0, f"step 'truck drains its spool': edge exit "
                                             f"{self.process.returncode}, report {self.report}")
        return self.report

    async def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        if self._spool is not None:
            self._spool.close()
        if self._log is not None:
            self._log.close()


def driven_miles(frames: list) -> float:
    """Miles along the track of ``frames`` (stored TelemetryFrames): great circle between consecutive positions
    in sequence order. What the truck drove as its signed frames tell it (billing does not use it yet)."""
    track = [(f.payload.position.lat, f.payload.position.lon)
             for f in sorted(frames, key=lambda f: f.signed_frame.sequence) if f.payload.HasField("position")]
    return sum(great_circle_miles(*a, *b) for a, b in itertools.pairwise(track))


async def until(predicate, what: str, timeout_seconds: float = STEP_TIMEOUT_SECONDS, truck: Truck | None = None):
    """Polls ``predicate`` (sync or async) until it returns something true; DemoFailed naming the step if it
    does not within ``timeout_seconds`` or if the truck's process died meanwhile."""
    async def step():
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        # Only a step still waiting fails on a dead truck: one that happened as the truck finished its drive
        # and exited did happen.
        if not value and truck is not None and truck.process is not None and not truck.running:
            raise DemoFailed(f"step '{what}': the truck's edge process exited ({truck.process.returncode}); "
                             f"log: {truck.log_path}")
        return value

    try:
        return await poll_until(step, timeout_seconds=timeout_seconds, what=what)
    except TimeoutError:
        raise DemoFailed(f"step '{what}': did not happen within {timeout_seconds:.0f}s") from None


@contextlib.asynccontextmanager
async def carrier_clients(mesh: Mesh, scopes: str) -> AsyncIterator[tuple[
        mission_service_pb2_grpc.MissionServiceStub, httpx.AsyncClient]]:
    """The fleet operator's mission stub (operator certificate) and the carrier's REST client (a dev token with
    ``scopes``), closed on leaving."""
    operator = grpc.aio.secure_channel(mesh.address("mission"), mesh.operator_credentials())
    token = tokens.mint(carrier=CARRIER, scopes=scopes, state_dir=mesh.state_dir)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=20,
                             headers={"Authorization": f"Bearer {token}"})
    try:
        yield mission_service_pb2_grpc.MissionServiceStub(operator), http
    finally:
        await http.aclose()
        await operator.close()


def issue_truck_certificate(mesh: Mesh) -> None:
    """The truck's mTLS certificate, unless the dev bootstrap issued it (it issues AU-TRK-1001's)."""
    if not (mesh.cert_dir / f"vehicle-{TRUCK}.pem").exists():
        expect(cli.main(["--cert-dir", str(mesh.cert_dir), "pki", "issue", "vehicle", TRUCK]) == 0,
               f"could not issue a certificate for {TRUCK}")


async def clear_departure(ops: mission_service_pb2_grpc.MissionServiceStub, mission_name: str, mission: dict) -> bool:
    """Records the remote operator's departure check-in when the lane is in its first missions (``mission`` as
    REST returns it); whether one was needed. Done before the truck powers up, so that its pre-trip frame finds
    the departure cleared."""
    if not mission.get("checkInRequirement", {}).get("required"):
        return False
    await ops.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
        name=mission_name, check_in=mission_pb2.CheckIn(
            point=mission_pb2.CheckIn.POINT_DEPARTURE, outcome=mission_pb2.CheckIn.OUTCOME_PROCEED,
            notes="remote operator cleared departure")), metadata=carrier_metadata(CARRIER), timeout=10)
    return True


async def submit_pod(mesh: Mesh, truck: Truck, mission_name: str) -> dict:
    """The truck builds, signs and submits its proof of delivery from its own spool (``haulmesh-edge pod``); the
    edge CLI's report (first and last sequence, the telemetry log's hash)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_client", "--cert-dir", str(mesh.cert_dir),
        "pod", "--vehicle", TRUCK, "--spool", str(truck.spool_path), "--mission", mission_name,
        "--seal-number", "SEAL-88231", "--received-by", "Dock 7, Atlanta DC", "--submit",
        "--mission-target", mesh.address("mission"), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 90)
    expect(process.returncode == 0, f"haulmesh-edge pod exited {process.returncode}: {err.decode()[-500:]}")
    return json.loads(out.decode().strip().splitlines()[-1])



async def run() -> None:
    step(f"Issuing dev certificates (CA, every service, the operator CLI, truck {TRUCK})")
    # The receiver is on loopback: allow it explicitly (the gateway refuses private destinations otherwise).
    # REDIS_URL (a real Redis / Valkey, or a cluster) replaces the embedded store, as for the services.
    redis_url = os.environ.get("REDIS_URL") or None
    # An external store outlives the demo's fresh state folder; its archive must too (the store remembers which
    # archive holds its frames and telemetry refuses another): one archive folder per store, kept between runs.
    archive = {"HAULMESH_ARCHIVE_URL": str(ROOT / ".haulmesh" / "demo-archives" / hashlib.sha256(
        redis_url.encode()).hexdigest()[:16])} if redis_url else {}
    mesh = fresh_mesh(STATE, redis_url=redis_url, HAULMESH_WEBHOOK_ALLOWED_CIDRS="127.0.0.0/8",
                      HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS="0.5,1,2,4", **MESH_ENV, **archive)
    issue_truck_certificate(mesh)
    receiver = WebhookReceiver()
    await receiver.start()
    truck = Truck(mesh)
    step("Starting the store and the mesh")
    try:
        started = await mesh.start(timeout_seconds=90)
        for what, where in mesh.describe():
            detail(f"{what:<24} {where}")
        detail(f"all SERVING in {started:.1f}s")
        await Demo(mesh, receiver, truck).flow()
    finally:
        VIEW.close_bar()
        step("Stopping the truck and the mesh")
        # Every verified webhook, for a look after the run (and after a failure: what the TMS did see).
        with (mesh.state_dir / "logs" / "webhooks.jsonl").open("w") as out:
            out.writelines(json.dumps(event) + "\n" for event in receiver.received)
        await truck.stop()
        await mesh.stop(stop_store=True)
        await receiver.stop()


class Demo:
    """The flow, step by step, with what it learns along the way (for the figures and the summary)."""

    def __init__(self, mesh: Mesh, receiver: WebhookReceiver, truck: Truck) -> None:
        self.mesh = mesh
        self.receiver = receiver
        self.truck = truck
        self.mission_name = ""
        self.route_m = 0.0
        self.outage_spooled = 0
        self.link_down = False
        #: Miles as each party counts them: the offer's quote, the mission's plan, the stored frames, the invoice.
        self.miles: dict[str, float | None] = {"quote": None, "planned": None, "driven": None, "invoice": None}
        self._store = connect_async(self._store_url())
        self._telemetry = TelemetryStore(self._store)

    def _store_url(self) -> str:
        return self.mesh.store.url if self.mesh.store else (self.mesh.redis_url or "")

    async def flow(self) -> None:
        bar = None
        try:
            async with carrier_clients(self.mesh, SCOPES) as (self.ops, self.http):
                await self._tender_and_accept()
                await self._truck_takes_the_mission()
                bar = asyncio.create_task(self._progress_bar())
                await self._drive()
                bar.cancel()
                VIEW.close_bar()
                await self._deliver_and_settle()
                await self._summary()
        finally:
            if bar:
                bar.cancel()
            await self._store.aclose()

    # -- tender → accepted → dispatched ------------------------------------------------------------------

    async def _tender_and_accept(self) -> None:
        receiver, http = self.receiver, self.http
        step(f"Fleet operator registers truck {TRUCK} (gRPC, operator certificate)")
        vehicle = await register_truck(self.ops, TRUCK)
        detail(f"{vehicle.name}: {vehicle_pb2.Vehicle.Availability.Name(vehicle.availability)}")

        step(f"TMS subscribes to webhooks ({receiver.url})")
        receiver.secret = secrets.token_bytes(32)
        reply = await http.post("/api/v1/webhookSubscriptions", json={
            "displayName": "McLeod LoadMaster (demo)", "url": receiver.url, "eventTypes": ["*"],
            "secret": "whsec_" + base64.b64encode(receiver.secret).decode(),
            # The TMS's ETA policy: an update when the ETA moved 30 min, or after an hour of (device) time.
            "etaPolicy": {"minChangeMinutes": 30, "cadenceMinutes": 60}})
        expect(reply.status_code == 200, f"subscription refused: {reply.status_code} {reply.text}")
        subscription = reply.json()
        expect("secret" not in subscription, "the subscription echoed its secret")
        detail(f"{subscription['name']}: every public event type; the signing secret stays with the TMS; ETA "
               f"updates when moved ≥ 30 min or hourly")

        tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
        self.payload = payload = {
            **SEED_TENDER, "tenderId": f"TND-{tomorrow:%Y%m%d}-{uuid.uuid4().hex[:6].upper()}",
            "pickupWindow": f"{tomorrow:%Y-%m-%dT%H:%M:%SZ}/{tomorrow + timedelta(hours=10):%Y-%m-%dT%H:%M:%SZ}"}
        step("TMS tenders the seed's load: POST /api/v1/tenders (Idempotency-Key)")
        detail(json.dumps(payload))
        key = str(uuid.uuid4())
        reply = await http.post("/api/v1/tenders", json=payload, headers={"Idempotency-Key": key})
        expect(reply.status_code == 200, f"tender refused: {reply.status_code} {reply.text}")
        tender = reply.json()
        expect(tender.get("state") == "STATE_OFFERED", f"tender not offered: {tender.get('state')} "
                                                       f"{tender.get('rejectionReasons')}")
        offer = tender["offer"]
        detail(f"{tender['name']} OFFERED: {offer['price']['currencyCode']} "
               f"{int(offer['price']['amountMinor']) / 100:,.2f}, risk {offer.get('riskScore', 0)}/100, "
               f"expires {offer['expireTime']}")
        for line in offer.get("priceLines", []):
            detail(f"   {line.get('code', ''):<18} {int(line['amount']['amountMinor']) / 100:>10,.2f}  "
                   f"{line.get('description', '')}")
        for reason in offer.get("riskReasons", []):
            detail(f"   risk +{reason.get('contribution', 0):<3} {reason.get('description', '')}")
        again = await http.post("/api/v1/tenders", json=payload, headers={"Idempotency-Key": key})
        expect(again.json() == tender, "a retried POST with the same Idempotency-Key answered differently")
        detail("retry with the same Idempotency-Key → the same tender, not a second one")

        step("TMS accepts the offer: POST /api/v1/tenders/…:accept")
        reply = await http.post(f"/api/v1/{tender['name']}:accept", json={})
        expect(reply.status_code == 200, f"accept refused: {reply.status_code} {reply.text}")
        accepted = reply.json()
        expect(accepted["state"] == "STATE_ACCEPTED" and accepted.get("mission"), f"not dispatched: {accepted}")
        self.mission_name = accepted["mission"]
        mission = await self._mission()
        stops = mission["stops"]
        pickup, delivery = stops[0]["location"], stops[-1]["location"]
        self.route_m = lane_between((pickup["lat"], pickup["lon"]), (delivery["lat"], delivery["lon"])).length_m
        quoted, planned = float(offer.get("routeMiles", 0)), float(mission.get("routeMiles", 0))
        self.miles.update(quote=quoted, planned=planned)
        detail(f"{self.mission_name} dispatched to {mission['vehicle']}; the assignment is queued for the "
               f"truck's stream")
        detail(f"miles: quoted {quoted:,.1f} (offer), planned {planned:,.1f} (mission); one set of lane facts")
        expect(quoted == planned, f"the quote prices {quoted} miles but the mission plans {planned}")
        # The lane is in its first missions: a remote operator clears departure before the truck may go.
        if await clear_departure(self.ops, self.mission_name, mission):
            detail("human-in-the-loop: this lane is in its first missions, departure check-in recorded")

    async def _mission(self) -> dict:
        reply = await self.http.get(f"/api/v1/{self.mission_name}")
        expect(reply.status_code == 200, f"GET {self.mission_name}: {reply.status_code} {reply.text}")
        return reply.json()

    # -- the truck: assignment → pre-trip → enroute ------------------------------------------------------

    async def _truck_takes_the_mission(self) -> None:
        receiver, truck = self.receiver, self.truck
        step(f"Truck {TRUCK} powers up at the shipper: edge simulator, {SPEEDUP}x time, one signed frame "
             f"every {FRAME_EVERY_SIM_SECONDS} simulated s")
        await truck.start()
        detail(f"python -m edge_client simulate --wait-for-mission --speedup {SPEEDUP} --scenario "
               f"connectivity-loss:{OUTAGE_SIM_MINUTES} --scenario-at {OUTAGE_AT_SIM_MINUTES}   "
               f"{DIM}(log: {truck.log_path.relative_to(ROOT)}){RESET}")
        await until(lambda: receiver.state_reached("STATE_PRE_TRIP"),
                     "the truck gets its assignment over its stream and acknowledges it (→ PRE_TRIP)", truck=truck)
        mission = await self._mission()
        ack = (_when(mission["dispatchAckTime"]) - _when(mission["dispatchTime"])).total_seconds()
        milestone("Assignment delivered over the truck's stream; its CommandAck → PRE_TRIP")
        detail(f"dispatch acknowledged by the truck {ack:.2f}s after dispatch (SLO < 30 s), "
               f"including the truck's power-up")
        await until(lambda: receiver.state_reached("STATE_ENROUTE"),
                     "a passing pre-trip HEALTH frame starts the mission (→ ENROUTE)", truck=truck)
        mission = await self._mission()
        checks = mission.get("preTripChecks", [])
        passed = sum(c.get("outcome") == "OUTCOME_PASS" for c in checks)
        milestone("Pre-trip self-checks pass in a signed HEALTH frame → ENROUTE Houston → Atlanta")
        detail(f"{passed}/{len(checks)} checks passed: {', '.join(c.get('check', '') for c in checks)}")

    # -- the drive ---------------------------------------------------------------------------------------

    async def _drive(self) -> None:
        receiver, truck = self.receiver, self.truck
        drive_seconds = self.route_m / (CRUISE_KPH / 3.6) / SPEEDUP
        outage_seconds = OUTAGE_SIM_MINUTES * 60 / SPEEDUP
        outage_at = time.monotonic() + OUTAGE_AT_SIM_MINUTES * 60 / SPEEDUP

        def stop_event(short: str, stop_index: int):
            return lambda: receiver.find(f"telemetry.v1.{short}",
                                         lambda d: d.get("context", {}).get("stopIndex", 0) == stop_index)

        entered = await until(stop_event("geofence_entered", 0), "geofence entry at the pickup (webhook)",
                               truck=truck)
        milestone("Geofence: the truck is in the pickup's geofence (Houston, TX)")
        detail(f"geofence_entered, frame #{entered['context'].get('frameSequence')} (the pre-trip HEALTH frame)")
        # The exit follows a frame or two later. It is shown when it comes but does not gate the run: the
        # telemetry service rebuilds a vehicle's tracker on each mission event, and a rebuild that lands
        # between entry and exit forgets the truck was inside (reported to the telemetry owner).
        with contextlib.suppress(DemoFailed):
            exited = await until(stop_event("geofence_exited", 0), "geofence exit at the pickup (webhook)", 2.0,
                                  truck=truck)
            milestone("Geofence: the truck left the pickup's geofence")
            detail(f"geofence_exited, frame #{exited['context'].get('frameSequence')}, dwell "
                   f"{_seconds(exited.get('dwell', '0s')):.2f}s of device time")
        if not stop_event("geofence_exited", 0)():
            detail(f"{YELLOW}no geofence_exited for the pickup within 2 s{RESET}")

        first_eta = await until(lambda: receiver.find("telemetry.v1.eta_updated",
                                                       lambda d: d.get("stopIndex", 0) == 1),
                                 "first ETA for the delivery stop (webhook)", truck=truck)
        milestone("ETA: first estimate for Atlanta")
        detail(self._eta_text(first_eta))

        async def eta_on_mission():
            mission = await self._mission()
            return mission if mission.get("estimatedArriveTime") else None

        polled = await until(eta_on_mission, "the ETA readable on the mission over REST (GET mission)", truck=truck)
        detail(f"GET {self.mission_name}: estimatedArriveTime {polled['estimatedArriveTime']} (what a polling TMS "
               f"sees; the roster gets telemetry's fleet state in batches, not a write per frame)")

        lost = await until(lambda: receiver.find("telemetry.v1.connectivity_lost"),
                            "connectivity lost in the dead zone (webhook)",
                            max(0.0, outage_at - time.monotonic()) + STEP_TIMEOUT_SECONDS, truck=truck)
        self.link_down = True
        milestone("Dead zone: connectivity_lost (no frame nor heartbeat within the liveness timeout)")
        detail(f"last stored frame #{lost.get('lastSequence', 0)}; the truck keeps driving and spooling "
               f"(link down for {OUTAGE_SIM_MINUTES} simulated minutes, {outage_seconds:.0f} s here)")

        raised = await until(lambda: receiver.find("mission.v1.exception_raised", lambda d: d.get(
            "exception", {}).get("kind") == "KIND_CONNECTIVITY_LOSS"), "CONNECTIVITY_LOSS mission exception "
            "(webhook)", truck=truck)
        exception = raised["exception"]
        await until(lambda: receiver.state_reached("STATE_EXCEPTION"), "mission → EXCEPTION (webhook)",
                     truck=truck)
        milestone(f"Mission exception {exception['kind'].removeprefix('KIND_')}: "
                  f"{exception.get('contingency', '').removeprefix('CONTINGENCY_')} → mission EXCEPTION")

        restored = await until(lambda: receiver.find("telemetry.v1.connectivity_restored"),
                                "connectivity restored and the spool replayed (webhook)",
                                outage_seconds + STEP_TIMEOUT_SECONDS, truck=truck)
        self.link_down = False
        high, last = int(restored.get("highWaterSequence", 0)), int(restored.get("vehicleLastSequence", 0))
        self.outage_spooled = last - high
        milestone("Link back: connectivity_restored; the truck replays its spool from the server's high-water")
        detail(f"outage {_seconds(restored.get('outage', '0s')):.1f}s; {self.outage_spooled} frames spooled "
               f"meanwhile (#{high + 1}..#{last}) sent in batches")
        await until(lambda: receiver.find("mission.v1.exception_resolved", lambda d: d.get(
            "exception", {}).get("kind") == "KIND_CONNECTIVITY_LOSS"), "the CONNECTIVITY_LOSS exception resolved "
            "(webhook)", truck=truck)
        await until(lambda: receiver.state_reached("STATE_ENROUTE", "STATE_EXCEPTION"),
                     "mission back to ENROUTE after the exception (webhook)", truck=truck)
        milestone("Exception resolved by the reconnection → ENROUTE")

        remaining = drive_seconds - (time.monotonic() - outage_at) + STEP_TIMEOUT_SECONDS
        arrived = await until(stop_event("geofence_entered", 1), "geofence entry at the delivery stop (webhook)",
                               max(remaining, STEP_TIMEOUT_SECONDS), truck=truck)
        milestone("Geofence: the truck entered the delivery stop's geofence (Atlanta, GA)")
        detail(f"frame #{arrived['context'].get('frameSequence')} at "
               f"({arrived['context']['location']['lat']:.4f}, {arrived['context']['location']['lon']:.4f})")
        await until(lambda: receiver.state_reached("STATE_ARRIVED"), "mission → ARRIVED (webhook)", truck=truck)
        mission = await self._mission()
        expect(mission["state"] == "STATE_ARRIVED", f"mission over REST: {mission['state']}, expected ARRIVED")
        milestone("ARRIVED (mission over REST: STATE_ARRIVED)")
        etas = receiver.all("telemetry.v1.eta_updated")
        detail(f"{len(etas)} ETA updates on the way; the last: {self._eta_text(etas[-1])}")

        report = await self.truck.finish(30)
        milestone("Truck: every frame acknowledged, spool empty")
        kinds = ", ".join(f"{count} {kind.removeprefix('KIND_')}" for kind, count in report["by_kind"].items())
        detail(f"{report['frames']} frames signed and spooled ({kinds}), last #{report['last_sequence']}, "
               f"acked through #{report['acked_through']}, "
               f"{report['sessions']} stream sessions, spool depth {report['spool_depth']}")

    @staticmethod
    def _eta_text(eta: dict) -> str:
        hours = max(0.0, (_when(eta["estimatedArriveTime"]) - datetime.now(UTC)).total_seconds() / 3600)
        return (f"{eta.get('remainingMiles', 0):,.0f} mi to go, arrival in {int(hours)} h {int(hours % 1 * 60):02d} "
                f"min of driving, confidence {eta.get('confidence', 0):.2f}"
                + (f", {YELLOW}late{RESET}" if eta.get("late") else ""))

    async def _progress_bar(self) -> None:
        """Redraws the drive's progress: the truck's position and spool, the server's high-water, the ETA."""
        while True:
            progress = self.truck.progress()
            spool = await asyncio.to_thread(self.truck.spool_stats)
            stored = await self._telemetry.high_water(TRUCK)
            distance = progress.get("distance_m", 0.0)
            sim = progress.get("sim_seconds", 0)
            etas = self.receiver.all("telemetry.v1.eta_updated")
            link = "link DOWN" if self.link_down else "link up"
            text = (f"{distance / METERS_PER_MILE:4.0f}/{self.route_m / METERS_PER_MILE:.0f} mi  "
                    f"sim {sim // 3600:2d}h{sim % 3600 // 60:02d}  "
                    f"frames {spool.last_sequence if spool else 0} spooled {spool.depth if spool else 0} "
                    f"stored {stored}  {link}"
                    + (f"  ETA {etas[-1].get('remainingMiles', 0):.0f} mi conf {etas[-1].get('confidence', 0):.2f}"
                       if etas else ""))
            VIEW.bar(distance / self.route_m if self.route_m else 0.0, text)
            await asyncio.sleep(0.2 if TTY else 0.5)

    # -- delivery and settlement -------------------------------------------------------------------------

    async def _mission_frames(self) -> list:
        """Every frame the server stored for the truck, in sequence order (ListTelemetryFrames, as operator)."""
        frames, token = [], ""
        async with grpc.aio.secure_channel(self.mesh.address("telemetry"),
                                           self.mesh.operator_credentials()) as channel:
            stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
            while True:
                page = await stub.ListTelemetryFrames(telemetry_service_pb2.ListTelemetryFramesRequest(
                    parent=f"vehicles/{TRUCK}", page_size=1000, page_token=token), timeout=20)
                frames.extend(page.telemetry_frames)
                token = page.next_page_token
                if not token:
                    return frames

    async def _deliver_and_settle(self) -> None:
        http, mission_name = self.http, self.mission_name
        mission_id = mission_name.removeprefix("missions/")
        self.stored_frames = await self._mission_frames()
        log = [f for f in self.stored_frames if f.payload.mission_id == mission_id]
        expect(bool(log), "no stored frame carries the mission id")
        self.miles["driven"] = round(driven_miles(log), 1)

        step("Truck builds, signs and submits its proof of delivery from its own spool (haulmesh-edge pod)")
        pod = await submit_pod(self.mesh, self.truck, mission_name)
        detail(f"python -m edge_client pod --vehicle {TRUCK} --mission {mission_name} --submit")
        detail(f"manifest signed with the truck's key (ECDSA P-256); telemetry log #{pod['first_sequence']}.."
               f"#{pod['last_sequence']} sha256 {pod['telemetry_log_sha256'][:16]}… (length-prefixed payloads)")
        mission = await self._mission()
        verification = mission.get("proofOfDelivery", {}).get("telemetryVerification", {})
        self.pod_hash_verified = verification.get("result") == "RESULT_VERIFIED"
        expect(self.pod_hash_verified, f"the server did not verify the POD's telemetry hash: {verification}")
        milestone("Proof of delivery: the server recomputed the telemetry log's hash from its stored frames: VERIFIED")
        detail(f"{verification.get('framesStored', 0)} stored frames hashed, {verification.get('framesMissing', 0)} "
               f"missing; recomputed sha256 {verification.get('recomputedSha256', '')[:16]}…")

        async def completed():
            current = await self._mission()
            return current if current["state"] == "STATE_COMPLETED" else None

        await until(completed, "the mission completes (billing records usage)")
        detail("COMPLETED: billing metered the usage")

        step("TMS reads the invoice: GET /api/v1/invoices")
        reply = await http.get("/api/v1/invoices")
        expect(reply.status_code == 200, f"invoices: {reply.status_code} {reply.text}")
        invoices = [i for i in reply.json().get("invoices", []) if i.get("mission") == mission_name]
        expect(len(invoices) == 1, f"expected one invoice for {mission_name}, got {len(invoices)}")
        invoice = invoices[0]
        total = invoice["total"]
        self.invoice_total = f"{total['currencyCode']} {int(total['amountMinor']) / 100:,.2f}"
        usage = invoice.get("usage", {})
        self.miles["invoice"] = float(usage.get("miles", 0))
        detail(f"{invoice['name']}: {self.invoice_total}")
        for line in invoice.get("lines", []):
            detail(f"   {line.get('code', ''):<18} {int(line['amount']['amountMinor']) / 100:>10,.2f}  "
                   f"{line.get('description', '')}")
        provenance = usage.get("provenance", {})
        expect(bool(provenance), "the invoice's usage carries no provenance")
        detail(f"usage from the evidence: {self.miles['invoice']:,.1f} mi, frames #{provenance.get('firstSequence')}.."
               f"#{provenance.get('lastSequence')} ({provenance.get('frameCount')} frames, "
               f"{len(provenance.get('gaps', []))} gaps, {provenance.get('framesMissing', 0)} missing, source "
               f"{provenance.get('source', '').removeprefix('SOURCE_').lower()})")
        for dwell in usage.get("stopDwells", []):
            detail(f"   stop {dwell.get('stopIndex', 0) + 1} dwell {dwell.get('dwellMinutes', 0)} min, "
                   f"{dwell.get('basis', '').removeprefix('BASIS_').lower().replace('_', ' ')} "
                   f"(geofence events; detention beyond the rate card's free time)")
        for difference in invoice.get("estimateDifferences", []):
            estimated, measured = (int(difference.get(k, {}).get("amountMinor", 0)) / 100
                                   for k in ("estimatedAmount", "measuredAmount"))
            quantity = (f" ({difference['estimatedQuantity']:,.1f} → {difference['measuredQuantity']:,.1f})"
                        if difference.get("estimatedQuantity") else "")
            detail(f"   estimate vs measured {difference.get('code', ''):<10} {estimated:>10,.2f} → {measured:,.2f}"
                   f"{quantity}")
        expect(abs(self.miles["invoice"] - self.miles["driven"]) <= 0.15,
               f"invoiced {self.miles['invoice']} mi, but the stored frames' track is {self.miles['driven']} mi")

        step("TMS posts its figures back: POST /api/v1/invoices/…:reconcile")
        reply = await http.post(f"/api/v1/{invoice['name']}:reconcile",
                                json={"tmsTotal": total, "tmsReference": self.payload["tenderId"]})
        expect(reply.status_code == 200, f"reconcile: {reply.status_code} {reply.text}")
        reconciled = reply.json()
        expect(reconciled.get("state") == "STATE_MATCHED", f"not matched: {reconciled.get('state')}")
        detail("MATCHED to the minor unit")

    summary: dict[str, object] | None = None

    async def _summary(self) -> None:
        receiver, report = self.receiver, self.truck.report
        step("Waiting for the TMS's webhooks")
        wanted = {"haulmesh.tender.v1.offered", "haulmesh.tender.v1.accepted", "haulmesh.mission.v1.dispatched",
                  "haulmesh.mission.v1.state_changed", "haulmesh.mission.v1.check_in_recorded",
                  "haulmesh.mission.v1.exception_raised", "haulmesh.mission.v1.exception_resolved",
                  "haulmesh.telemetry.v1.geofence_entered",
                  "haulmesh.telemetry.v1.eta_updated", "haulmesh.telemetry.v1.connectivity_lost",
                  "haulmesh.telemetry.v1.connectivity_restored", "haulmesh.mission.v1.proof_of_delivery_submitted",
                  "haulmesh.billing.v1.invoice_issued", "haulmesh.billing.v1.invoice_reconciled"}
        await until(lambda: wanted <= set(receiver.types()),
                     f"webhooks {sorted(wanted - set(receiver.types()))}")
        expect(receiver.rejected == 0, f"{receiver.rejected} webhook(s) failed signature verification")
        detail(f"{len(receiver.received)} webhooks received, every signature verified")
        for kind, count in sorted(Counter(receiver.types()).items()):
            detail(f"   {count:>4}  {kind}")

        step("Telemetry: what the truck sent against what the server stored")
        sequences = [f.signed_frame.sequence for f in self.stored_frames]
        counters = await self._telemetry.counters(TRUCK)
        last = report["last_sequence"]
        lost = sorted(set(range(1, last + 1)) - set(sequences))
        doubled = len(sequences) - len(set(sequences))
        expect(not lost, f"{len(lost)} frames lost: {lost[:10]}")
        expect(doubled == 0 and sequences == sorted(sequences), f"{doubled} frames stored twice or out of order")
        expect(counters.get("high_water") == last, f"server high-water {counters.get('high_water')} ≠ the "
                                                   f"truck's last sequence {last}")
        expect(report["spool_depth"] == 0 and report["dropped"] == 0 and report["rejected"] == 0,
               f"truck spool: {report}")
        detail(f"truck: {report['frames']} frames signed, last #{last}, {report['sessions']} sessions, spool "
               f"empty, 0 dropped, 0 rejected")
        detail(f"server: {len(sequences)} frames stored #1..#{max(sequences)}, high-water #{counters['high_water']} "
               f"= the truck's last: 0 lost, 0 stored twice ({counters.get('duplicates', 0)} resent after the cut "
               f"were recognised and acked)")
        detail(f"the dead zone: {self.outage_spooled} frames spooled offline and replayed")
        miles = self.miles
        detail(f"miles: quoted {miles['quote']:,.1f}, planned {miles['planned']:,.1f}, driven {miles['driven']:,.1f} "
               f"(the stored frames' track), invoiced {miles['invoice']:,.1f}")
        self.summary = {
            "quote_miles": miles["quote"], "planned_miles": miles["planned"], "driven_miles": miles["driven"],
            "invoice_miles": miles["invoice"],
            "pod_hash_verified": self.pod_hash_verified, "frames_archived": 0, "evidence_pack": None,
            "evidence_verified": False,
            "frames_sent": report["frames"], "frames_stored": len(set(sequences)), "frames_lost": len(lost),
            "frames_duplicated": doubled, "eta_webhooks": receiver.types().count("haulmesh.telemetry.v1.eta_updated"),
        }

        step("Verifying the audit log's hash chain")
        client = connect_sync(self._store_url())
        try:
            audit = verify_audit_log(client)
        finally:
            client.close()
        expect(audit.intact, f"audit chain broken: {audit.problems}")
        detail(f"{audit.entries} audited calls in {audit.chains} per-process chains, all intact")
        detail(f"invoice {self.invoice_total}, MATCHED")

        await self._archive(len(set(sequences)))
        await self._kpi_report()
        await self._evidence_pack()
        path = self.mesh.state_dir / "summary.json"
        path.write_text(json.dumps(self.summary, indent=2) + "\n")
        detail(f"summary: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


    # -- archive, KPI report, evidence pack ----------------------------------------------------------------

    async def _archive(self, frames_stored: int) -> None:
        step("Archive: the settled mission's frames to the warm/cold tier (Parquet, create-only, with retention)")
        async with grpc.aio.secure_channel(self.mesh.address("telemetry"),
                                           self.mesh.operator_credentials()) as channel:
            reply = await telemetry_service_pb2_grpc.TelemetryServiceStub(channel).RunArchive(
                telemetry_service_pb2.RunArchiveRequest(vehicle=f"vehicles/{TRUCK}"), timeout=60)
        expect(reply.frames_in_archive == frames_stored, f"{reply.frames_in_archive} frames archived, "
                                                         f"{frames_stored} stored")
        archive = Path(self.mesh.extra_env.get("HAULMESH_ARCHIVE_URL") or self.mesh.state_dir / "archive")
        parts = await asyncio.to_thread(lambda: sorted(archive.rglob(f"vehicle={TRUCK}/**/part-*.parquet")))
        where = parts[0].parent if parts else self.mesh.state_dir
        milestone(f"Archived: all {reply.frames_in_archive} frames, signed envelopes and the certificate that "
                  f"verified them, in {len(parts)} Parquet part(s)")
        detail(f"{where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}  (HAULMESH_ARCHIVE_URL: a "
               f"directory here, s3://… with Object Lock at scale; the hot stream is trimmed only after this)")
        assert self.summary is not None
        self.summary["frames_archived"] = reply.frames_in_archive

    async def _kpi_report(self) -> None:
        step("Pilot KPIs for the carrier: GET /api/v1/kpiReport (scope report:read), and `haulmesh report`")
        since = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")

        async def reported():
            reply = await self.http.get("/api/v1/kpiReport", params={"startTime": since})
            expect(reply.status_code == 200, f"kpiReport: {reply.status_code} {reply.text}")
            total = reply.json().get("total", {})
            return total if int(total.get("invoicedMissions", 0)) >= 1 else None

        total = await until(reported, "the KPI report counts the invoiced mission")
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.runtime.cli", "--cert-dir", str(self.mesh.cert_dir),
                             "report", "--carrier", CARRIER, "--since", "1h", "--baseline", "USD:2.10"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "HAULMESH_BILLING_ADDR": self.mesh.address("billing")})
        expect(result.returncode == 0, f"haulmesh report: exit {result.returncode}: {result.stderr[-500:]}")
        for line in result.stdout.rstrip().splitlines():
            detail(f"   {line}")
        assert self.summary is not None
        self.summary["kpi_missions"] = int(total.get("missions", 0))
        self.summary["kpi_success_rate"] = total.get("successRate")

    async def _evidence_pack(self) -> None:
        step(f"Evidence pack: `haulmesh evidence export {self.mission_name}`, then `haulmesh evidence verify` "
             f"offline")
        pack = self.mesh.state_dir / f"evidence-{self.mission_name.removeprefix('missions/')}.zip"
        env = {**os.environ, "HAULMESH_BILLING_ADDR": self.mesh.address("billing")}
        cli_args = [sys.executable, "-m", "services.runtime.cli", "--cert-dir", str(self.mesh.cert_dir),
                    "evidence"]

        def run_cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*cli_args, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                                  env=env)

        exported = await asyncio.to_thread(run_cli, "export", self.mission_name, "--carrier", CARRIER, "-o",
                                           str(pack))
        expect(exported.returncode == 0 and pack.exists(),
               f"evidence export: exit {exported.returncode}: {exported.stderr[-500:]}")
        detail(f"{pack.relative_to(ROOT) if pack.is_relative_to(ROOT) else pack}: {pack.stat().st_size:,} bytes "
               f"(mission, signed frames, certificates, POD, invoice with provenance, audit entries; sealed)")
        ca = str(self.mesh.cert_dir / "ca.pem")
        verified = await asyncio.to_thread(run_cli, "verify", str(pack), "--ca", ca)
        for line in verified.stdout.rstrip().splitlines():
            detail(f"   {line}")
        expect(verified.returncode == 0, f"evidence verify: exit {verified.returncode}: "
                                         f"{(verified.stdout + verified.stderr)[-800:]}")
        milestone("Evidence pack VERIFIED offline: every signature, the POD hash, the invoiced miles, the audit links")
        # One changed byte anywhere must break it: flip one in the middle of a copy.
        tampered = pack.with_suffix(".tampered.zip")
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0x01
        tampered.write_bytes(bytes(data))
        refused = await asyncio.to_thread(run_cli, "verify", str(tampered), "--ca", ca)
        expect(refused.returncode != 0, "a pack with one byte changed still verified")
        failure = next((line for line in refused.stdout.splitlines() if line.startswith("FAIL")), "")
        detail(f"a copy with one byte flipped at offset {len(data) // 2:,}: NOT VERIFIED ({failure.strip()[:90]})")
        tampered.unlink()
        assert self.summary is not None
        self.summary["evidence_pack"] = str(pack)
        self.summary["evidence_verified"] = True


def main() -> int:
    try:
        asyncio.run(run())
    except DemoFailed as exc:
        VIEW.close_bar()
        print(f"\n{RED}demo failed: {exc}{RESET}\nlogs: {STATE / 'logs'}", file=sys.stderr)
        return 1
    print(f"\n{GREEN}{BOLD}demo complete{RESET}: tender → offer → dispatch → assignment over the stream → pre-trip "
          f"→ enroute → dead zone survived → arrived → delivered → invoiced → reconciled in {elapsed():.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
