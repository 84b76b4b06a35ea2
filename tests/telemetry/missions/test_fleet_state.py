"""Fleet state from telemetry, through the real mesh (its own, with a short liveness timeout and flush interval):
the roster learns a truck's position, last heard and connectivity from batched reports (not a write per frame);
an idle truck going offline and coming back reaches the fleet's stream (operators; never its last mission's
carrier: vehicles are not exposed to carriers) and the fleet gauge; dispatch takes the
truck nearest by its reported position; the ETA telemetry derives is on the mission over REST."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis.asyncio

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import equipment_pb2, location_pb2
from services.runtime import Mesh, carrier_metadata, new_id
from services.runtime.tokens import mint
from tests.conftest import Pki, rich_error, running_mesh, wait_for
from tests.trucks import Truck

from ..helpers import ATLANTA, HOUSTON, Session
from .test_follow import CARRIER, _along, _dispatch, _keep_alive, _send, _signed, _start_mission

KIND = frame_pb2.FramePayload
V = vehicle_pb2.Vehicle
DALLAS = location_pb2.Location(lat=32.7767, lon=-96.797)
FLUSH_SECONDS = 1.0


@pytest.fixture(scope="module")
async def fleet_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    env = {"HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS": "0.5", "HAULMESH_TELEMETRY_LIVENESS_TIMEOUT_SECONDS": "1.5",
           "HAULMESH_TELEMETRY_FLEET_FLUSH_SECONDS": str(FLUSH_SECONDS), "HAULMESH_FLEET_GAUGE_SECONDS": "0.5",
           "HAULMESH_MISSION_ETA_MIN_CHANGE_SECONDS": "60"}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("fleet"), env=env, metrics=True) as mesh:
        yield mesh


async def _metric(mesh: Mesh, service: str, name: str, labels: str = "") -> float:
    """One sample of a service's /metrics (0 when absent)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{mesh.metrics_ports[service]}/metrics")).text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _register(mesh: Mesh, pki: Pki, truck: Truck) -> None:
    async with grpc.aio.secure_channel(mesh.address("mission"), pki.credentials("operator", "ops")) as channel:
        await mission_service_pb2_grpc.MissionServiceStub(channel).CreateVehicle(
            mission_service_pb2.CreateVehicleRequest(vehicle_id=truck.vehicle_id, vehicle=V(
                home_region="US-TX-HOU", capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))), timeout=10)


class Roster:
    """The roster and the carrier's events, as an operator and the webhooks see them."""

    def __init__(self, mesh: Mesh, pki: Pki) -> None:
        self._channel = grpc.aio.secure_channel(mesh.address("mission"), pki.credentials("operator", "ops"))
        self.missions = mission_service_pb2_grpc.MissionServiceStub(self._channel)
        assert mesh.store is not None
        self._redis = redis.asyncio.Redis.from_url(mesh.store.url)

    async def vehicle(self, vehicle_id: str) -> V:
        return await self.missions.GetVehicle(mission_service_pb2.GetVehicleRequest(name=f"vehicles/{vehicle_id}"),
                                              timeout=10)

    async def connectivity_events(self, vehicle_id: str, stream: str = "fleet") -> list[event_pb2.Event]:
        """The vehicle's connectivity events on a stream: the fleet's, or a carrier's (``stream=CARRIER``)."""
        entries = await self._redis.xrange(f"events:{{{stream}}}")
        events = [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries]
        return [e for e in events if e.type == "haulmesh.mission.v1.vehicle_connectivity_changed"
                and e.subject == f"vehicles/{vehicle_id}"]

    async def aclose(self) -> None:
        await self._channel.close()
        await self._redis.aclose()


@pytest.fixture
async def roster(fleet_mesh: Mesh, mesh_pki: Pki) -> AsyncIterator[Roster]:
    roster = Roster(fleet_mesh, mesh_pki)
    yield roster
    await roster.aclose()


