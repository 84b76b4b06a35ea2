"""A mission driven by its truck's telemetry, through the real mesh: assignment → acknowledgement → pre-trip
health → enroute with ETA events → a connectivity outage (lost → exception, restored → resolved) → the
destination geofence → ARRIVED, and a sensor fault → exception → a stop command back on the truck's stream; a
human takeover → hand_over → the truck's confirmation recorded → resolved → hand_back → confirmed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import redis.asyncio
from google.protobuf import timestamp_pb2

from haulmesh.events.v1 import event_pb2
from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import geofence_pb2, health_check_pb2, location_pb2, time_window_pb2
from services.runtime import Mesh, carrier_metadata, new_id
from tests.conftest import Pki, running_mesh, wait_for

from ..helpers import ATLANTA, HOUSTON, Session, TelemetryProcess, Truck, dispatch_to

CARRIER = "follow-co"
KIND = frame_pb2.FramePayload
State = mission_pb2.Mission


@pytest.fixture(scope="module")
async def follow_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A mesh of its own with a short liveness timeout (1.5 s), so an outage is seen within the test."""
    env = {"HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS": "0.5", "HAULMESH_TELEMETRY_LIVENESS_TIMEOUT_SECONDS": "1.5"}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("follow"), env=env) as mesh:
        yield mesh


class Events:
    """The carrier's event stream as the webhooks see it (read from the store the mesh started)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client

    async def all(self) -> list[event_pb2.Event]:
        entries = await self._client.xrange(f"events:{{{CARRIER}}}")
        return [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries]

    async def of(self, event_type: str, subject: str) -> list[event_pb2.Event]:
        return [e for e in await self.all() if e.type == event_type and e.subject == subject]


def _window(start: datetime, hours: float) -> time_window_pb2.TimeWindow:
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(start + timedelta(hours=hours))
    return window


async def _dispatch(mesh: Mesh, pki: Pki, truck: Truck) -> str:
    now = datetime.now(UTC)
    destination = geofence_pb2.Geofence(circle=geofence_pb2.Geofence.Circle(center=ATLANTA, radius_meters=800))
    stops = [mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=HOUSTON, planned_window=_window(now, 2)),
             mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=ATLANTA, geofence=destination,
                              planned_window=_window(now + timedelta(hours=12), 4))]
    return (await dispatch_to(mesh, pki, truck, CARRIER, stops)).name


def _signed(truck: Truck, sequence: int, kind: int, *, at: location_pb2.Location, speed_kph: float = 88.0,
            **fields: object) -> frame_pb2.SignedFrame:
    payload = frame_pb2.FramePayload(vehicle_id=truck.vehicle_id, sequence=sequence, boot_id=truck.boot_id, kind=kind,
                                     vehicle_state="enroute", **fields)  # type: ignore[arg-type]
    payload.device_time.GetCurrentTime()
    payload.position.lat, payload.position.lon, payload.position.speed_kph = at.lat, at.lon, speed_kph
    raw = payload.SerializeToString(deterministic=True)
    return frame_pb2.SignedFrame(sequence=sequence, payload=raw, signature=truck.sign(raw), key_id=truck.key_id)


def _along(a: location_pb2.Location, b: location_pb2.Location, count: int) -> list[location_pb2.Location]:
    """Points on the straight leg from a to b (the planned route's first segment), a excluded."""
    return [location_pb2.Location(lat=a.lat + (b.lat - a.lat) * i / count, lon=a.lon + (b.lon - a.lon) * i / count)
            for i in range(1, count + 1)]


CHECKS = [health_check_pb2.HealthCheckResult(check=c, outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS,
                                             blocking=True) for c in ("lidar", "camera", "radar", "brakes")]


async def _in(mission: Awaitable[mission_pb2.Mission], *states: int) -> mission_pb2.Mission | None:
    current = await mission
    return current if current.state in states else None


async def _start_mission(session: Session, truck: Truck, missions: mission_service_pb2_grpc.MissionServiceStub,
                         mission_name: str) -> tuple[stream_pb2.CommandAck, mission_pb2.Mission, mission_pb2.Mission]:
    """The truck accepts its assignment (→ PRE_TRIP), the operator clears departure if the lane needs it, and the
    truck's passing HEALTH frame (sequence 1, at Houston) starts the mission: (ack, PRE_TRIP view, ENROUTE view)."""
    tenant = carrier_metadata(CARRIER)

    async def mission_now() -> mission_pb2.Mission:
        return await missions.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name), metadata=tenant,
                                         timeout=10)

    [assign] = await wait_for(lambda: session.of("command"), timeout_seconds=15)
    assert assign.command_id == f"assign-{mission_name.removeprefix('missions/')}"
    ack = stream_pb2.CommandAck(command_id=assign.command_id, outcome=stream_pb2.CommandAck.OUTCOME_ACCEPTED)
    ack.device_time.GetCurrentTime()
    session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
    pre_trip = await wait_for(lambda: _in(mission_now(), State.STATE_PRE_TRIP), timeout_seconds=15)
    if pre_trip.check_in_requirement.required:
        await missions.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
            name=mission_name, check_in=mission_pb2.CheckIn(point=mission_pb2.CheckIn.POINT_DEPARTURE,
                                                            outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)),
            metadata=tenant, timeout=10)
    _send(session, _signed(truck, 1, KIND.KIND_HEALTH, at=HOUSTON, speed_kph=0, health_checks=CHECKS))
    enroute = await wait_for(lambda: _in(mission_now(), State.STATE_ENROUTE), timeout_seconds=15)
    return ack, pre_trip, enroute


