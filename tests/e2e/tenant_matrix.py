"""AT-17's generated gRPC half: every method that takes an object id, for every tenant and operator role, against
another tenant's objects (docs/security.md, "Operator roles" and "AT-17").

The methods come from the contracts' descriptors, not from a list: a method takes an object id when a field of its
request (or of the resource it carries) references a resource (``google.api.resource_reference``), or when it is an
Update (the resource's ``name``). Each is called over real mTLS by every caller below, naming the owner's objects:

| Caller | Asserts | Expected, method allowed to it | not allowed |
|---|---|---|---|
| the gateway (the TMS's door) | the intruder carrier | NOT_FOUND | PERMISSION_DENIED METHOD_NOT_ALLOWED |
| a fleet operator / billing admin of the intruder | the intruder | NOT_FOUND | METHOD_NOT_ALLOWED |
| the same operator | the owner | PERMISSION_DENIED TENANT_NOT_ALLOWED | METHOD_NOT_ALLOWED |
| a platform admin | the intruder | NOT_FOUND | METHOD_NOT_ALLOWED |
| an operator without a role | the intruder, the owner | — | METHOD_NOT_ALLOWED |

A call whose object belongs to no tenant (a vehicle) or has no owner's object in the session mesh (webhook
subscriptions, which need a public destination: tests/gateway/webhooks checks their NOT_FOUND) is made only where a
refusal is expected; a platform admin's Create is not made (it may create for any carrier). Then: every owner's
object reads back byte for byte as before, and no audit entry touches one since the matrix began (nothing was
written). Read-only fields: each Update naming an OUTPUT_ONLY field in its mask is INVALID_ARGUMENT; an OUTPUT_ONLY
``carrier`` in a Create is ignored (google.api.field_behavior: "the server must ignore it"), never landing.
"""

from __future__ import annotations

import importlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from haulmesh.billing.v1 import billing_service_pb2, rate_card_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.type.v1 import health_check_pb2, money_pb2
from services.billing.evidence.server import POLICY as EVIDENCE_POLICY
from services.billing.reports.server import POLICY as REPORT_POLICY
from services.billing.server import POLICY as BILLING_POLICY
from services.gateway.webhooks.server import POLICY as WEBHOOK_POLICY
from services.mission.server import POLICY as MISSION_POLICY
from services.runtime import (
    Identity,
    Mesh,
    Policy,
    audit_entries_touching,
    connect_async,
    error_info,
    pki,
    poll_until,
)
from services.telemetry.server import POLICY as TELEMETRY_POLICY
from services.tender.server import POLICY as TENDER_POLICY

from ..conftest import Pki

ROOT = Path(__file__).resolve().parents[2]

#: Which mesh process serves each service, and its policy (the expected "allowed" comes from the real POLICY).
SERVERS: dict[str, tuple[str, Policy]] = {
    "haulmesh.tender.v1.TenderService": ("tender", TENDER_POLICY),
    "haulmesh.tender.v1.FacilityService": ("tender", TENDER_POLICY),
    "haulmesh.mission.v1.MissionService": ("mission", MISSION_POLICY),
    "haulmesh.telemetry.v1.TelemetryService": ("telemetry", TELEMETRY_POLICY),
    "haulmesh.billing.v1.BillingService": ("billing", BILLING_POLICY),
    "haulmesh.billing.v1.EvidenceService": ("billing", EVIDENCE_POLICY),
    "haulmesh.billing.v1.ReportService": ("billing", REPORT_POLICY),
    "haulmesh.gateway.v1.WebhookService": ("gateway", WEBHOOK_POLICY),
}

#: The owner's object of each resource type (keys of the owner's resources); None: no owner's object here.
OBJECTS: dict[str, str | None] = {
    "haulmesh.io/Tender": "tenders", "haulmesh.io/Mission": "missions", "haulmesh.io/Quote": "quotes",
    "haulmesh.io/Invoice": "invoices", "haulmesh.io/RateCard": "rateCards", "haulmesh.io/Vehicle": "vehicles",
    "haulmesh.io/Facility": "facilities",
    "haulmesh.io/TelemetryFrame": "missions",  # a child type: its parent, the mission (by vehicle: platform only)
    "haulmesh.io/WebhookSubscription": None, "haulmesh.io/WebhookDelivery": None,
    # An operator's command to a vehicle: none in the session mesh (tests/telemetry/stream/test_operator_commands.py
    # checks another carrier's operator gets TENANT_NOT_ALLOWED for one).
    "haulmesh.io/VehicleCommand": None,
}
#: Plain ``*_id`` fields that name an object (the others name no resource: ``request_id`` an idempotency key,
#: ``exception_id`` an entry of the mission already named, ``key_id``/``boot_id``/``command_id`` a truck's).
PLAIN_IDS = {"vehicle_id": "haulmesh.io/Vehicle"}
#: Resources that belong to no tenant: the roster is the fleet's (vehicle.proto).
UNTENANTED = {"haulmesh.io/Vehicle"}
_PLACEHOLDER = {"haulmesh.io/WebhookSubscription": "webhookSubscriptions/{id}",
                "haulmesh.io/WebhookDelivery": "webhookSubscriptions/{id}/deliveries/{id}",
                "haulmesh.io/VehicleCommand": "vehicles/MATRIX-TRK/commands/{id}"}