async def test_an_idle_truck_online_driving_and_offline_reaches_the_roster_the_fleet_stream_and_the_gauge(
        fleet_mesh: Mesh, mesh_pki: Pki, roster: Roster) -> None:
    mesh = fleet_mesh
    truck = Truck.mint(mesh_pki.ca, f"FS-{uuid.uuid4().hex[:8].upper()}")
    # A mission for the carrier, cancelled before departure: the truck is idle, and was that carrier's.
    mission_name = await _dispatch(mesh, mesh_pki, truck)
    await roster.missions.CancelMission(mission_service_pb2.CancelMissionRequest(name=mission_name, reason="test"),
                                        metadata=carrier_metadata(CARRIER), timeout=10)
    assert not (await wait_for(lambda: _idle(roster, truck.vehicle_id), timeout_seconds=10)).current_mission

    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
    session = Session(channel)
    session.send(truck.hello())
    alive = asyncio.ensure_future(_keep_alive(session))
    try:
        online = await wait_for(lambda: _connectivity(roster, truck.vehicle_id, V.CONNECTIVITY_ONLINE),
                                timeout_seconds=10)
        assert online.HasField("last_seen_time") and not online.HasField("last_location")
        [came] = await wait_for(lambda: roster.connectivity_events(truck.vehicle_id), timeout_seconds=10)
        assert came.mission_vehicle_connectivity_changed.connectivity == V.CONNECTIVITY_ONLINE
        assert came.carrier == ""  # the fleet's stream: an idle vehicle is no carrier's business
        # The etag and update time are the operator's: an observation changes neither.
        assert online.etag == (await _idle(roster, truck.vehicle_id)).etag

        # 200 position frames in 2 s, Houston → Dallas (the cancelled mission's assignment is not acknowledged):
        # a handful of batched reports, not 200 writes.
        reports_before = await _metric(mesh, "telemetry", "haulmesh_telemetry_fleet_reports_total",
                                       '{outcome="sent"}')
        began = time.monotonic()
        points = _along(HOUSTON, DALLAS, 200)
        for start in range(0, 200, 20):
            _send(session, *(_signed(truck, 1 + i, KIND.KIND_POSITION, at=p, speed_kph=95)
                             for i, p in enumerate(points[start:start + 20], start)))
            await asyncio.sleep(0.2)
        await wait_for(lambda: session.acked_through == 200 or None, timeout_seconds=15)
        at_dallas = await wait_for(lambda: _located(roster, truck.vehicle_id, DALLAS), timeout_seconds=10)
        reports = await _metric(mesh, "telemetry", "haulmesh_telemetry_fleet_reports_total",
                                '{outcome="sent"}') - reports_before
        elapsed = time.monotonic() - began
        # One per flush interval (heartbeats keep the truck's entry fresh), however many frames: never per frame.
        assert 1 <= reports <= elapsed / FLUSH_SECONDS + 2 and reports < 200 / 5, (reports, elapsed)
        assert at_dallas.connectivity == V.CONNECTIVITY_ONLINE

        # Silent: offline on the roster, an event on the fleet's stream, the gauge counts it.
        alive.cancel()
        await session.aclose()
        await channel.close()
        gone = await wait_for(lambda: _connectivity(roster, truck.vehicle_id, V.CONNECTIVITY_OFFLINE),
                              timeout_seconds=15)
        assert gone.last_location == at_dallas.last_location
        events = await wait_for(lambda: _at_least(roster.connectivity_events(truck.vehicle_id), 2), timeout_seconds=10)
        left = events[1].mission_vehicle_connectivity_changed
        assert (left.connectivity, left.previous_connectivity) == (V.CONNECTIVITY_OFFLINE, V.CONNECTIVITY_ONLINE)
        assert abs(left.last_location.lat - DALLAS.lat) < 1e-6
        await wait_for(lambda: _gauge_at_least(mesh, "offline", "available", 1), timeout_seconds=10)
        # Its last mission's carrier heard none of it (nor where the idle truck is).
        assert await roster.connectivity_events(truck.vehicle_id, stream=CARRIER) == []
    finally:
        alive.cancel()
        await session.aclose()
        await channel.close()