async def _keep_alive(session: Session) -> None:
    """Heartbeats as a connected truck sends them (the test mesh reports silence after 1.5 s)."""
    while True:
        beat = stream_pb2.Heartbeat()
        beat.device_time.GetCurrentTime()
        session.send(stream_pb2.StreamTelemetryRequest(heartbeat=beat))
        await asyncio.sleep(0.3)


def _send(session: Session, *frames: frame_pb2.SignedFrame) -> None:
    session.send(stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=list(frames))))


@dataclass
class Run:
    """A truck on its dispatched mission, its stream open and kept alive, as a test drives it."""

    truck: Truck
    mission_name: str
    session: Session
    #: The mission service as the fleet's operator calls it (``tenant`` metadata).
    missions: mission_service_pb2_grpc.MissionServiceStub
    #: The mesh's store (events, the actions consumer's progress).
    client: redis.asyncio.Redis
    tenant: tuple[tuple[str, str], ...] = carrier_metadata(CARRIER)

    async def mission(self) -> mission_pb2.Mission:
        return await self.missions.GetMission(mission_service_pb2.GetMissionRequest(name=self.mission_name),
                                              metadata=self.tenant, timeout=10)


@asynccontextmanager
async def _on_the_road(mesh: Mesh, pki: Pki, prefix: str) -> AsyncIterator[Run]:
    """A new truck (``<prefix>-…``) dispatched, connected with heartbeats and started: ENROUTE from Houston."""
    truck = Truck.mint(pki.ca, f"{prefix}-{uuid.uuid4().hex[:8].upper()}")
    mission_name = await _dispatch(mesh, pki, truck)
    assert mesh.store is not None
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
    session = Session(channel)
    async with grpc.aio.secure_channel(mesh.address("mission"), pki.credentials("operator", "ops")) as ops_ch:
        run = Run(truck, mission_name, session, mission_service_pb2_grpc.MissionServiceStub(ops_ch), client)
        session.send(truck.hello())
        alive = asyncio.ensure_future(_keep_alive(session))
        try:
            yield run
        finally:
            alive.cancel()
            await session.aclose()
            await channel.close()
            await client.aclose()


MissionIn = Callable[..., Awaitable[mission_pb2.Mission | None]]


def _mission_in(missions: mission_service_pb2_grpc.MissionServiceStub, mission_name: str) -> MissionIn:
    """``await mission_in(*states)``: the mission as the operator sees it if it is in one of ``states``."""

    async def mission_in(*states: int) -> mission_pb2.Mission | None:
        return await _in(missions.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name),
                                             metadata=carrier_metadata(CARRIER), timeout=10), *states)

    return mission_in