def _behaviors(fd: FieldDescriptor) -> set[str]:
    behaviors = fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return {field_behavior_pb2.FieldBehavior.Name(b) for b in behaviors}


def _reference(fd: FieldDescriptor) -> str:
    ref = fd.GetOptions().Extensions[resource_pb2.resource_reference]
    return ref.type or ref.child_type


def _resource_type(descriptor: Descriptor | None) -> str:
    return descriptor.GetOptions().Extensions[resource_pb2.resource].type if descriptor is not None else ""


@dataclass(frozen=True)
class IdField:
    """A field of a request naming an object: its path (``("rate_card", "name")``) and resource type."""

    path: tuple[str, ...]
    resource_type: str
    bare: bool = False  # the id alone (``vehicle_id``), not the resource name


@dataclass(frozen=True)
class Method:
    service: str
    descriptor: MethodDescriptor
    ids: tuple[IdField, ...]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.descriptor.name}"

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def tenanted(self) -> bool:
        """Whether it names an object of a tenant (not only vehicles)."""
        return any(i.resource_type not in UNTENANTED for i in self.ids)

    @property
    def owned_here(self) -> bool:
        """Whether the session mesh holds an owner's object of every type it names."""
        return all(OBJECTS.get(i.resource_type) for i in self.ids)


def _ids_of(descriptor: MethodDescriptor) -> tuple[IdField, ...]:
    creates = descriptor.name.startswith("Create")
    ids = []
    for fd in descriptor.input_type.fields:
        reference = _reference(fd)
        if reference and reference != "haulmesh.io/Carrier":
            ids.append(IdField((fd.name,), reference))
        elif fd.name in PLAIN_IDS:
            ids.append(IdField((fd.name,), PLAIN_IDS[fd.name], bare=True))
        elif fd.message_type is not None and _resource_type(fd.message_type):
            inner = fd.message_type
            if not creates and "name" in inner.fields_by_name:  # an Update's resource: its name
                ids.append(IdField((fd.name, "name"), _resource_type(inner)))
            ids += [IdField((fd.name, g.name), _reference(g)) for g in inner.fields
                    if _reference(g) and _reference(g) != "haulmesh.io/Carrier" and g.name != "name"
                    and "OUTPUT_ONLY" not in _behaviors(g)]
    return tuple(ids)


