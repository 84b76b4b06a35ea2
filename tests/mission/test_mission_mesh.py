"""MissionService in the real mesh: real processes, real mTLS, real Valkey.

Vehicles are fleet-wide and the session mesh is shared with other tests, so every test registers its own
vehicles (unique ids) and names them on dispatch, except the dispatch-order test, which uses equipment
no other test registers.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import field_mask_pb2, timestamp_pb2

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import hazmat_pb2, health_check_pb2, location_pb2, time_window_pb2
from services.mission import domain
from services.runtime import Mesh, new_id, pki
from tests.conftest import Pki, rich_error, wait_for
from tests.trucks import Truck

ACME = (("haulmesh-carrier", "carriers/acme"),)
GLOBEX = (("haulmesh-carrier", "carriers/globex"),)
DRY_VAN, STEP_DECK, CHASSIS = 1, 5, 7
HOUSTON = location_pb2.Location(lat=29.7604, lon=-95.3698, address="Houston, TX")
DALLAS = location_pb2.Location(lat=32.7767, lon=-96.7970, address="Dallas, TX")
ATLANTA = location_pb2.Location(lat=33.7490, lon=-84.3880, address="Atlanta, GA")
LAREDO = location_pb2.Location(lat=27.5306, lon=-99.4803, address="Laredo, TX")
EL_PASO = location_pb2.Location(lat=31.7619, lon=-106.4850, address="El Paso, TX")
M = mission_pb2.Mission
PASS = health_check_pb2.HealthCheckResult(check="brakes", outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS,
                                          blocking=True)


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _error(error: grpc.aio.AioRpcError) -> tuple[str, str, dict[str, str], list[str]]:
    """(code, ErrorInfo reason, ErrorInfo metadata, BadRequest fields)."""
    e = rich_error(error)
    return e.code, e.reason, e.metadata, e.fields


async def _fails(call, *args, **kwargs) -> tuple[str, str, dict[str, str], list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(*args, timeout=10, **kwargs)
    return _error(caught.value)


class Client:
    """A MissionService stub under one identity."""

    def __init__(self, mesh: Mesh, credentials: grpc.ChannelCredentials) -> None:
        self.channel = grpc.aio.secure_channel(mesh.address("mission"), credentials)
        self.stub = mission_service_pb2_grpc.MissionServiceStub(self.channel)

    def __getattr__(self, name: str):
        return getattr(self.stub, name)


@pytest.fixture
async def ops(mesh: Mesh, mesh_pki: Pki):
    client = Client(mesh, mesh_pki.credentials("operator", "ops"))
    yield client
    await client.channel.close()


@pytest.fixture
async def tender(mesh: Mesh, mesh_pki: Pki):
    client = Client(mesh, mesh_pki.credentials("service", "tender"))
    yield client
    await client.channel.close()


def unique_vehicle_id() -> str:
    return f"MT-{uuid.uuid4().hex[:10].upper()}"


async def add_vehicle(ops: Client, *, equipment=(DRY_VAN,), hazmat=False, max_lb=45_000, region="US-TX-HOU",
                      vehicle_id: str | None = None) -> vehicle_pb2.Vehicle:
    vehicle_id = vehicle_id or unique_vehicle_id()
    return await ops.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
        vehicle_id=vehicle_id, vehicle=vehicle_pb2.Vehicle(
            display_name=f"Truck {vehicle_id}", home_region=region,
            capabilities=vehicle_pb2.VehicleCapabilities(equipment=equipment, hazmat_certified=hazmat,
                                                         max_cargo_weight_lb=max_lb, night_operations=True))),
        timeout=10)


def mission_spec(vehicle: str = "", *, origin=HOUSTON, destination=DALLAS, equipment=DRY_VAN, weight=30_000,
                 hazmat=False) -> M:
    start = datetime.now(UTC) + timedelta(hours=2)
    load = mission_pb2.LoadDetails(tms_load_id=f"TND-{uuid.uuid4().hex[:8]}", equipment=equipment,
                                   weight_lb=weight)
    if hazmat:
        load.hazmat.CopyFrom(hazmat_pb2.Hazmat(un_number="UN1203", hazard_class="3"))
    return M(tender=f"tenders/{new_id()}", quote=f"quotes/{new_id()}", vehicle=vehicle, load=load, stops=[
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=origin, planned_window=time_window_pb2.TimeWindow(
            start_time=_ts(start), end_time=_ts(start + timedelta(hours=2)))),
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=destination),
    ])


async def dispatch(caller: Client, vehicle: vehicle_pb2.Vehicle | None, **kw) -> M:
    spec = mission_spec(vehicle.name if vehicle else "", **kw)
    return await caller.CreateMission(mission_service_pb2.CreateMissionRequest(mission=spec, request_id=new_id()),
                                      metadata=ACME, timeout=10)


async def drive_to_enroute(ops: Client, mission: M) -> M:
    mission = await ops.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
        name=mission.name, ack_time=_ts(datetime.now(UTC))), metadata=ACME, timeout=10)
    if mission.check_in_requirement.required:
        await check_in(ops, mission, mission_pb2.CheckIn.POINT_DEPARTURE)
    return await ops.StartMission(mission_service_pb2.StartMissionRequest(name=mission.name, pre_trip_checks=[PASS]),
                                  metadata=ACME, timeout=10)


async def check_in(ops: Client, mission: M, point: int, outcome: int = mission_pb2.CheckIn.OUTCOME_PROCEED,
                   request_id: str = "") -> mission_service_pb2.RecordCheckInResponse:
    return await ops.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
        name=mission.name, check_in=mission_pb2.CheckIn(point=point, outcome=outcome, notes="looks good"),
        request_id=request_id), metadata=ACME, timeout=10)


async def arrive(ops: Client, mission: M) -> M:
    return await ops.ArriveMission(mission_service_pb2.ArriveMissionRequest(
        name=mission.name, arrive_time=_ts(datetime.now(UTC))), metadata=ACME, timeout=10)


def signed_proof(truck: pki.IssuedCertificate, mission: M, *, mission_id: str | None = None,
                 key: ec.EllipticCurvePrivateKey | None = None) -> mission_pb2.ProofOfDelivery:
    photo = mission_pb2.PhotoReference(uri="https://photos.example/seal.jpg", sha256="ab" * 32,
                                       content_type="image/jpeg")
    manifest = mission_pb2.DeliveryManifest(
        mission_id=mission_id or mission.name.removeprefix("missions/"),
        vehicle_id=mission.vehicle.removeprefix("vehicles/"), tms_load_id=mission.load.tms_load_id,
        deliver_time=_ts(datetime.now(UTC)), location=DALLAS, seal_number="S-1", received_by="Dock 4",
        telemetry_log_sha256="cd" * 32, telemetry_first_sequence=1, telemetry_last_sequence=10,
        photo_sha256=[photo.sha256]).SerializeToString()
    signature = (key or truck.private_key).sign(manifest, ec.ECDSA(hashes.SHA256()))
    return mission_pb2.ProofOfDelivery(manifest=manifest, manifest_signature=signature,
                                       key_id=domain.key_id_of(truck.certificate_pem), photos=[photo])


def truck_client(mesh: Mesh, mesh_pki: Pki, vehicle_id: str) -> tuple[Client, pki.IssuedCertificate]:
    truck = Truck.mint(mesh_pki.ca, vehicle_id)
    return Client(mesh, truck.credentials()), truck.issued


async def acme_events(mesh: Mesh, subject: str) -> list[event_pb2.Event]:
    """The events about ``subject`` on the carrier acme's stream, in order."""
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    try:
        entries = await client.xrange("events:{acme}")
    finally:
        await client.aclose()
    events = [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries]
    return [e for e in events if e.subject == subject]