async def _reported_lost(events: Events, mission_in: MissionIn, mission_name: str) -> tev.ConnectivityLost:
    """The silent truck's ``connectivity_lost``, once the mission is in EXCEPTION CONNECTIVITY_LOSS."""
    lost = await wait_for(lambda: events.of("haulmesh.telemetry.v1.connectivity_lost", mission_name),
                          timeout_seconds=20)
    in_exception = await wait_for(lambda: mission_in(State.STATE_EXCEPTION), timeout_seconds=15)
    assert [e.kind for e in in_exception.exceptions] == [mission_pb2.MissionException.KIND_CONNECTIVITY_LOSS]
    return lost[0].telemetry_connectivity_lost


async def _reconnected(address: str, truck: Truck, events: Events, mission_in: MissionIn, mission_name: str,
                       last_sequence: int) -> tuple[grpc.aio.Channel, Session, asyncio.Future[None]]:
    """The truck back on ``address`` holding ``last_sequence``: restored once, the mission ENROUTE again with
    its CONNECTIVITY_LOSS resolved, one lost event in all. Returns the new channel, session and heartbeats."""
    channel = grpc.aio.secure_channel(address, truck.credentials())
    session = Session(channel)
    session.send(truck.hello(last_sequence=last_sequence))
    alive = asyncio.ensure_future(_keep_alive(session))
    restored = await wait_for(lambda: events.of("haulmesh.telemetry.v1.connectivity_restored", mission_name),
                              timeout_seconds=15)
    assert restored[0].telemetry_connectivity_restored.vehicle_last_sequence == last_sequence
    back = await wait_for(lambda: mission_in(State.STATE_ENROUTE), timeout_seconds=15)
    assert back.exceptions[0].HasField("resolve_time")
    assert len(await events.of("haulmesh.telemetry.v1.connectivity_lost", mission_name)) == 1
    return channel, session, alive


async def test_a_mission_follows_its_trucks_telemetry(follow_mesh: Mesh, mesh_pki: Pki) -> None:
    mesh = follow_mesh
    truck = Truck.mint(mesh_pki.ca, f"FL-{uuid.uuid4().hex[:8].upper()}")
    mission_name = await _dispatch(mesh, mesh_pki, truck)
    assert mesh.store is not None
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    events = Events(client)
    counts: dict[str, int] = {}
    ops_ch = grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops"))
    missions = mission_service_pb2_grpc.MissionServiceStub(ops_ch)
    mission_in = _mission_in(missions, mission_name)

    try:
        # 1. The assignment arrives on the stream; the truck's acceptance acknowledges the dispatch.
        channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
        session = Session(channel)
        session.send(truck.hello())
        alive = asyncio.ensure_future(_keep_alive(session))
        # 2. ... then a passing pre-trip HEALTH frame starts the mission.
        ack, pre_trip, enroute = await _start_mission(session, truck, missions, mission_name)
        assert pre_trip.dispatch_ack_time.ToSeconds() == ack.device_time.ToSeconds()  # the truck's time
        assert await events.of("haulmesh.telemetry.v1.command_acknowledged", mission_name)
        assert list(enroute.pre_trip_checks) == CHECKS

        # 3. Driving: position frames give ETA updates for the TMS.
        assert len(enroute.planned_route) == 14  # the seed lane's known route (services/mission/routes.json)
        waypoints = _along(enroute.planned_route[0], enroute.planned_route[1], 5)
        _send(session, *(_signed(truck, 1 + i, KIND.KIND_POSITION, at=w) for i, w in enumerate(waypoints, 1)))
        etas = await wait_for(lambda: events.of("haulmesh.telemetry.v1.eta_updated", mission_name), timeout_seconds=10)
        assert etas[0].telemetry_eta_updated.remaining_miles > 500 and 0 < etas[0].telemetry_eta_updated.confidence <= 1
        counts["eta_updated"] = len(etas)
        await wait_for(lambda: session.acked_through == 6 or None, timeout_seconds=10)

        # 4. The truck goes silent: connectivity lost → a CONNECTIVITY_LOSS exception; back → resolved.
        alive.cancel()
        await session.aclose()
        await channel.close()
        assert (await _reported_lost(events, mission_in, mission_name)).last_sequence == 6
        channel, session, alive = await _reconnected(mesh.address("telemetry"), truck, events, mission_in,
                                                     mission_name, last_sequence=6)

        # 5. The destination geofence: GeofenceEntered for the TMS, and the mission ARRIVED.
        _send(session, _signed(truck, 7, KIND.KIND_POSITION, at=ATLANTA, speed_kph=20))
        async def fences_entered() -> list[int] | None:
            entered = await events.of("haulmesh.telemetry.v1.geofence_entered", mission_name)
            stops = [e.telemetry_geofence_entered.context.stop_index for e in entered]
            return stops if 1 in stops else None

        # The pickup's fence was entered by the pre-trip frame at Houston, the destination's now.
        assert await wait_for(fences_entered, timeout_seconds=10) == [0, 1]
        arrived = await wait_for(lambda: mission_in(State.STATE_ARRIVED), timeout_seconds=15)
        assert arrived.stops[1].HasField("arrive_time")

        # 6. A critical lidar fault: a SENSOR_FAULT exception whose minimal-risk stop reaches the truck.
        _send(session, _signed(truck, 8, KIND.KIND_POSITION, at=ATLANTA, speed_kph=0,
                               sensors=frame_pb2.SensorStatus(lidar_status="fault")))
        faulted = await wait_for(lambda: mission_in(State.STATE_EXCEPTION), timeout_seconds=15)
        fault = faulted.exceptions[-1]
        assert fault.kind == mission_pb2.MissionException.KIND_SENSOR_FAULT
        assert fault.contingency == mission_pb2.MissionException.CONTINGENCY_MINIMAL_RISK_STOP
        stops = await wait_for(lambda: [c for c in session.of("command") if c.WhichOneof("payload") == "stop"],
                               timeout_seconds=15)
        assert stops[0].command_id == f"stop-{mission_name.removeprefix('missions/')}-{fault.exception_id}"
        assert stops[0].stop.mode == stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP
        assert stops[0].stop.exception_id == fault.exception_id
        counts["events"] = len(await events.all())
        alive.cancel()
        await session.aclose()
        await channel.close()
    finally:
        await ops_ch.close()
        await client.aclose()
    print(f"mission followed its truck: {counts}")


