"""``make demo``: the whole business flow, from a TMS tender to a reconciled invoice, on a fresh local mesh.

It starts the store and every service on free ports (state in .haulmesh/demo, recreated each run), and a
local webhook receiver standing in for the TMS, then drives the seed's flow step by step:

    tender posted over REST with a dev token (the seed's payload) → offer → accepted → mission dispatched
    → pre-trip → enroute → arrived → proof of delivery signed by the truck → invoice → reconciled,

checking each webhook's Standard Webhooks signature as it arrives and the audit chain at the end. Exit
status 0 only if every step did what it should.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import redis
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import timestamp_pb2
from localmesh import fresh_mesh, register_truck
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import health_check_pb2
from services.gateway import tokens
from services.runtime import Mesh, carrier_metadata, certificate_key_id, verify_audit_log
from services.runtime._store import free_port

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".haulmesh" / "demo"
CARRIER = "russell-transport"
TRUCK = "AU-TRK-1001"
SCOPES = ("tender:create tender:read tender:update tender:cancel tender:respond mission:read mission:checkin "
          "billing:read billing:reconcile telemetry:read webhook:read webhook:write")

# The seed's tender, as the seed writes it; only the pickup window moves to tomorrow (the seed's date is
# in the past, and the tender service rightly refuses windows in the past).
SEED_TENDER = {
    "tenderId": "TND-20260118-001",
    "origin": {"lat": 29.749907, "lon": -95.358421, "address": "Houston, TX"},
    "destination": {"lat": 33.7490, "lon": -84.3880, "address": "Atlanta, GA"},
    "pickupWindow": "2026-02-01T08:00:00Z/2026-02-01T18:00:00Z",
    "equipment": "53FT_DRYVAN",
    "weightLb": 42000,
    "specialInstructions": "Hazmat=false",
}

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")
_began = time.monotonic()


def step(text: str) -> None:
    print(f"{DIM}{time.monotonic() - _began:6.1f}s{RESET}  {BOLD}{text}{RESET}", flush=True)


def detail(text: str) -> None:
    print(f"         {text}", flush=True)


class DemoFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailed(message)


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
        event = json.loads(body)
        self.received.append(event)
        detail(f"{GREEN}webhook ✓{RESET} {event.get('type')}  {DIM}{event.get('subject')}{RESET}")
        return Response(status_code=204)

    def types(self) -> list[str]:
        return [e.get("type", "") for e in self.received]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def _until(predicate, what: str, timeout_seconds: float = 20.0):
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _truck_credentials(certs: Path) -> tuple[grpc.ChannelCredentials, ec.EllipticCurvePrivateKey, bytes]:
    key_pem = (certs / f"vehicle-{TRUCK}-key.pem").read_bytes()
    cert_pem = (certs / f"vehicle-{TRUCK}.pem").read_bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), key_pem, cert_pem)
    return credentials, key, cert_pem


async def run() -> None:
    step("Issuing dev certificates (CA, every service, the operator CLI, truck AU-TRK-1001)")
    # The receiver is on loopback: allow it explicitly (the gateway refuses private destinations otherwise).
    mesh = fresh_mesh(STATE, HAULMESH_WEBHOOK_ALLOWED_CIDRS="127.0.0.0/8",
                      HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS="0.5,1,2,4")
    certs = mesh.cert_dir
    receiver = WebhookReceiver()
    await receiver.start()
    step("Starting the store and the mesh")
    try:
        started = await mesh.start(timeout_seconds=90)
        for what, where in mesh.describe():
            detail(f"{what:<24} {where}")
        detail(f"all SERVING in {started:.1f}s")
        await _flow(mesh, receiver, certs)
    finally:
        step("Stopping the mesh")
        await mesh.stop(stop_store=True)
        await receiver.stop()


async def _flow(mesh: Mesh, receiver: WebhookReceiver, certs: Path) -> None:
    operator = grpc.aio.secure_channel(mesh.address("mission"), mesh.operator_credentials())
    ops = mission_service_pb2_grpc.MissionServiceStub(operator)
    tenant = carrier_metadata(CARRIER)
    step(f"Fleet operator registers truck {TRUCK} (gRPC, operator certificate)")
    vehicle = await register_truck(ops, TRUCK)
    detail(f"{vehicle.name}: {vehicle_pb2.Vehicle.Availability.Name(vehicle.availability)}")

    token = tokens.mint(carrier=CARRIER, scopes=SCOPES, state_dir=mesh.state_dir)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=20,
                             headers={"Authorization": f"Bearer {token}"})
    try:
        step(f"TMS subscribes to webhooks ({receiver.url})")
        receiver.secret = secrets.token_bytes(32)
        reply = await http.post("/api/v1/webhookSubscriptions", json={
            "displayName": "McLeod LoadMaster (demo)", "url": receiver.url, "eventTypes": ["*"],
            "secret": "whsec_" + base64.b64encode(receiver.secret).decode()})
        expect(reply.status_code == 200, f"subscription refused: {reply.status_code} {reply.text}")
        subscription = reply.json()
        expect("secret" not in subscription, "the subscription echoed its secret")
        detail(f"{subscription['name']}: every public event type; the signing secret stays with the TMS")

        tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
        payload = {**SEED_TENDER, "tenderId": f"TND-{tomorrow:%Y%m%d}-{uuid.uuid4().hex[:6].upper()}",
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
        mission_name = accepted["mission"]
        mission = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name), metadata=tenant,
                                       timeout=10)
        detail(f"{mission_name} dispatched to {mission.vehicle}, {mission.route_miles:,.0f} route miles")

        step("Truck acknowledges the dispatch; pre-trip self-checks pass")
        mission = await ops.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
            name=mission_name, ack_time=_ts(datetime.now(UTC))), metadata=tenant, timeout=10)
        ack_seconds = (mission.dispatch_ack_time.ToDatetime() - mission.dispatch_time.ToDatetime()).total_seconds()
        detail(f"PRE_TRIP; dispatch acknowledged in {ack_seconds:.2f}s (SLO < 30 s)")
        if mission.check_in_requirement.required:
            await ops.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
                name=mission_name, check_in=mission_pb2.CheckIn(
                    point=mission_pb2.CheckIn.POINT_DEPARTURE, outcome=mission_pb2.CheckIn.OUTCOME_PROCEED,
                    notes="remote operator cleared departure")), metadata=tenant, timeout=10)
            detail("human-in-the-loop: this lane is in its first missions, departure check-in recorded")
        passed = health_check_pb2.HealthCheckResult.OUTCOME_PASS
        checks = [health_check_pb2.HealthCheckResult(check=name, outcome=passed)
                  for name in ("lidar", "camera", "radar", "brakes", "tires")]
        mission = await ops.StartMission(mission_service_pb2.StartMissionRequest(
            name=mission_name, pre_trip_checks=checks), metadata=tenant, timeout=10)
        expect(mission.state == mission_pb2.Mission.STATE_ENROUTE, f"not enroute: {mission.state}")
        detail("ENROUTE Houston → Atlanta")

        step("Truck arrives in the destination geofence")
        mission = await ops.ArriveMission(mission_service_pb2.ArriveMissionRequest(
            name=mission_name, arrive_time=_ts(datetime.now(UTC))), metadata=tenant, timeout=10)
        detail("ARRIVED")

        step("Truck submits proof of delivery, signed with its certificate's key (ECDSA P-256)")
        credentials, key, cert_pem = _truck_credentials(certs)
        manifest = mission_pb2.DeliveryManifest(
            mission_id=mission_name.removeprefix("missions/"), vehicle_id=TRUCK,
            tms_load_id=mission.load.tms_load_id, deliver_time=_ts(datetime.now(UTC)),
            location=mission.stops[-1].location, seal_number="SEAL-88231", received_by="Dock 7, Atlanta DC",
            telemetry_log_sha256=hashlib.sha256(b"telemetry arrives with issue 4").hexdigest(),
            telemetry_first_sequence=1, telemetry_last_sequence=1).SerializeToString()
        proof = mission_pb2.ProofOfDelivery(manifest=manifest, key_id=certificate_key_id(cert_pem),
                                            manifest_signature=key.sign(manifest, ec.ECDSA(hashes.SHA256())))
        async with grpc.aio.secure_channel(mesh.address("mission"), credentials) as truck_channel:
            mission = await mission_service_pb2_grpc.MissionServiceStub(truck_channel).SubmitProofOfDelivery(
                mission_service_pb2.SubmitProofOfDeliveryRequest(name=mission_name, proof_of_delivery=proof),
                timeout=10)
        detail(f"{mission_pb2.Mission.State.Name(mission.state)}: manifest signature verified")

        async def completed():
            current = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name),
                                           metadata=tenant, timeout=10)
            return current if current.state == mission_pb2.Mission.STATE_COMPLETED else None

        mission = await _until(completed, "the mission to complete (billing records usage)")
        detail("COMPLETED: billing metered the usage")

        step("TMS reads the invoice: GET /api/v1/invoices")
        reply = await http.get("/api/v1/invoices")
        expect(reply.status_code == 200, f"invoices: {reply.status_code} {reply.text}")
        invoices = [i for i in reply.json().get("invoices", []) if i.get("mission") == mission_name]
        expect(len(invoices) == 1, f"expected one invoice for {mission_name}, got {len(invoices)}")
        invoice = invoices[0]
        total = invoice["total"]
        detail(f"{invoice['name']}: {total['currencyCode']} {int(total['amountMinor']) / 100:,.2f}")
        for line in invoice.get("lines", []):
            detail(f"   {line.get('code', ''):<18} {int(line['amount']['amountMinor']) / 100:>10,.2f}  "
                   f"{line.get('description', '')}")

        step("TMS posts its figures back: POST /api/v1/invoices/…:reconcile")
        reply = await http.post(f"/api/v1/{invoice['name']}:reconcile",
                                json={"tmsTotal": total, "tmsReference": payload["tenderId"]})
        expect(reply.status_code == 200, f"reconcile: {reply.status_code} {reply.text}")
        reconciled = reply.json()
        expect(reconciled.get("state") == "STATE_MATCHED", f"not matched: {reconciled.get('state')}")
        detail("MATCHED to the minor unit")

        step("Waiting for the TMS's webhooks")
        wanted = {"haulmesh.tender.v1.offered", "haulmesh.tender.v1.accepted", "haulmesh.mission.v1.dispatched",
                  "haulmesh.mission.v1.proof_of_delivery_submitted", "haulmesh.billing.v1.invoice_issued",
                  "haulmesh.billing.v1.invoice_reconciled"}
        await _until(lambda: wanted <= set(receiver.types()), f"webhooks {sorted(wanted - set(receiver.types()))}")
        expect(receiver.rejected == 0, f"{receiver.rejected} webhook(s) failed signature verification")
        detail(f"{len(receiver.received)} webhooks received, every signature verified")

        step("Verifying the audit log's hash chain")
        client = redis.Redis.from_url(mesh.store.url) if mesh.store else redis.Redis.from_url(mesh.redis_url or "")
        try:
            report = verify_audit_log(client)
        finally:
            client.close()
        expect(report.intact, f"audit chain broken: {report.problems}")
        detail(f"{report.entries} audited calls in {report.chains} per-process chains, all intact")
    finally:
        await http.aclose()
        await operator.close()


def main() -> int:
    try:
        asyncio.run(run())
    except DemoFailed as exc:
        print(f"\n{RED}demo failed: {exc}{RESET}\nlogs: {STATE / 'logs'}", file=sys.stderr)
        return 1
    print(f"\n{GREEN}{BOLD}demo complete{RESET}: tender → offer → dispatch → delivery → invoice → reconciled "
          f"in {time.monotonic() - _began:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