async def events_of(mesh: Mesh, subject: str) -> list[str]:
    return [e.type.removeprefix("haulmesh.mission.v1.") for e in await acme_events(mesh, subject)]


# --- roster ------------------------------------------------------------------------------------------

async def test_vehicle_roster(ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops)
    assert vehicle.availability == vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE and vehicle.etag
    assert await ops.GetVehicle(mission_service_pb2.GetVehicleRequest(name=vehicle.name), timeout=10) == vehicle
    vehicle_id = vehicle.name.removeprefix("vehicles/")
    code, reason, _, _ = await _fails(ops.CreateVehicle, mission_service_pb2.CreateVehicleRequest(
        vehicle_id=vehicle_id, vehicle=vehicle))
    assert (code, reason) == ("ALREADY_EXISTS", "VEHICLE_ALREADY_EXISTS")
    code, reason, _, fields = await _fails(ops.CreateVehicle, mission_service_pb2.CreateVehicleRequest(
        vehicle_id="bad id", vehicle=vehicle_pb2.Vehicle()))
    assert (code, reason, fields) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT", ["vehicle_id"])
    code, _, _, fields = await _fails(ops.CreateVehicle, mission_service_pb2.CreateVehicleRequest(
        vehicle_id=unique_vehicle_id(), vehicle=vehicle_pb2.Vehicle(home_region="Houston")))
    assert set(fields) == {"vehicle.capabilities.equipment", "vehicle.capabilities.max_cargo_weight_lb",
                           "vehicle.home_region"}
    assert (await _fails(tender.CreateVehicle, mission_service_pb2.CreateVehicleRequest(
        vehicle_id=unique_vehicle_id(), vehicle=vehicle)))[:2] == ("PERMISSION_DENIED", "METHOD_NOT_ALLOWED")

    update = vehicle_pb2.Vehicle(name=vehicle.name, availability=vehicle_pb2.Vehicle.AVAILABILITY_MAINTENANCE,
                                 etag=vehicle.etag)
    mask = field_mask_pb2.FieldMask(paths=["availability"])
    changed = await ops.UpdateVehicle(mission_service_pb2.UpdateVehicleRequest(vehicle=update, update_mask=mask),
                                      timeout=10)
    assert changed.availability == vehicle_pb2.Vehicle.AVAILABILITY_MAINTENANCE and changed.etag != vehicle.etag
    assert changed.capabilities == vehicle.capabilities  # outside the mask: untouched
    assert (await _fails(ops.UpdateVehicle, mission_service_pb2.UpdateVehicleRequest(
        vehicle=update, update_mask=mask)))[:2] == ("ABORTED", "ETAG_MISMATCH")
    update.ClearField("etag")
    update.availability = vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED
    assert (await _fails(ops.UpdateVehicle, mission_service_pb2.UpdateVehicleRequest(
        vehicle=update, update_mask=mask)))[0] == "INVALID_ARGUMENT"
    listed = await ops.ListVehicles(mission_service_pb2.ListVehiclesRequest(page_size=1000), timeout=10)
    assert vehicle.name in {v.name for v in listed.vehicles}