async def test_reroute_and_cancel_reach_the_truck_queued_while_it_is_offline(follow_mesh: Mesh, mesh_pki: Pki) -> None:
    mesh = follow_mesh
    truck = Truck.mint(mesh_pki.ca, f"RR-{uuid.uuid4().hex[:8].upper()}")
    mission_name = await _dispatch(mesh, mesh_pki, truck)
    tenant = carrier_metadata(CARRIER)
    detour = [location_pb2.Location(lat=30.5, lon=-93.9), location_pb2.Location(lat=32.3, lon=-90.2)]
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops")) as ops_ch:
        missions = mission_service_pb2_grpc.MissionServiceStub(ops_ch)
        # The truck is offline: an operator reroutes the mission around a closure, then cancels it.
        raised = await missions.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
            name=mission_name, request_id=new_id(), exception=mission_pb2.MissionException(
                kind=mission_pb2.MissionException.KIND_ROAD_CLOSURE, description="I-10 closed at Lake Charles",
                reroute_waypoints=detour)), metadata=tenant, timeout=10)
        assert raised.exception.contingency == mission_pb2.MissionException.CONTINGENCY_REROUTE
        await missions.CancelMission(mission_service_pb2.CancelMissionRequest(name=mission_name, reason="load pulled"),
                                     metadata=tenant, timeout=10)
    mission_id = mission_name.removeprefix("missions/")
    expected = [f"assign-{mission_id}", f"reroute-{mission_id}-{raised.exception.exception_id}", f"cancel-{mission_id}"]

    async def connect_and_collect() -> tuple[grpc.aio.Channel, Session, list[stream_pb2.Command]]:
        channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
        session = Session(channel)
        session.send(truck.hello())
        commands = await wait_for(lambda: (lambda got: got if len(got) >= 3 else None)(session.of("command")),
                                  timeout_seconds=15)
        return channel, session, commands

    # On connect the truck gets all three, in issue order; unacknowledged, they come again on the next stream.
    channel, session, commands = await connect_and_collect()
    assert [c.command_id for c in commands] == expected
    assert list(commands[1].reroute.waypoints) == detour and commands[1].reroute.exception_id
    assert commands[2].cancel_assignment.mission_id == mission_id
    await session.aclose()
    await channel.close()
    channel, session, commands = await connect_and_collect()
    assert [c.command_id for c in commands] == expected
    for command in commands:
        ack = stream_pb2.CommandAck(command_id=command.command_id, outcome=stream_pb2.CommandAck.OUTCOME_COMPLETED)
        ack.device_time.GetCurrentTime()
        session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
    assert mesh.store is not None
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    try:
        async def all_acknowledged() -> list[event_pb2.Event] | None:
            got = await Events(client).of("haulmesh.telemetry.v1.command_acknowledged", mission_name)
            return got if len(got) == 3 else None

        acknowledged = await wait_for(all_acknowledged, timeout_seconds=15)
    finally:
        await client.aclose()
    assert sorted(e.telemetry_command_acknowledged.ack.command_id for e in acknowledged) == sorted(expected)
    await session.aclose()
    await channel.close()
    # Acknowledged commands are not sent again.
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
    session = Session(channel)
    session.send(truck.hello())
    await wait_for(lambda: session.of("welcome"), timeout_seconds=15)
    await asyncio.sleep(1)
    assert session.of("command") == []
    await session.aclose()
    await channel.close()
    print(f"commands delivered while offline, resent until acked, then never again: {expected}")