def methods_with_ids() -> list[Method]:
    """Every method of every contract service that takes an object id, generated from the descriptors."""
    found = []
    for path in sorted((ROOT / "haulmesh").glob("*/v1/*_service_pb2.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in SERVERS, f"{service.full_name}: which process serves it? (SERVERS)"
            for method in service.methods:
                ids = _ids_of(method)
                if ids:
                    found.append(Method(service.full_name, method, ids))
    return found


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


#: What each method needs besides its ids to pass validation, so that only tenancy can refuse it.
BODIES: dict[str, Callable[[Message], None]] = {
    "UpdateTender": lambda r: (setattr(r.tender, "special_instructions", "dock 4"),
                               r.update_mask.paths.append("special_instructions")),
    "UpdateRateCard": lambda r: (setattr(r.rate_card, "display_name", "matrix"),
                                 r.update_mask.paths.append("display_name")),
    "UpdateFacility": lambda r: (setattr(r.facility, "display_name", "matrix"),
                                 r.update_mask.paths.append("display_name")),
    "UpdateVehicle": lambda r: (setattr(r.vehicle, "display_name", "matrix"),
                                r.update_mask.paths.append("display_name")),
    "UpdateWebhookSubscription": lambda r: (setattr(r.webhook_subscription, "display_name", "matrix"),
                                            r.update_mask.paths.append("display_name")),
    "ReconcileInvoice": lambda r: r.tms_total.CopyFrom(money_pb2.Money(currency_code="USD", amount_minor=100)),
    "AcknowledgeMissionDispatch": lambda r: r.ack_time.CopyFrom(_now()),
    "StartMission": lambda r: r.pre_trip_checks.append(health_check_pb2.HealthCheckResult(
        check="lidar", outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS)),
    "ArriveMission": lambda r: r.arrive_time.CopyFrom(_now()),
    "CancelMission": lambda r: setattr(r, "reason", "matrix"),
    "AbortMission": lambda r: setattr(r, "reason", "matrix"),
    "RaiseMissionException": lambda r: r.exception.CopyFrom(mission_pb2.MissionException(
        kind=mission_pb2.MissionException.KIND_ROAD_CLOSURE, severity=mission_pb2.MissionException.SEVERITY_INFO,
        contingency=mission_pb2.MissionException.CONTINGENCY_CONTINUE, description="matrix")),
    "ResolveMissionException": lambda r: (setattr(r, "exception_id", "exc-matrix"), setattr(r, "resolution", "matrix")),
    "AcknowledgeMissionTakeover": lambda r: (setattr(r, "exception_id", "exc-matrix"), setattr(r, "step", 1),
                                             r.ack_time.CopyFrom(_now())),
    "RecordCheckIn": lambda r: r.check_in.CopyFrom(mission_pb2.CheckIn(point=mission_pb2.CheckIn.POINT_DEPARTURE,
                                                                     outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)),
    "SubmitProofOfDelivery": lambda r: r.proof_of_delivery.CopyFrom(mission_pb2.ProofOfDelivery(
        manifest=b"matrix", manifest_signature=b"matrix", key_id="0" * 64)),
    "RotateWebhookSecret": lambda r: setattr(r, "new_secret", "whsec_" + "A" * 43),
}


@dataclass(frozen=True)
class Caller:
    """One row of the matrix: who calls, for which carrier."""

    label: str
    identity: Identity
    grant: pki.OperatorGrant | None
    asserts: str
    serves_asserted: bool  # False: an operator naming a carrier its grant does not serve

    def expected(self, method: Method) -> tuple[str, str] | None:
        """(code, reason) the call must end with; None when the call is not made (see the module's docstring)."""
        _, policy = SERVERS[method.service]
        if not policy.allows(method.path, self.identity, self.grant):
            return "PERMISSION_DENIED", "METHOD_NOT_ALLOWED"
        if not self.serves_asserted:
            return "PERMISSION_DENIED", "TENANT_NOT_ALLOWED"
        if not method.tenanted or not method.owned_here:
            return None
        if method.name.startswith("Create") and self.grant is not None and self.grant.role == pki.PLATFORM_ADMIN:
            return None
        return "NOT_FOUND", ""


def callers(p: Pki, owner: str, intruder: str) -> list[tuple[Caller, grpc.ChannelCredentials]]:
    """Every caller of the matrix, with its credentials (each operator a certificate of its own grant)."""
    rows: list[tuple[Caller, grpc.ChannelCredentials]] = [
        (Caller("gateway for the intruder", Identity("service", "gateway"), None, intruder, True),
         p.credentials("service", "gateway"))]
    for role in (pki.FLEET_OPERATOR, pki.BILLING_ADMIN):
        grant = pki.OperatorGrant(role, frozenset({intruder}))
        credentials = p.credentials("operator", f"matrix-{role}", role=role, carriers=(intruder,))
        identity = Identity("operator", f"matrix-{role}")
        rows += [(Caller(f"{role} of the intruder", identity, grant, intruder, True), credentials),
                 (Caller(f"{role} of the intruder, naming the owner", identity, grant, owner, False), credentials)]
    rows.append((Caller("platform-admin for the intruder", Identity("operator", "matrix-platform"),
                        pki.OperatorGrant(pki.PLATFORM_ADMIN), intruder, True),
                 p.credentials("operator", "matrix-platform", role=pki.PLATFORM_ADMIN)))
    nobody = p.credentials("operator", "matrix-nobody", role=None)
    rows += [(Caller(f"operator without a role, naming the {who}", Identity("operator", "matrix-nobody"), None,
                     carrier, True), nobody) for who, carrier in (("intruder", intruder), ("owner", owner))]
    return rows


def _set(request: Message, path: tuple[str, ...], value: str) -> None:
    target = request
    for part in path[:-1]:
        target = getattr(target, part)
    setattr(target, path[-1], value)


def build_request(method: Method, resources: dict[str, str]) -> Message:
    """The method's request naming the owner's objects (placeholders where the mesh has none), with a body that
    passes validation."""
    request = message_factory.GetMessageClass(method.descriptor.input_type)()
    for id_field in method.ids:
        key = OBJECTS.get(id_field.resource_type)
        value = resources[key] if key else _PLACEHOLDER[id_field.resource_type].format(id="0matrix")
        _set(request, id_field.path, value.split("/", 1)[1] if id_field.bare else value)
    if method.name in BODIES:
        BODIES[method.name](request)
    return request


async def call(channel: grpc.aio.Channel, method: Method, request: Message, carrier: str) -> tuple[str, str]:
    """(code name, ErrorInfo reason) of one call ("OK", "" when it was answered)."""
    out = message_factory.GetMessageClass(method.descriptor.output_type)
    metadata = (("haulmesh-carrier", f"carriers/{carrier}"),)
    try:
        if method.descriptor.server_streaming:
            stream = channel.unary_stream(method.path, request_serializer=type(request).SerializeToString,
                                          response_deserializer=out.FromString)(request, metadata=metadata, timeout=10)
            try:
                await stream.read()  # the first message or the refusal; a watch would go on: stop it
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(method.path, request_serializer=type(request).SerializeToString,
                                      response_deserializer=out.FromString)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        info = error_info(exc)
        return exc.code().name, info.reason if info is not None else ""
    return "OK", ""


@dataclass
class MatrixResult:
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    exercised: set[str] = field(default_factory=set)
    not_made: set[str] = field(default_factory=set)


async def run_grpc_matrix(mesh: Mesh, p: Pki, owner: str, intruder: str, resources: dict[str, str],
                          rng: random.Random | None = None) -> MatrixResult:
    """Call every method with an object id as every caller, naming the owner's objects; collect every outcome
    that is not the exact refusal expected."""
    result = MatrixResult()
    plan = [(m, c, cred) for m in methods_with_ids() for c, cred in callers(p, owner, intruder)]
    if rng is not None:
        rng.shuffle(plan)
    channels: dict[tuple[str, int], grpc.aio.Channel] = {}
    try:
        for method, caller, credentials in plan:
            expected = caller.expected(method)
            if expected is None:
                result.not_made.add(f"{method.name} as {caller.label}")
                continue
            process = SERVERS[method.service][0]
            key = (process, id(credentials))
            if key not in channels:
                channels[key] = grpc.aio.secure_channel(mesh.address(process), credentials)
            got = await call(channels[key], method, build_request(method, resources), caller.asserts)
            result.calls += 1
            result.exercised.add(method.name)
            result.outcomes[f"{got[0]} {got[1]}".strip()] += 1
            # NOT_FOUND's reason names the resource (TENDER_NOT_FOUND, ...): its code is the promise.
            if got[0] != expected[0] or (expected[1] and got[1] != expected[1]):
                result.wrong.append(f"{method.name} as {caller.label}: {got[0]} {got[1]}, expected "
                                    f"{expected[0]} {expected[1]}")
    finally:
        for channel in channels.values():
            await channel.close()
    return result


#: How to read back each owner's object (service process, method, request class) for the before/after comparison.
READS = {
    "tenders": ("tender", "/haulmesh.tender.v1.TenderService/GetTender"),
    "missions": ("mission", "/haulmesh.mission.v1.MissionService/GetMission"),
    "quotes": ("billing", "/haulmesh.billing.v1.BillingService/GetQuote"),
    "invoices": ("billing", "/haulmesh.billing.v1.BillingService/GetInvoice"),
    "rateCards": ("billing", "/haulmesh.billing.v1.BillingService/GetRateCard"),
    "facilities": ("tender", "/haulmesh.tender.v1.FacilityService/GetFacility"),
}


async def snapshot(mesh: Mesh, p: Pki, owner: str, resources: dict[str, str]) -> dict[str, bytes]:
    """Every owner's object as the owner's gateway reads it (deterministic bytes)."""
    methods = {m.path: m for m in methods_with_ids()}
    out = {}
    for key, (process, path) in READS.items():
        method = methods[path]
        request = message_factory.GetMessageClass(method.descriptor.input_type)(name=resources[key])
        reply_class = message_factory.GetMessageClass(method.descriptor.output_type)
        async with grpc.aio.secure_channel(mesh.address(process), p.credentials("service", "gateway")) as channel:
            reply = await channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                              response_deserializer=reply_class.FromString)(
                request, metadata=(("haulmesh-carrier", f"carriers/{owner}"),), timeout=10)
        out[key] = reply.SerializeToString(deterministic=True)
    return out


async def audit_touches(mesh: Mesh, resources: dict[str, str], since_ms: int) -> list[dict[str, str]]:
    """Audit records (successful mutating calls) on any owner's object since ``since_ms``."""
    client = connect_async(mesh.store.url)
    try:
        entries = await audit_entries_touching(client, set(resources.values()), since_ms=since_ms)
    finally:
        await client.aclose()
    return [json.loads(e.record) for e in entries]


async def settled(mesh: Mesh, p: Pki, owner: str, resources: dict[str, str]) -> None:
    """Wait until the owner's mission is COMPLETED (the service completes it once billing recorded the usage,
    possibly just after the invoice appears), so that nothing legitimate changes the objects meanwhile."""
    request = mission_service_pb2.GetMissionRequest(name=resources["missions"])
    async with grpc.aio.secure_channel(mesh.address("mission"), p.credentials("service", "gateway")) as channel:
        stub = mission_service_pb2_grpc.MissionServiceStub(channel)

        async def completed() -> bool:
            mission = await stub.GetMission(request, metadata=(("haulmesh-carrier", f"carriers/{owner}"),),
                                            timeout=10)
            return mission.state == mission_pb2.Mission.STATE_COMPLETED

        await poll_until(completed, timeout_seconds=30, what=f"{resources['missions']} COMPLETED")


def now_ms() -> int:
    return int(time.time() * 1000)


def updates() -> list[tuple[Method, str]]:
    """Every (Update method, OUTPUT_ONLY field of its resource), from the descriptors."""
    found = []
    for method in methods_with_ids():
        if not method.name.startswith("Update"):
            continue
        resource = next(fd for fd in method.descriptor.input_type.fields
                        if fd.message_type is not None and _resource_type(fd.message_type))
        found += [(method, fd.name) for fd in resource.message_type.fields if "OUTPUT_ONLY" in _behaviors(fd)]
    return found


async def output_only_refusals(mesh: Mesh, p: Pki, owner: str, resources: dict[str, str]) -> MatrixResult:
    """Each Update naming an OUTPUT_ONLY field in its mask, on the owner's own object as a caller allowed to update
    it: INVALID_ARGUMENT; a billing admin's CreateRateCard with the OUTPUT_ONLY carrier of another carrier: created
    for its own carrier (the field ignored)."""
    result = MatrixResult()
    platform = p.credentials("operator", "matrix-platform", role=pki.PLATFORM_ADMIN)
    gateway = p.credentials("service", "gateway")
    for method, name in updates():
        if not method.owned_here:
            result.not_made.add(f"{method.name} {name}")
            continue
        process, policy = SERVERS[method.service]
        credentials = gateway if policy.allows(method.path, Identity("service", "gateway")) else platform
        request = build_request(method, resources)
        del request.update_mask.paths[:]
        request.update_mask.paths.append(name)
        async with grpc.aio.secure_channel(mesh.address(process), credentials) as channel:
            got = await call(channel, method, request, owner)
        result.calls += 1
        result.exercised.add(f"{method.name} {name}")
        result.outcomes[got[0]] += 1
        if got[0] != "INVALID_ARGUMENT":
            result.wrong.append(f"{method.name} update_mask [{name}]: {got[0]} {got[1]}")
    return result


async def create_ignores_foreign_carrier(mesh: Mesh, p: Pki, owner: str, intruder: str) -> str:
    """A billing admin of the intruder creates a rate card naming the owner as its (OUTPUT_ONLY) carrier: the card
    is the intruder's. Returns the carrier the created card has."""
    card = rate_card_pb2.RateCard(display_name="matrix", currency_code="USD", carrier=f"carriers/{owner}",
                                  default_rate_per_mile=money_pb2.Money(currency_code="USD", amount_minor=300))
    card.effective_time.FromSeconds(int(time.time()) - 60)
    credentials = p.credentials("operator", "matrix-billing", role=pki.BILLING_ADMIN, carriers=(intruder,))
    async with grpc.aio.secure_channel(mesh.address("billing"), credentials) as channel:
        created = await channel.unary_unary(
            "/haulmesh.billing.v1.BillingService/CreateRateCard",
            request_serializer=billing_service_pb2.CreateRateCardRequest.SerializeToString,
            response_deserializer=rate_card_pb2.RateCard.FromString)(
            billing_service_pb2.CreateRateCardRequest(rate_card=card),
            metadata=(("haulmesh-carrier", f"carriers/{intruder}"),), timeout=10)
    return created.carrier