async def test_fleet_capacity(ops: Client, tender: Client) -> None:
    await add_vehicle(ops, equipment=(CHASSIS,))
    start = datetime.now(UTC) + timedelta(hours=1)
    request = mission_service_pb2.GetFleetCapacityRequest(
        origin=HOUSTON, destination=DALLAS, equipment=CHASSIS, weight_lb=20_000,
        pickup_window=time_window_pb2.TimeWindow(start_time=_ts(start), end_time=_ts(start + timedelta(hours=6))))
    reply = await tender.GetFleetCapacity(request, timeout=10)
    assert reply.lane.origin_region == "US-TX-HOU" and reply.lane.destination_region == "US-TX-DAL"
    assert reply.eligible_vehicle_count >= 1 and reply.windows and reply.windows[0].vehicle_count >= 1
    request.weight_lb = 0
    assert (await _fails(tender.GetFleetCapacity, request))[3] == ["weight_lb"]


# --- dispatch ----------------------------------------------------------------------------------------

async def test_dispatch_reserves_the_vehicle_and_is_idempotent(mesh: Mesh, ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops)
    spec = mission_spec(vehicle.name)
    request = mission_service_pb2.CreateMissionRequest(mission=spec, request_id=f"accepted:{new_id()}")
    mission = await tender.CreateMission(request, metadata=ACME, timeout=10)
    assert mission.state == M.STATE_DISPATCHED and mission.carrier == "carriers/acme"
    assert mission.vehicle == vehicle.name and mission.HasField("dispatch_time")
    assert (mission.lane.origin_region, mission.lane.destination_region) == ("US-TX-HOU", "US-TX-DAL")
    assert 250 < mission.route_miles < 320
    assert [s.geofence.circle.radius_meters for s in mission.stops] == [500, 500]
    assert mission.stops[0].geofence.circle.center == HOUSTON
    requirement = mission.check_in_requirement
    assert requirement.lane_mission_threshold == 30 and requirement.lane_mission_ordinal >= 1
    assert requirement.required == (requirement.lane_mission_ordinal <= 30)
    assert await tender.CreateMission(request, metadata=ACME, timeout=10) == mission  # same key: same mission
    assigned = await ops.GetVehicle(mission_service_pb2.GetVehicleRequest(name=vehicle.name), timeout=10)
    assert assigned.availability == vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED
    assert assigned.current_mission == mission.name
    assert await events_of(mesh, mission.name) == ["dispatched"]

    changed = mission_service_pb2.CreateMissionRequest(mission=mission_spec(vehicle.name),
                                                       request_id=request.request_id)
    assert (await _fails(tender.CreateMission, changed, metadata=ACME))[:2] == ("INVALID_ARGUMENT",
                                                                                 "REQUEST_ID_REUSED")
    again = mission_service_pb2.CreateMissionRequest(mission=spec, request_id=new_id())
    code, reason, metadata, _ = await _fails(tender.CreateMission, again, metadata=ACME)
    assert (code, reason, metadata) == ("ALREADY_EXISTS", "MISSION_ALREADY_EXISTS", {"mission": mission.name})
    busy = await _fails(tender.CreateMission, mission_service_pb2.CreateMissionRequest(
        mission=mission_spec(vehicle.name)), metadata=ACME)
    assert busy[:2] == ("FAILED_PRECONDITION", "VEHICLE_NOT_ELIGIBLE")


async def test_dispatch_eligibility(ops: Client, tender: Client) -> None:
    plain = await add_vehicle(ops, max_lb=20_000)
    hazmat = await _fails(tender.CreateMission, mission_service_pb2.CreateMissionRequest(
        mission=mission_spec(plain.name, hazmat=True, weight=10_000)), metadata=ACME)
    assert hazmat[:2] == ("FAILED_PRECONDITION", "VEHICLE_NOT_ELIGIBLE")
    assert hazmat[2]["lacking"] == "HAZMAT_CERTIFICATION"
    heavy = await _fails(tender.CreateMission, mission_service_pb2.CreateMissionRequest(
        mission=mission_spec(plain.name, weight=30_000)), metadata=ACME)
    assert heavy[2]["lacking"] == "MAX_CARGO_WEIGHT"
    none = await _fails(tender.CreateMission, mission_service_pb2.CreateMissionRequest(
        mission=mission_spec(equipment=CHASSIS, weight=80_000, hazmat=True)), metadata=ACME)
    assert none[:2] == ("FAILED_PRECONDITION", "NO_VEHICLE_AVAILABLE")
    missing = await _fails(tender.CreateMission, mission_service_pb2.CreateMissionRequest(
        mission=mission_spec("vehicles/NO-SUCH-TRUCK")), metadata=ACME)
    assert missing[:2] == ("NOT_FOUND", "VEHICLE_NOT_FOUND")
    bad = M(tender="orders/1", stops=[mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=HOUSTON)])
    code, _, _, fields = await _fails(tender.CreateMission, mission_service_pb2.CreateMissionRequest(mission=bad),
                                      metadata=ACME)
    assert code == "INVALID_ARGUMENT"
    assert {"mission.tender", "mission.quote", "mission.load.tms_load_id", "mission.load.equipment",
            "mission.load.weight_lb", "mission.stops", "mission.stops[0].type"} <= set(fields)