async def test_leaving_the_planned_route_raises_a_route_deviation(follow_mesh: Mesh, mesh_pki: Pki) -> None:
    async with _on_the_road(follow_mesh, mesh_pki, "RD") as run:
        _, _, mission = await _start_mission(run.session, run.truck, run.missions, run.mission_name)
        route = mission.planned_route
        # Two frames on the route, then three 20 km north of it (the corridor is 1 km wide).
        on_route = _along(route[0], route[1], 2)
        off_route = [location_pb2.Location(lat=p.lat + 0.18, lon=p.lon) for p in _along(route[1], route[2], 3)]
        _send(run.session, *(_signed(run.truck, 2 + i, KIND.KIND_POSITION, at=p)
                             for i, p in enumerate([*on_route, *off_route])))
        deviated = await wait_for(lambda: Events(run.client).of("haulmesh.telemetry.v1.route_deviated",
                                                                run.mission_name), timeout_seconds=10)
        data = deviated[0].telemetry_route_deviated
        assert data.frames == 3 and data.frame_sequence == 6 and data.distance_meters > 15_000
        mission = await wait_for(lambda: _in(run.mission(), State.STATE_EXCEPTION), timeout_seconds=15)
        assert [e.kind for e in mission.exceptions] == [mission_pb2.MissionException.KIND_ROUTE_DEVIATION]
    print(f"route deviation after 3 off-route frames, {data.distance_meters:.0f} m off the plan")


async def test_a_truck_whose_replica_died_is_still_reported_lost(follow_mesh: Mesh, mesh_pki: Pki,
                                                                 tmp_path: Path) -> None:
    # A second telemetry replica on the mesh's store holds the truck's stream, and dies (SIGKILL) while the
    # truck is out of coverage: no process watches the truck any more, yet the surviving replica must report
    # it lost, from the store's heard index; the truck's return to the survivor then restores it, once.
    mesh = follow_mesh
    assert mesh.store is not None
    truck = Truck.mint(mesh_pki.ca, f"FL-{uuid.uuid4().hex[:8].upper()}")
    mission_name = await _dispatch(mesh, mesh_pki, truck)
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    events = Events(client)
    ops_ch = grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops"))
    missions = mission_service_pb2_grpc.MissionServiceStub(ops_ch)
    replica = TelemetryProcess(mesh_pki.directory, tmp_path, mesh.store.url,
                               HAULMESH_MISSION_ADDR=mesh.address("mission"),
                               HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS="0.5",
                               HAULMESH_TELEMETRY_LIVENESS_TIMEOUT_SECONDS="1.5")
    mission_in = _mission_in(missions, mission_name)

    try:
        await replica.start(mesh_pki.credentials("operator", "probe"))
        channel = grpc.aio.secure_channel(replica.address, truck.credentials())
        session = Session(channel)
        session.send(truck.hello())
        alive = asyncio.ensure_future(_keep_alive(session))
        await _start_mission(session, truck, missions, mission_name)  # frame 1: pre-trip HEALTH at Houston
        await wait_for(lambda: session.acked_through == 1 or None, timeout_seconds=10)
        await replica.kill()
        alive.cancel()
        await session.aclose()
        await channel.close()

        detail = await _reported_lost(events, mission_in, mission_name)
        assert detail.last_sequence == 1
        assert (round(detail.last_location.lat, 3), round(detail.last_location.lon, 3)) == (
            round(HOUSTON.lat, 3), round(HOUSTON.lon, 3))
        channel, session, alive = await _reconnected(mesh.address("telemetry"), truck, events, mission_in,
                                                     mission_name, last_sequence=1)
        alive.cancel()
        await session.aclose()
        await channel.close()
    finally:
        await replica.stop()
        await ops_ch.close()
        await client.aclose()
    print(f"replica pid {replica.pid} killed under the truck: lost reported by the survivor "
          f"(last sequence {detail.last_sequence}), restored once on the truck's return")


