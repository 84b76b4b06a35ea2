"""The sandbox's departure race through the real mesh (telemetry's actions consumer, the mission service, Valkey,
mTLS): the truck's passing pre-trip HEALTH frame arrives before the command centre's DEPARTURE check-in, and a
degraded-lidar frame raises a SENSOR_FAULT before the check-in comes.

Before: StartMission was refused (CHECK_IN_REQUIRED), retried by the consumer, refused for good once the fault had
put the mission in EXCEPTION ("start is not allowed in state EXCEPTION"), and the mission stayed PRE_TRIP while its
truck drove. Now the consumer does not retry a report waiting for a human; the mission service keeps the passing
checks and records the departure with the check-in.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import redis.asyncio

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import health_check_pb2, location_pb2, time_window_pb2
from services.runtime import Mesh, carrier_metadata
from services.telemetry.domain import actions
from tests.conftest import Pki, wait_for

from ..helpers import Session, Truck, dispatch_to

CARRIER = "race-co"
KIND = frame_pb2.FramePayload
M = mission_pb2.Mission
#: A lane no other test uses (Oklahoma City → Albuquerque): the lane's first missions need check-ins.
OKC = location_pb2.Location(lat=35.4676, lon=-97.5164, address="Oklahoma City, OK")
ABQ = location_pb2.Location(lat=35.0844, lon=-106.6504, address="Albuquerque, NM")
CHECKS = [health_check_pb2.HealthCheckResult(check=c, outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS,
                                             blocking=True) for c in ("lidar", "camera", "radar", "brakes")]


def test_a_report_waiting_for_a_human_is_not_retried() -> None:
    """The consumer retries only a report that overtook the acknowledgement; a report waiting for a check-in or a
    hold's resolution is kept by the mission service (and retrying it ended in the dead-letter stream)."""
    health = "telemetry_health_reported"
    assert actions.retry_later(health, "INVALID_MISSION_STATE", "STATE_DISPATCHED")
    assert not actions.retry_later(health, "CHECK_IN_REQUIRED", "")
    assert not actions.retry_later(health, "MISSION_HELD", "STATE_EXCEPTION")
    assert not actions.retry_later(health, "INVALID_MISSION_STATE", "STATE_EXCEPTION")
    assert not actions.retry_later("telemetry_fault_reported", "INVALID_MISSION_STATE", "STATE_DISPATCHED")


def _signed(truck: Truck, sequence: int, kind: int, *, speed_kph: float = 0.0, **fields: object
            ) -> frame_pb2.SignedFrame:
    payload = frame_pb2.FramePayload(vehicle_id=truck.vehicle_id, sequence=sequence, boot_id=truck.boot_id, kind=kind,
                                     vehicle_state="pre_trip", **fields)  # type: ignore[arg-type]
    payload.device_time.GetCurrentTime()
    payload.position.lat, payload.position.lon, payload.position.speed_kph = OKC.lat, OKC.lon, speed_kph
    raw = payload.SerializeToString(deterministic=True)
    return frame_pb2.SignedFrame(sequence=sequence, payload=raw, signature=truck.sign(raw), key_id=truck.key_id)


def _send(session: Session, *frames: frame_pb2.SignedFrame) -> None:
    session.send(stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=list(frames))))


async def _keep_alive(session: Session) -> None:
    while True:
        beat = stream_pb2.Heartbeat()
        beat.device_time.GetCurrentTime()
        session.send(stream_pb2.StreamTelemetryRequest(heartbeat=beat))
        await asyncio.sleep(0.5)


async def test_a_fault_before_the_check_in_does_not_strand_the_departure(mesh: Mesh, mesh_pki: Pki) -> None:
    truck = Truck.mint(mesh_pki.ca, f"RC-{uuid.uuid4().hex[:8].upper()}")
    now = datetime.now(UTC)
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(now)
    window.end_time.FromDatetime(now + timedelta(hours=2))
    mission = await dispatch_to(mesh, mesh_pki, truck, CARRIER, [
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=OKC, planned_window=window),
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=ABQ)])
    assert mission.check_in_requirement.required
    tenant = carrier_metadata(CARRIER)
    assert mesh.store is not None
    store = redis.asyncio.Redis.from_url(mesh.store.url)
    ops_channel = grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops"))
    ops = mission_service_pb2_grpc.MissionServiceStub(ops_channel)
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
    session = Session(channel)
    alive: asyncio.Future[None] | None = None

    async def mission_where(check) -> M | None:
        current = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=tenant,
                                       timeout=10)
        return current if check(current) else None

    try:
        session.send(truck.hello())
        alive = asyncio.ensure_future(_keep_alive(session))
        [assign] = await wait_for(lambda: session.of("command"), timeout_seconds=15)
        ack = stream_pb2.CommandAck(command_id=assign.command_id, outcome=stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        ack.device_time.GetCurrentTime()
        session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
        await wait_for(lambda: mission_where(lambda m: m.state == M.STATE_PRE_TRIP), timeout_seconds=15)

        # The truck passes its pre-trip checks and departs: no check-in yet, so the mission keeps the report.
        _send(session, _signed(truck, 1, KIND.KIND_HEALTH, health_checks=CHECKS))
        kept = await wait_for(lambda: mission_where(lambda m: list(m.pre_trip_checks) == CHECKS), timeout_seconds=15)
        assert kept.state == M.STATE_PRE_TRIP and not kept.HasField("start_time")
        # On its way, its lidar degrades (a warning: the truck drives on under CONTINUE) before anyone checks it in.
        _send(session, _signed(truck, 2, KIND.KIND_POSITION, speed_kph=80,
                               sensors=frame_pb2.SensorStatus(lidar_status="degraded")))
        faulted = await wait_for(lambda: mission_where(lambda m: m.state == M.STATE_EXCEPTION), timeout_seconds=15)
        assert faulted.resume_state == M.STATE_PRE_TRIP
        fault = faulted.exceptions[-1]
        assert (fault.kind, fault.contingency) == (mission_pb2.MissionException.KIND_SENSOR_FAULT,
                                                   mission_pb2.MissionException.CONTINGENCY_CONTINUE)

        # The command centre checks the truck in: the departure is recorded at once, behind the open fault.
        checked = await ops.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
            name=mission.name, check_in=mission_pb2.CheckIn(point=mission_pb2.CheckIn.POINT_DEPARTURE,
                                                            outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)),
            metadata=tenant, timeout=10)
        assert (checked.mission.state, checked.mission.resume_state) == (M.STATE_EXCEPTION, M.STATE_ENROUTE)
        assert checked.mission.HasField("start_time")
        resolved = await ops.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
            name=mission.name, exception_id=fault.exception_id, resolution="lidar cleaned at the next stop"),
            metadata=tenant, timeout=10)
        assert resolved.mission.state == M.STATE_ENROUTE

        # Nothing of this mission went to the dead-letter stream (retry_later: the report is not retried).
        entries = await store.xrange("dlq:{telemetry-actions}")
        dead = [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries if b"event" in fields]
        assert not [e for e in dead if e.subject == mission.name]
    finally:
        if alive is not None:
            alive.cancel()
        await session.aclose()
        await channel.close()
        await ops_channel.close()
        await store.aclose()