async def test_dispatch_picks_the_nearest_eligible_vehicle(ops: Client, tender: Client) -> None:
    far = await add_vehicle(ops, equipment=(STEP_DECK,), region="US-GA-ATL")
    near = await add_vehicle(ops, equipment=(STEP_DECK,), region="US-TX-HOU")
    busy = await add_vehicle(ops, equipment=(STEP_DECK,), region="US-TX-HOU")
    await ops.UpdateVehicle(mission_service_pb2.UpdateVehicleRequest(
        vehicle=vehicle_pb2.Vehicle(name=busy.name, availability=vehicle_pb2.Vehicle.AVAILABILITY_OUT_OF_SERVICE),
        update_mask=field_mask_pb2.FieldMask(paths=["availability"])), timeout=10)
    first = await dispatch(tender, None, equipment=STEP_DECK)
    second = await dispatch(tender, None, equipment=STEP_DECK)
    assert (first.vehicle, second.vehicle) == (near.name, far.name)
    for mission in (first, second):
        await ops.CancelMission(mission_service_pb2.CancelMissionRequest(name=mission.name, reason="test"),
                                metadata=ACME, timeout=10)


# --- the lifecycle -----------------------------------------------------------------------------------

async def test_mission_driven_to_completion(mesh: Mesh, mesh_pki: Pki, ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops)
    vehicle_id = vehicle.name.removeprefix("vehicles/")
    mission = await dispatch(tender, vehicle, origin=LAREDO, destination=EL_PASO)  # a lane no other test uses
    assert mission.check_in_requirement.required
    assert list(mission.check_in_requirement.points) == [1, 2, 3]
    assert mission.check_in_requirement.next_due_time == mission.stops[0].planned_window.start_time
    acked = await ops.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
        name=mission.name, ack_time=_ts(datetime.now(UTC))), metadata=ACME, timeout=10)
    assert acked.state == M.STATE_PRE_TRIP and acked.HasField("dispatch_ack_time")
    again = await ops.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
        name=mission.name, ack_time=_ts(datetime.now(UTC))), metadata=ACME, timeout=10)
    assert again == acked  # a retried acknowledgement changes nothing

    failing = health_check_pb2.HealthCheckResult(check="lidar", outcome=health_check_pb2.HealthCheckResult.OUTCOME_FAIL,
                                                 blocking=True, detail="no returns")
    code, reason, metadata, _ = await _fails(ops.StartMission, mission_service_pb2.StartMissionRequest(
        name=mission.name, pre_trip_checks=[PASS, failing]), metadata=ACME)
    assert (code, reason, metadata) == ("FAILED_PRECONDITION", "PRE_TRIP_CHECK_FAILED", {"check": "lidar"})
    start = mission_service_pb2.StartMissionRequest(name=mission.name, pre_trip_checks=[PASS])
    assert (await _fails(ops.StartMission, start, metadata=ACME))[:2] == ("FAILED_PRECONDITION", "CHECK_IN_REQUIRED")
    waiting = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=ACME, timeout=10)
    assert waiting.state == M.STATE_PRE_TRIP and list(waiting.pre_trip_checks) == [PASS]  # kept for the departure
    recorded = await check_in(ops, mission, mission_pb2.CheckIn.POINT_DEPARTURE, request_id="dep-1")
    assert recorded.check_in.check_in_id == "chk-1" and recorded.check_in.recorded_by.endswith("/operator/ops")
    assert (await check_in(ops, mission, mission_pb2.CheckIn.POINT_DEPARTURE, request_id="dep-1")) == recorded
    enroute = recorded.mission  # the check-in cleared the kept report: the departure is recorded with it
    assert enroute.state == M.STATE_ENROUTE and enroute.HasField("start_time")
    assert enroute.stops[0].HasField("depart_time") and list(enroute.pre_trip_checks) == [PASS]
    assert enroute.check_in_requirement.HasField("next_due_time")  # the first en-route check-in
    assert await ops.StartMission(start, metadata=ACME, timeout=10) == enroute  # the truck's retry: no change
    arrived = await arrive(ops, mission)
    assert arrived.state == M.STATE_ARRIVED and arrived.stops[-1].HasField("arrive_time")

    truck, issued = truck_client(mesh, mesh_pki, vehicle_id)
    try:
        delivered = await truck.SubmitProofOfDelivery(mission_service_pb2.SubmitProofOfDeliveryRequest(
            name=mission.name, proof_of_delivery=signed_proof(issued, mission)), timeout=10)
    finally:
        await truck.channel.close()
    assert delivered.state in (M.STATE_DELIVERED, M.STATE_COMPLETED)
    assert delivered.proof_of_delivery.manifest_details.vehicle_id == vehicle_id
    assert delivered.proof_of_delivery.HasField("submit_time")

    # Billing records the usage and the mission completes; if billing cannot (not deployed yet), an
    # operator closes it. Either way the vehicle is free again.
    async def completed() -> M | None:
        current = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=ACME,
                                       timeout=10)
        return current if current.state == M.STATE_COMPLETED else None

    try:
        final = await wait_for(completed, timeout_seconds=5)
    except TimeoutError:
        final = await ops.CompleteMission(mission_service_pb2.CompleteMissionRequest(name=mission.name),
                                          metadata=ACME, timeout=10)
    assert final.state == M.STATE_COMPLETED and final.HasField("end_time")
    freed = await ops.GetVehicle(mission_service_pb2.GetVehicleRequest(name=vehicle.name), timeout=10)
    assert freed.availability == vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE and not freed.current_mission
    types = await events_of(mesh, mission.name)
    assert types[:6] == ["dispatched", "state_changed", "check_in_recorded", "state_changed", "state_changed",
                         "proof_of_delivery_submitted"]
    assert types[-1] == "state_changed" and len(types) == 8