async def _handled_by_actions(client: redis.asyncio.Redis, mission: str, *, frame_sequence: int,
                              reported: str = "road_closure_reported") -> bool:
    """Whether the consumer group ``telemetry-actions`` has handled (acknowledged) the ``reported`` event (a truck's
    device-event report) of that frame."""
    entries = await client.xrange(f"events:{{{CARRIER}}}")
    ids = [entry_id for entry_id, fields in entries
           if (e := event_pb2.Event.FromString(fields[b"event"])).type == f"haulmesh.telemetry.v1.{reported}"
           and e.subject == mission and getattr(e, f"telemetry_{reported}").frame_sequence == frame_sequence]
    if not ids:
        return False
    groups = {g["name"].decode(): g for g in await client.xinfo_groups(f"events:{{{CARRIER}}}")}
    group = groups.get("telemetry-actions")
    delivered = tuple(int(part) for part in group["last-delivered-id"].decode().split("-")) if group else (0, 0)
    pending = await client.xpending_range(f"events:{{{CARRIER}}}", "telemetry-actions", min=ids[0], max=ids[0],
                                          count=1)
    return delivered >= tuple(int(part) for part in ids[0].decode().split("-")) and not pending


async def test_a_trucks_road_closure_report_brings_it_the_detour_round_it(follow_mesh: Mesh, mesh_pki: Pki) -> None:
    # On I-59 between Slidell and Hattiesburg (the planned route's leg), the truck holds and reports the road closed.
    on_i59 = location_pb2.Location(lat=30.8, lon=-89.55)
    async with _on_the_road(follow_mesh, mesh_pki, "RC") as run:
        await _start_mission(run.session, run.truck, run.missions, run.mission_name)
        closed = frame_pb2.DeviceEvent(code="road_closure_ahead", detail="I-59 closed ahead; holding for a reroute")
        _send(run.session, _signed(run.truck, 2, KIND.KIND_EVENT, at=on_i59, speed_kph=0, event=closed))
        await wait_for(lambda: _in(run.mission(), State.STATE_EXCEPTION), timeout_seconds=15)
        # It says it again while it holds: still one closure, one detour.
        _send(run.session, _signed(run.truck, 3, KIND.KIND_EVENT, at=on_i59, speed_kph=0, event=closed))
        await wait_for(lambda: _handled_by_actions(run.client, run.mission_name, frame_sequence=3), timeout_seconds=15)
        [closure] = (await run.mission()).exceptions
        reroutes = await wait_for(
            lambda: [c for c in run.session.of("command") if c.WhichOneof("payload") == "reroute"], timeout_seconds=15)
        mission_name = run.mission_name
    assert (closure.kind, closure.contingency) == (mission_pb2.MissionException.KIND_ROAD_CLOSURE,
                                                   mission_pb2.MissionException.CONTINGENCY_REROUTE)
    assert closure.raised_by.endswith("/service/telemetry") and closure.frame_sequence == 2
    assert (closure.location.lat, closure.location.lon) == (on_i59.lat, on_i59.lon)
    assert "I-59 closed ahead" in closure.description and "avoiding I-59 Slidell, LA - Hattiesburg, MS" in \
        closure.description
    [reroute] = reroutes
    assert reroute.command_id == f"reroute-{mission_name.removeprefix('missions/')}-{closure.exception_id}"
    assert list(reroute.reroute.waypoints) == list(closure.reroute_waypoints)
    first, last = reroute.reroute.waypoints[0], reroute.reroute.waypoints[-1]
    assert (first.lat, first.lon) == (30.2752, -89.7812)  # back to Slidell, then I-10 east
    assert (last.lat, last.lon) == (ATLANTA.lat, ATLANTA.lon)
    print(f"closure reported at {on_i59.lat},{on_i59.lon}: {closure.description}")