async def test_dispatch_takes_the_truck_nearest_by_its_reported_position(fleet_mesh: Mesh, mesh_pki: Pki,
                                                                         roster: Roster) -> None:
    mesh = fleet_mesh
    # Both based at Houston; by home terminal the tie breaks on the id (AA... first). ZZ reports from Atlanta.
    tag = uuid.uuid4().hex[:6].upper()
    near_by_id, far_by_id = Truck.mint(mesh_pki.ca, f"AA-{tag}"), Truck.mint(mesh_pki.ca, f"ZZ-{tag}")
    for truck in (near_by_id, far_by_id):
        await _register(mesh, mesh_pki, truck)
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), far_by_id.credentials())
    session = Session(channel)
    session.send(far_by_id.hello())
    _send(session, _signed(far_by_id, 1, KIND.KIND_POSITION, at=ATLANTA, speed_kph=0))
    try:
        await wait_for(lambda: _located(roster, far_by_id.vehicle_id, ATLANTA), timeout_seconds=10)
        async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("service", "tender")) as ch:
            mission = await mission_service_pb2_grpc.MissionServiceStub(ch).CreateMission(
                mission_service_pb2.CreateMissionRequest(request_id=new_id(), mission=mission_pb2.Mission(
                    tender=f"tenders/{new_id()}", quote=f"quotes/{new_id()}",
                    load=mission_pb2.LoadDetails(tms_load_id="NEAREST", equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT,
                                                 weight_lb=20_000),
                    stops=[mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=ATLANTA),
                           mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=HOUSTON)])),
                metadata=carrier_metadata(CARRIER), timeout=10)
        assert mission.vehicle == f"vehicles/{far_by_id.vehicle_id}"
    finally:
        await session.aclose()
        await channel.close()


async def test_the_eta_telemetry_derives_is_on_the_mission_over_rest(fleet_mesh: Mesh, mesh_pki: Pki,
                                                                     roster: Roster) -> None:
    mesh = fleet_mesh
    truck = Truck.mint(mesh_pki.ca, f"ET-{uuid.uuid4().hex[:8].upper()}")
    mission_name = await _dispatch(mesh, mesh_pki, truck)
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
    session = Session(channel)
    session.send(truck.hello())
    alive = asyncio.ensure_future(_keep_alive(session))
    token = mint(carrier=CARRIER, scopes="mission:read", state_dir=mesh.state_dir)
    try:
        _, _, enroute = await _start_mission(session, truck, roster.missions, mission_name)
        waypoints = _along(enroute.planned_route[0], enroute.planned_route[1], 5)
        _send(session, *(_signed(truck, 1 + i, KIND.KIND_POSITION, at=w) for i, w in enumerate(waypoints, 1)))

        async def eta_over_rest() -> dict | None:
            async with httpx.AsyncClient(timeout=10) as http:
                reply = await http.get(f"http://127.0.0.1:{mesh.http_port}/api/v1/{mission_name}",
                                       headers={"Authorization": f"Bearer {token}"})
            body = reply.json()
            return body if reply.status_code == 200 and body.get("estimatedArriveTime") else None

        body = await wait_for(eta_over_rest, timeout_seconds=15)
        assert body["stops"][1]["estimatedArriveTime"] == body["estimatedArriveTime"]
        mission = await roster.missions.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name),
                                                   metadata=carrier_metadata(CARRIER), timeout=10)
        assert mission.estimated_arrive_time.ToSeconds() > mission.start_time.ToSeconds() + 3600  # hours to Atlanta
        assert mission.etag == enroute.etag  # an observation, not an edit
    finally:
        alive.cancel()
        await session.aclose()
        await channel.close()


async def _idle(roster: Roster, vehicle_id: str) -> V | None:
    vehicle = await roster.vehicle(vehicle_id)
    return vehicle if vehicle.availability == V.AVAILABILITY_AVAILABLE else None