async def test_exceptions_contingencies_and_abort(ops: Client, tender: Client, mesh: Mesh) -> None:
    vehicle = await add_vehicle(ops)
    mission = await drive_to_enroute(ops, await dispatch(tender, vehicle, destination=ATLANTA))
    closure = mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, request_id=f"{vehicle.name[9:]}:42", exception=mission_pb2.MissionException(
            kind=mission_pb2.MissionException.KIND_ROAD_CLOSURE, description="I-59 closed", frame_sequence=42,
            location=location_pb2.Location(lat=30.8, lon=-89.55)))  # on I-59, between Slidell and Hattiesburg
    raised = await ops.RaiseMissionException(closure, metadata=ACME, timeout=10)
    assert raised.exception.contingency == mission_pb2.MissionException.CONTINGENCY_REROUTE
    # No waypoints came with it: the mission service took the lane facts' detour to the delivery.
    detour = [(p.lat, p.lon) for p in raised.exception.reroute_waypoints]
    assert detour[0] == (30.2752, -89.7812) and detour[-1] == (mission.stops[-1].location.lat,
                                                                mission.stops[-1].location.lon)
    assert "detour via I-10, I-65" in raised.exception.description
    assert [(p.lat, p.lon) for p in raised.mission.planned_route][:len(detour)] == detour
    assert raised.exception.exception_id == "exc-1" and raised.exception.raised_by.endswith("/operator/ops")
    assert (raised.mission.state, raised.mission.resume_state) == (M.STATE_EXCEPTION, M.STATE_ENROUTE)
    assert await ops.RaiseMissionException(closure, metadata=ACME, timeout=10) == raised  # idempotent
    sensor = await ops.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, exception=mission_pb2.MissionException(
            kind=mission_pb2.MissionException.KIND_SENSOR_FAULT,
            severity=mission_pb2.MissionException.SEVERITY_CRITICAL)), metadata=ACME, timeout=10)
    assert sensor.exception.contingency == mission_pb2.MissionException.CONTINGENCY_MINIMAL_RISK_STOP
    link = await ops.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, exception=mission_pb2.MissionException(
            kind=mission_pb2.MissionException.KIND_CONNECTIVITY_LOSS)), metadata=ACME, timeout=10)
    assert link.exception.contingency == mission_pb2.MissionException.CONTINGENCY_CONTINUE
    unknown = mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, exception=mission_pb2.MissionException(
            kind=99, severity=7, contingency=mission_pb2.MissionException.CONTINGENCY_CONTINUE))
    assert (await _fails(ops.RaiseMissionException, unknown, metadata=ACME))[::3] == (
        "INVALID_ARGUMENT", ["exception.kind", "exception.severity"])

    def resolve(exception_id: str) -> mission_service_pb2.ResolveMissionExceptionRequest:
        return mission_service_pb2.ResolveMissionExceptionRequest(name=mission.name, exception_id=exception_id,
                                                                 resolution="handled")

    first = await ops.ResolveMissionException(resolve("exc-1"), metadata=ACME, timeout=10)
    assert first.mission.state == M.STATE_EXCEPTION and first.exception.HasField("resolve_time")
    assert await ops.ResolveMissionException(resolve("exc-1"), metadata=ACME, timeout=10) == first
    assert (await _fails(ops.ResolveMissionException, resolve("exc-9"), metadata=ACME))[:2] == (
        "NOT_FOUND", "EXCEPTION_NOT_FOUND")
    await ops.ResolveMissionException(resolve("exc-2"), metadata=ACME, timeout=10)
    arrived = await arrive(ops, mission)  # arrival while in EXCEPTION: resume_state moves on
    assert (arrived.state, arrived.resume_state) == (M.STATE_EXCEPTION, M.STATE_ARRIVED)
    back = await ops.ResolveMissionException(resolve("exc-3"), metadata=ACME, timeout=10)
    assert back.mission.state == M.STATE_ARRIVED and back.mission.resume_state == 0
    await ops.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, exception=mission_pb2.MissionException(kind=mission_pb2.MissionException.KIND_CARGO)),
        metadata=ACME, timeout=10)
    assert (await _fails(ops.AbortMission, mission_service_pb2.AbortMissionRequest(name=mission.name),
                         metadata=ACME))[3] == ["reason"]
    aborted = await ops.AbortMission(mission_service_pb2.AbortMissionRequest(
        name=mission.name, reason="seal broken; load recovered by a crew"), metadata=ACME, timeout=10)
    assert aborted.state == M.STATE_ABORTED and aborted.state_reason.startswith("seal broken")
    assert all(e.HasField("resolve_time") for e in aborted.exceptions)
    freed = await ops.GetVehicle(mission_service_pb2.GetVehicleRequest(name=vehicle.name), timeout=10)
    assert freed.availability == vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE


async def test_check_in_hold_then_cancel(ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops)
    mission = await dispatch(tender, vehicle)
    held = await check_in(ops, mission, mission_pb2.CheckIn.POINT_DEPARTURE, mission_pb2.CheckIn.OUTCOME_HOLD)
    assert (held.mission.state, held.mission.resume_state) == (M.STATE_EXCEPTION, M.STATE_DISPATCHED)
    hold = held.mission.exceptions[-1]
    assert hold.kind == mission_pb2.MissionException.KIND_CHECK_IN_HOLD
    assert hold.contingency == mission_pb2.MissionException.CONTINGENCY_HOLD
    wrong = await _fails(ops.RecordCheckIn, mission_service_pb2.RecordCheckInRequest(
        name=mission.name, check_in=mission_pb2.CheckIn(point=mission_pb2.CheckIn.POINT_ARRIVAL,
                                                        outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)), metadata=ACME)
    assert wrong[:3] == ("FAILED_PRECONDITION", "INVALID_MISSION_STATE", {"state": "STATE_EXCEPTION"})
    cancelled = await tender.CancelMission(mission_service_pb2.CancelMissionRequest(
        name=mission.name, reason="shipper withdrew the load"), metadata=ACME, timeout=10)
    assert cancelled.state == M.STATE_CANCELLED and cancelled.exceptions[-1].HasField("resolve_time")
    assert await tender.CancelMission(mission_service_pb2.CancelMissionRequest(name=mission.name),
                                      metadata=ACME, timeout=10) == cancelled  # retry: no change
    freed = await ops.GetVehicle(mission_service_pb2.GetVehicleRequest(name=vehicle.name), timeout=10)
    assert freed.availability == vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE


async def test_illegal_transitions_are_refused(ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops)
    mission = await dispatch(tender, vehicle)
    name = mission.name
    for call, request in [
        (ops.StartMission, mission_service_pb2.StartMissionRequest(name=name, pre_trip_checks=[PASS])),
        (ops.ArriveMission, mission_service_pb2.ArriveMissionRequest(name=name, arrive_time=_ts(datetime.now(UTC)))),
        (ops.CompleteMission, mission_service_pb2.CompleteMissionRequest(name=name)),
        (ops.AbortMission, mission_service_pb2.AbortMissionRequest(name=name, reason="x")),
    ]:
        assert await _fails(call, request, metadata=ACME) == (
            "FAILED_PRECONDITION", "INVALID_MISSION_STATE", {"state": "STATE_DISPATCHED"}, [])
    mission = await drive_to_enroute(ops, mission)
    assert (await _fails(ops.CancelMission, mission_service_pb2.CancelMissionRequest(name=name),
                         metadata=ACME))[2] == {"state": "STATE_ENROUTE"}
    stale = await _fails(ops.ArriveMission, mission_service_pb2.ArriveMissionRequest(
        name=name, arrive_time=_ts(datetime.now(UTC)), etag="stale"), metadata=ACME)
    assert stale[:2] == ("ABORTED", "ETAG_MISMATCH")
    await ops.AbortMission(mission_service_pb2.AbortMissionRequest(name=name, reason="test over"), metadata=ACME,
                           timeout=10)
    for call, request in [
        (ops.RaiseMissionException, mission_service_pb2.RaiseMissionExceptionRequest(
            name=name, exception=mission_pb2.MissionException(kind=mission_pb2.MissionException.KIND_OTHER))),
        (ops.CancelMission, mission_service_pb2.CancelMissionRequest(name=name)),
    ]:
        assert (await _fails(call, request, metadata=ACME))[:3] == (
            "FAILED_PRECONDITION", "INVALID_MISSION_STATE", {"state": "STATE_ABORTED"})


# --- proof of delivery -------------------------------------------------------------------------------

async def test_proof_of_delivery_signatures(mesh: Mesh, mesh_pki: Pki, ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops)
    vehicle_id = vehicle.name.removeprefix("vehicles/")
    mission = await arrive(ops, await drive_to_enroute(ops, await dispatch(tender, vehicle)))
    truck, issued = truck_client(mesh, mesh_pki, vehicle_id)
    other_truck, other_issued = truck_client(mesh, mesh_pki, unique_vehicle_id())
    try:
        def submit(proof):
            return mission_service_pb2.SubmitProofOfDeliveryRequest(name=mission.name, proof_of_delivery=proof)

        forged = signed_proof(issued, mission, key=ec.generate_private_key(ec.SECP256R1()))
        assert (await _fails(truck.SubmitProofOfDelivery, submit(forged)))[:2] == (
            "INVALID_ARGUMENT", "POD_SIGNATURE_INVALID")
        elsewhere = signed_proof(issued, mission, mission_id=new_id())
        assert (await _fails(truck.SubmitProofOfDelivery, submit(elsewhere)))[:2] == (
            "INVALID_ARGUMENT", "POD_SIGNATURE_INVALID")
        # Another truck does not see this mission at all.
        assert (await _fails(other_truck.SubmitProofOfDelivery, submit(signed_proof(other_issued, mission))))[:2] == (
            "NOT_FOUND", "MISSION_NOT_FOUND")
        # The truck may not act for a carrier nor read missions.
        assert (await _fails(truck.GetMission, mission_service_pb2.GetMissionRequest(name=mission.name),
                             metadata=ACME))[0] == "PERMISSION_DENIED"
        # An operator relays the truck's genuine proof: verified against the certificate the truck presented.
        delivered = await ops.SubmitProofOfDelivery(submit(signed_proof(issued, mission)), metadata=ACME, timeout=10)
        assert delivered.state in (M.STATE_DELIVERED, M.STATE_COMPLETED)
    finally:
        await truck.channel.close()
        await other_truck.channel.close()


# --- tenancy -----------------------------------------------------------------------------------------