def _answer(session: Session, command: stream_pb2.Command, outcome: int, detail: str = "") -> stream_pb2.CommandAck:
    ack = stream_pb2.CommandAck(command_id=command.command_id, outcome=outcome, detail=detail)  # type: ignore[arg-type]
    ack.device_time.GetCurrentTime()
    session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
    return ack


Confirm = mission_service_pb2.AcknowledgeMissionTakeoverRequest


async def _command(session: Session, payload: str) -> stream_pb2.Command:
    [command] = await wait_for(lambda: [c for c in session.of("command") if c.WhichOneof("payload") == payload],
                               timeout_seconds=15)
    return command


async def test_a_takeover_hands_the_truck_to_a_human_and_back_with_its_confirmations_recorded(
        follow_mesh: Mesh, mesh_pki: Pki) -> None:
    async with _on_the_road(follow_mesh, mesh_pki, "TO") as run:
        session, truck, missions, mission_name, tenant = run.session, run.truck, run.missions, run.mission_name, \
            run.tenant
        mission_id = mission_name.removeprefix("missions/")

        async def takeover_now(field: str) -> mission_pb2.Mission | None:
            mission = await run.mission()
            return mission if mission.exceptions[0].takeover.HasField(field) else None

        await _start_mission(session, truck, missions, mission_name)
        # 1. An operator hands the mission to a remote human: the truck is sent hand_over at once.
        raised = await missions.RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
            name=mission_name, request_id=new_id(), exception=mission_pb2.MissionException(
                kind=mission_pb2.MissionException.KIND_CARGO, description="reefer at 9 °C, rising",
                contingency=mission_pb2.MissionException.CONTINGENCY_HUMAN_TAKEOVER)), metadata=tenant, timeout=10)
        exc_id = raised.exception.exception_id
        assert raised.exception.takeover.HasField("request_time")
        hand_over = await _command(session, "hand_over")
        assert hand_over.command_id == f"handover-{mission_id}-{exc_id}"
        assert (hand_over.hand_over.mission_id, hand_over.hand_over.exception_id) == (mission_id, exc_id)
        assert hand_over.hand_over.reason == "CARGO: reefer at 9 °C, rising"
        # 2. The human has control: the truck's ACCEPTED is recorded at its time (said twice, recorded once);
        # the mission stays in EXCEPTION.
        in_control = _answer(session, hand_over, stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        _answer(session, hand_over, stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        _send(session, _signed(truck, 2, KIND.KIND_POSITION, at=HOUSTON, speed_kph=8))  # it keeps streaming
        controlled = await wait_for(lambda: takeover_now("control_time"), timeout_seconds=15)
        takeover = controlled.exceptions[0].takeover
        assert takeover.control_time == in_control.device_time and not takeover.HasField("hand_back_request_time")
        assert (controlled.state, controlled.resume_state) == (State.STATE_EXCEPTION, State.STATE_ENROUTE)
        await wait_for(lambda: session.acked_through == 2 or None, timeout_seconds=10)
        # A confirmation relayed again changes nothing; one of a hand-back nobody asked for is refused.
        relay = Confirm(name=mission_name, exception_id=exc_id, step=Confirm.STEP_HAND_OVER,
                        ack_time=timestamp_pb2.Timestamp(seconds=1))
        again = await missions.AcknowledgeMissionTakeover(relay, metadata=tenant, timeout=10)
        assert again.etag == controlled.etag and again.exceptions[0].takeover == takeover
        relay.step = Confirm.STEP_HAND_BACK
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await missions.AcknowledgeMissionTakeover(relay, metadata=tenant, timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # 3. Resolved: the mission is back in its resume state and the truck is sent hand_back.
        resolved = await missions.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
            name=mission_name, exception_id=exc_id, resolution="reefer reset by the remote operator"),
            metadata=tenant, timeout=10)
        assert resolved.mission.state == State.STATE_ENROUTE
        assert resolved.exception.takeover.HasField("hand_back_request_time")
        hand_back = await _command(session, "hand_back")
        assert hand_back.command_id == f"handback-{mission_id}-{exc_id}"
        assert (hand_back.hand_back.exception_id, hand_back.hand_back.reason) == (
            exc_id, "reefer reset by the remote operator")
        # 4. ACCEPTED says it is handing back (nothing recorded); a refusal is recorded for the command centre
        # (the console alerts on it); COMPLETED says the autonomy stack drives again.
        _answer(session, hand_back, stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        _answer(session, hand_back, stream_pb2.CommandAck.OUTCOME_REJECTED, "minimal-risk stop engaged")
        refused_back = await wait_for(lambda: takeover_now("hand_back_refusal"), timeout_seconds=15)
        assert refused_back.exceptions[0].takeover.hand_back_refusal.detail == \
            "REJECTED: minimal-risk stop engaged"
        assert not refused_back.exceptions[0].takeover.HasField("hand_back_time")
        autonomous = _answer(session, hand_back, stream_pb2.CommandAck.OUTCOME_COMPLETED)
        back = await wait_for(lambda: takeover_now("hand_back_time"), timeout_seconds=15)
    takeover = back.exceptions[0].takeover
    assert takeover.hand_back_time == autonomous.device_time
    assert takeover.control_time == in_control.device_time  # untouched by the relayed repeat
    assert takeover.request_time.ToNanoseconds() <= takeover.control_time.ToNanoseconds() <= \
        takeover.hand_back_request_time.ToNanoseconds() <= takeover.hand_back_time.ToNanoseconds()
    assert back.state == State.STATE_ENROUTE and back.resume_state == 0
    ms = {f: getattr(takeover, f).ToMilliseconds() for f in ("control_time", "hand_back_request_time",
                                                             "hand_back_time")}
    print(f"takeover {exc_id}: the human had control for {ms['hand_back_request_time'] - ms['control_time']} ms; "
          f"autonomy back {ms['hand_back_time'] - ms['hand_back_request_time']} ms after the hand-back was asked")


async def test_a_trucks_law_enforcement_stop_hands_it_to_a_human(follow_mesh: Mesh, mesh_pki: Pki) -> None:
    on_i10 = location_pb2.Location(lat=30.2, lon=-93.2)
    async with _on_the_road(follow_mesh, mesh_pki, "LE") as run:
        session, truck = run.session, run.truck
        await _start_mission(session, truck, run.missions, run.mission_name)
        for sequence in (2, 3):  # it says it twice while it pulls over: one exception
            _send(session, _signed(truck, sequence, KIND.KIND_EVENT, at=on_i10, speed_kph=0,
                                   event=frame_pb2.DeviceEvent(code="law_enforcement_stop",
                                                               detail="patrol car signalling to pull over")))
        await wait_for(lambda: _handled_by_actions(run.client, run.mission_name, frame_sequence=3,
                                                   reported="law_enforcement_stop_reported"), timeout_seconds=15)
        hand_over = await _command(session, "hand_over")
        in_control = _answer(session, hand_over, stream_pb2.CommandAck.OUTCOME_ACCEPTED)

        async def controlled() -> mission_pb2.Mission | None:
            mission = await run.mission()
            return mission if mission.exceptions and mission.exceptions[0].takeover.HasField("control_time") \
                else None

        mission = await wait_for(controlled, timeout_seconds=15)
    [stop] = mission.exceptions
    assert (stop.kind, stop.contingency) == (mission_pb2.MissionException.KIND_LAW_ENFORCEMENT_STOP,
                                             mission_pb2.MissionException.CONTINGENCY_HUMAN_TAKEOVER)
    assert stop.raised_by.endswith("/service/telemetry") and stop.frame_sequence == 2
    assert (stop.location.lat, stop.location.lon) == (on_i10.lat, on_i10.lon)
    assert stop.description == "the truck reports a law-enforcement stop: patrol car signalling to pull over"
    assert hand_over.hand_over.exception_id == stop.exception_id
    assert stop.takeover.control_time == in_control.device_time and mission.state == State.STATE_EXCEPTION