async def _connectivity(roster: Roster, vehicle_id: str, connectivity: int) -> V | None:
    vehicle = await roster.vehicle(vehicle_id)
    return vehicle if vehicle.connectivity == connectivity else None


async def _located(roster: Roster, vehicle_id: str, where: location_pb2.Location) -> V | None:
    vehicle = await roster.vehicle(vehicle_id)
    at = vehicle.last_location
    return vehicle if abs(at.lat - where.lat) < 1e-6 and abs(at.lon - where.lon) < 1e-6 else None


async def _at_least(found, count: int):
    items = await found
    return items if len(items) >= count else None


async def _gauge_at_least(mesh: Mesh, connectivity: str, availability: str, count: int) -> bool:
    value = await _metric(mesh, "mission", "haulmesh_fleet_vehicles",
                          f'{{availability="{availability}",connectivity="{connectivity}"}}')
    return value >= count


async def test_report_fleet_state_is_telemetry_only_checked_and_idempotent(fleet_mesh: Mesh, mesh_pki: Pki,
                                                                           roster: Roster) -> None:
    mesh = fleet_mesh
    truck = Truck.mint(mesh_pki.ca, f"RF-{uuid.uuid4().hex[:8].upper()}")
    await _register(mesh, mesh_pki, truck)
    entry = mission_service_pb2.VehicleObservation(vehicle=f"vehicles/{truck.vehicle_id}",
                                                   connectivity=V.CONNECTIVITY_ONLINE, last_location=DALLAS)
    entry.last_seen_time.GetCurrentTime()
    report = mission_service_pb2.ReportFleetStateRequest(vehicles=[entry, mission_service_pb2.VehicleObservation(
        vehicle="vehicles/NOT-ON-ROSTER", connectivity=V.CONNECTIVITY_OFFLINE, last_seen_time=entry.last_seen_time)])
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await roster.missions.ReportFleetState(report, timeout=10)  # an operator: not the telemetry service
    assert rich_error(denied.value).reason == "METHOD_NOT_ALLOWED"
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("service", "telemetry")) as ch:
        telemetry = mission_service_pb2_grpc.MissionServiceStub(ch)
        first = await telemetry.ReportFleetState(report, timeout=10)
        assert (first.vehicles_changed, list(first.unknown_vehicles)) == (1, ["vehicles/NOT-ON-ROSTER"])
        again = await telemetry.ReportFleetState(report, timeout=10)  # a retry: nothing newer, nothing changes
        assert again.vehicles_changed == 0
        # One bad entry (no fix, and missing fields) is rejected on its own; the other entry applies.
        later = mission_service_pb2.VehicleObservation(vehicle=f"vehicles/{truck.vehicle_id}",
                                                       connectivity=V.CONNECTIVITY_ONLINE, last_location=HOUSTON)
        later.last_seen_time.GetCurrentTime()
        bad = mission_service_pb2.ReportFleetStateRequest(vehicles=[
            mission_service_pb2.VehicleObservation(vehicle="vehicles/NOT-ON-ROSTER",
                                                   last_location=location_pb2.Location(lat=0, lon=200)),
            later])
        mixed = await telemetry.ReportFleetState(bad, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # only a report out of bounds is refused whole
            await telemetry.ReportFleetState(mission_service_pb2.ReportFleetStateRequest(), timeout=10)
    assert rich_error(refused.value).code == "INVALID_ARGUMENT"
    assert mixed.vehicles_changed == 1
    [rejected] = mixed.rejected_vehicles
    assert (rejected.index, rejected.vehicle) == (0, "vehicles/NOT-ON-ROSTER")
    assert [v.field for v in rejected.field_violations] == [
        "vehicles[0].connectivity", "vehicles[0].last_seen_time", "vehicles[0].last_location.lon"]
    assert (await _located(roster, truck.vehicle_id, HOUSTON)).connectivity == V.CONNECTIVITY_ONLINE