async def test_other_carriers_get_not_found(ops: Client, tender: Client, mesh: Mesh, mesh_pki: Pki) -> None:
    vehicle = await add_vehicle(ops)
    mission = await dispatch(tender, vehicle)
    name = mission.name
    for call, request in [
        (ops.GetMission, mission_service_pb2.GetMissionRequest(name=name)),
        (ops.AcknowledgeMissionDispatch, mission_service_pb2.AcknowledgeMissionDispatchRequest(
            name=name, ack_time=_ts(datetime.now(UTC)))),
        (ops.CancelMission, mission_service_pb2.CancelMissionRequest(name=name)),
        (ops.RaiseMissionException, mission_service_pb2.RaiseMissionExceptionRequest(
            name=name, exception=mission_pb2.MissionException(kind=mission_pb2.MissionException.KIND_OTHER))),
        (ops.ResolveMissionException, mission_service_pb2.ResolveMissionExceptionRequest(
            name=name, exception_id="exc-1", resolution="x")),
        (ops.RecordCheckIn, mission_service_pb2.RecordCheckInRequest(name=name, check_in=mission_pb2.CheckIn(
            point=mission_pb2.CheckIn.POINT_DEPARTURE, outcome=mission_pb2.CheckIn.OUTCOME_PROCEED))),
    ]:
        assert (await _fails(call, request, metadata=GLOBEX))[:2] == ("NOT_FOUND", "MISSION_NOT_FOUND"), call
    gateway = Client(mesh, mesh_pki.credentials("service", "gateway"))
    try:
        theirs = await gateway.ListMissions(mission_service_pb2.ListMissionsRequest(), metadata=GLOBEX, timeout=10)
        ours = await gateway.ListMissions(mission_service_pb2.ListMissionsRequest(page_size=1000), metadata=ACME,
                                          timeout=10)
    finally:
        await gateway.channel.close()
    assert name not in {m.name for m in theirs.missions}
    assert ours.missions[0].name == name or name in {m.name for m in ours.missions}
    await ops.CancelMission(mission_service_pb2.CancelMissionRequest(name=name), metadata=ACME, timeout=10)


async def test_list_filters(ops: Client, tender: Client) -> None:
    vehicle = await add_vehicle(ops, equipment=(DRY_VAN, CHASSIS))
    mission = await dispatch(tender, vehicle)
    enroute = await drive_to_enroute(ops, mission)
    found = await ops.ListMissions(mission_service_pb2.ListMissionsRequest(
        filter=f'state = ENROUTE AND tender = "{mission.tender}"'), metadata=ACME, timeout=10)
    assert [m.name for m in found.missions] == [enroute.name]
    none = await ops.ListMissions(mission_service_pb2.ListMissionsRequest(
        filter=f'state = DISPATCHED AND tender = "{mission.tender}"'), metadata=ACME, timeout=10)
    assert list(none.missions) == []
    # Paging through a filtered list: one per page, every match exactly once.
    seen, token = [], ""
    while True:
        page = await ops.ListMissions(mission_service_pb2.ListMissionsRequest(
            page_size=1, page_token=token, filter=f'vehicle = "{vehicle.name}"'), metadata=ACME, timeout=10)
        seen += [m.name for m in page.missions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [mission.name]
    assigned = await ops.ListVehicles(mission_service_pb2.ListVehiclesRequest(
        page_size=1000, filter='availability = ASSIGNED AND capabilities.equipment = CONTAINER_CHASSIS'), timeout=10)
    assert vehicle.name in {v.name for v in assigned.vehicles}
    assert all(v.availability == vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED for v in assigned.vehicles)
    for bad in ("state = PARKED", "colour = RED"):
        assert (await _fails(ops.ListMissions, mission_service_pb2.ListMissionsRequest(filter=bad),
                             metadata=ACME))[:2] == ("INVALID_ARGUMENT", "INVALID_FILTER")
    await add_vehicle(ops)  # at least two vehicles: the first page has a next page
    first = await ops.ListVehicles(mission_service_pb2.ListVehiclesRequest(page_size=1), timeout=10)
    assert first.next_page_token
    other = await _fails(ops.ListVehicles, mission_service_pb2.ListVehiclesRequest(
        page_token=first.next_page_token, filter="availability = AVAILABLE"))
    assert other[:2] == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")
    await ops.AbortMission(mission_service_pb2.AbortMissionRequest(name=mission.name, reason="test over"),
                           metadata=ACME, timeout=10)


async def test_concurrent_dispatches_never_share_a_vehicle(ops: Client, tender: Client) -> None:
    power_only = 8  # equipment no other test registers
    trucks = {(await add_vehicle(ops, equipment=(power_only,))).name for _ in range(3)}
    results = await asyncio.gather(*(dispatch(tender, None, equipment=power_only) for _ in range(12)),
                                   return_exceptions=True)
    missions = [r for r in results if isinstance(r, M)]
    refused = [_error(r)[:2] for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(missions) == 3 and {m.vehicle for m in missions} == trucks
    assert refused == [("FAILED_PRECONDITION", "NO_VEHICLE_AVAILABLE")] * 9
    # One request id sent 20 times at once: one mission, identical answers.
    spec = mission_spec(equipment=power_only)
    request = mission_service_pb2.CreateMissionRequest(mission=spec, request_id=new_id())
    for m in missions[:1]:
        await ops.CancelMission(mission_service_pb2.CancelMissionRequest(name=m.name), metadata=ACME, timeout=10)
    same = await asyncio.gather(*(tender.CreateMission(request, metadata=ACME, timeout=10) for _ in range(20)))
    assert len({m.SerializeToString(deterministic=True) for m in same}) == 1
    for m in [*missions[1:], same[0]]:
        await ops.CancelMission(mission_service_pb2.CancelMissionRequest(name=m.name), metadata=ACME, timeout=10)


async def test_passing_pre_trip_checks_resolve_a_pre_trip_failure(ops: Client, tender: Client, mesh: Mesh) -> None:
    vehicle = await add_vehicle(ops)
    mission = await dispatch(tender, vehicle)
    await ops.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
        name=mission.name, ack_time=_ts(datetime.now(UTC))), metadata=ACME, timeout=10)
    if mission.check_in_requirement.required:
        await check_in(ops, mission, mission_pb2.CheckIn.POINT_DEPARTURE)
    failure = await ops.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, exception=mission_pb2.MissionException(
            kind=mission_pb2.MissionException.KIND_PRE_TRIP_FAILURE, description="tire pressure low")),
        metadata=ACME, timeout=10)
    assert failure.exception.contingency == mission_pb2.MissionException.CONTINGENCY_HOLD
    assert (failure.mission.state, failure.mission.resume_state) == (M.STATE_EXCEPTION, M.STATE_PRE_TRIP)
    started = await ops.StartMission(mission_service_pb2.StartMissionRequest(name=mission.name, pre_trip_checks=[PASS]),
                                     metadata=ACME, timeout=10)
    assert started.state == M.STATE_ENROUTE and started.resume_state == 0
    assert started.exceptions[0].resolution == "pre-trip checks passed"
    types = await events_of(mesh, mission.name)
    assert types[-3:] == ["state_changed", "exception_resolved", "state_changed"]
    assert "exception_raised" in types
    await ops.AbortMission(mission_service_pb2.AbortMissionRequest(name=mission.name, reason="test over"),
                           metadata=ACME, timeout=10)


@pytest.fixture
async def telemetry(mesh: Mesh, mesh_pki: Pki):
    client = Client(mesh, mesh_pki.credentials("service", "telemetry"))
    yield client
    await client.channel.close()


@pytest.mark.parametrize("severity", [mission_pb2.MissionException.SEVERITY_WARNING,
                                      mission_pb2.MissionException.SEVERITY_CRITICAL])
async def test_a_start_waiting_for_the_check_in_survives_a_fault_raised_meanwhile(
        ops: Client, tender: Client, telemetry: Client, mesh: Mesh, severity: int) -> None:
    """The sandbox's race, through the service: the truck's passing pre-trip report is refused for the missing
    DEPARTURE check-in, a fault frame raises an exception before the command centre checks the truck in. The
    report is kept: a warning (CONTINUE) lets the check-in record the departure at once behind the open exception;
    a critical fault (MINIMAL_RISK_STOP) holds it (MISSION_HELD) until resolved. Either way the mission ends
    ENROUTE, not stranded in PRE_TRIP."""
    vehicle = await add_vehicle(ops)
    mission = await dispatch(tender, vehicle, origin=EL_PASO, destination=LAREDO)  # a lane no other test uses
    assert mission.check_in_requirement.required
    await telemetry.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
        name=mission.name, ack_time=_ts(datetime.now(UTC))), metadata=ACME, timeout=10)
    start = mission_service_pb2.StartMissionRequest(name=mission.name, pre_trip_checks=[PASS], frame_sequence=7)
    assert (await _fails(telemetry.StartMission, start, metadata=ACME))[:2] == (
        "FAILED_PRECONDITION", "CHECK_IN_REQUIRED")
    fault = await telemetry.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
        name=mission.name, request_id=f"{vehicle.name[9:]}:9:LIDAR", exception=mission_pb2.MissionException(
            kind=mission_pb2.MissionException.KIND_SENSOR_FAULT, severity=severity, frame_sequence=9,
            description="front-left lidar")), metadata=ACME, timeout=10)
    assert (fault.mission.state, fault.mission.resume_state) == (M.STATE_EXCEPTION, M.STATE_PRE_TRIP)
    critical = severity == mission_pb2.MissionException.SEVERITY_CRITICAL
    # The consumer's retry of the report: no longer "not allowed in state EXCEPTION" for good.
    retried = await _fails(telemetry.StartMission, start, metadata=ACME)
    if critical:
        assert retried[:3] == ("FAILED_PRECONDITION", "MISSION_HELD",
                               {"state": "STATE_EXCEPTION", "exceptions": "SENSOR_FAULT"})
    else:
        assert retried[:2] == ("FAILED_PRECONDITION", "CHECK_IN_REQUIRED")
    cleared = (await check_in(ops, mission, mission_pb2.CheckIn.POINT_DEPARTURE)).mission
    if critical:  # the minimal-risk stop keeps the truck where it is: no departure yet
        assert (cleared.state, cleared.resume_state) == (M.STATE_EXCEPTION, M.STATE_PRE_TRIP)
        assert not cleared.HasField("start_time")
    else:  # recorded behind the open warning: resolving it lands in ENROUTE
        assert (cleared.state, cleared.resume_state) == (M.STATE_EXCEPTION, M.STATE_ENROUTE)
        assert cleared.HasField("start_time") and cleared.stops[0].HasField("depart_time")
    resolved = await ops.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
        name=mission.name, exception_id=fault.exception.exception_id, resolution="lidar cleaned"),
        metadata=ACME, timeout=10)
    final = resolved.mission
    assert (final.state, final.resume_state) == (M.STATE_ENROUTE, 0)
    assert final.HasField("start_time") and list(final.pre_trip_checks) == [PASS]
    assert await arrive(ops, mission)  # the rest of the lifecycle follows
    types = await events_of(mesh, mission.name)
    departed = "check_in_recorded" if not critical else "exception_resolved"
    assert types[types.index(departed) + 1] == "state_changed"  # the departure, in the clearing transaction
    await ops.AbortMission(mission_service_pb2.AbortMissionRequest(name=mission.name, reason="test over"),
                           metadata=ACME, timeout=10)
