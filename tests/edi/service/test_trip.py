"""A partner's load driven by a real truck through the real mesh, in EDI: Prairie's 204 → 997 + 990 (accepted) →
the mission dispatched to the test's truck, which streams signed frames over mTLS: acknowledgement and pre-trip at
the pickup (X3), departure (AF), positions as it drives (X6, at the partner's one-minute cadence: one, however
many ETA updates), the delivery's geofence (X1), a lidar fault (SD with its reason), the signed proof of delivery
(D1), billing's invoice (a 210 whose totals are the invoice's and whose references are the 204's). Every 214 and
the 210 read back clean with the domain's schemas; the carrier's events replayed send nothing again; the partner's
997 for a 214 marks it accepted."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2, health_check_pb2, location_pb2
from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import (
    EXCEPTION_REASONS,
    SCHEMA_210,
    SCHEMA_214,
    Decision,
    Delimiters,
    FunctionalGroup,
    Interchange,
    Segment,
    TransactionSet,
    from_dddmmss,
    from_implied,
    read_990,
    validate,
    write,
)
from services.edi.folders import PartnerFolders
from services.edi.store import EdiStore
from services.edi.usecases import EdiDesk, MissionClient
from services.mission.domain import key_id_of
from services.runtime import carrier_metadata, connect_async, metering, new_id

from ...conftest import Pki, running_mesh, wait_for
from ...telemetry.helpers import Session
from ...telemetry.missions.test_follow import _keep_alive
from ...trucks import Truck
from .samples import load_tender_204, nothing
from .test_flow import EXAMPLE, drop, new_files, only_set, outbox

CARRIER = "prairie-freight"
TENANT = carrier_metadata(CARRIER)
KIND = frame_pb2.FramePayload
State = mission_pb2.Mission
CHECKS = [health_check_pb2.HealthCheckResult(check=c, outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS,
                                             blocking=True) for c in ("lidar", "camera", "radar", "brakes")]


@pytest.fixture(scope="module")
async def trip_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    """A mesh of its own (one truck on the roster: the dispatch takes it), Prairie wanting delays (SD) and positions
    every minute, the roster told of positions every 0.3 s."""
    state = tmp_path_factory.mktemp("edi-trip")
    partners = EXAMPLE.read_text().replace('events = ["X3", "AF", "X6", "X1", "D1"]',
                                           'events = ["X3", "AF", "X6", "X1", "D1", "SD"]')
    partners = partners.replace("cadence_minutes = 30", "cadence_minutes = 1")
    assert '"SD"]' in partners and "cadence_minutes = 1\n" in partners
    (state / "partners.toml").write_text(partners)
    env = {"HAULMESH_EDI_PARTNERS_FILE": str(state / "partners.toml"), "HAULMESH_EDI_ROOT": str(state / "edi"),
           "HAULMESH_EDI_ARCHIVE_URL": str(state / "edi-archive"), "HAULMESH_EDI_POLL_SECONDS": "0.1",
           "HAULMESH_TELEMETRY_FLEET_FLUSH_SECONDS": "0.3", "HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS": "0.5"}
    async with running_mesh(mesh_pki, state, env=env) as mesh:
        yield mesh, state


class Driver:
    """The test's truck on its mission: signs frames of the mission (each kept, for the proof's log hash)."""

    def __init__(self, truck: Truck, mission_id: str, session: Session) -> None:
        self.truck, self.mission_id, self.session = truck, mission_id, session
        self.payloads: list[bytes] = []

    def send(self, kind: int, at: location_pb2.Location, *, speed_kph: float = 88.0, **fields: object) -> int:
        sequence = len(self.payloads) + 1
        payload = frame_pb2.FramePayload(vehicle_id=self.truck.vehicle_id, sequence=sequence,
                                         boot_id=self.truck.boot_id, kind=kind, vehicle_state="enroute",
                                         mission_id=self.mission_id, **fields)  # type: ignore[arg-type]
        payload.device_time.GetCurrentTime()
        payload.position.lat, payload.position.lon, payload.position.speed_kph = at.lat, at.lon, speed_kph
        raw = payload.SerializeToString(deterministic=True)
        self.payloads.append(raw)
        frame = frame_pb2.SignedFrame(sequence=sequence, payload=raw, signature=self.truck.sign(raw),
                                      key_id=self.truck.key_id)
        self.session.send(stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=[frame])))
        return sequence

    def proof(self, mission: mission_pb2.Mission) -> mission_pb2.ProofOfDelivery:
        """The truck's signed proof of delivery over every frame it sent of the mission."""
        manifest = mission_pb2.DeliveryManifest(
            mission_id=self.mission_id, vehicle_id=self.truck.vehicle_id, tms_load_id=mission.load.tms_load_id,
            location=mission.stops[-1].location, telemetry_log_sha256=metering.telemetry_log_sha256(self.payloads),
            telemetry_first_sequence=1, telemetry_last_sequence=len(self.payloads))
        manifest.deliver_time.GetCurrentTime()
        raw = manifest.SerializeToString()
        return mission_pb2.ProofOfDelivery(manifest=raw, key_id=key_id_of(self.truck.issued.certificate_pem),
                                           manifest_signature=self.truck.issued.private_key.sign(
                                               raw, ec.ECDSA(hashes.SHA256())))


def _along(a: location_pb2.Location, b: location_pb2.Location, count: int) -> list[location_pb2.Location]:
    return [location_pb2.Location(lat=a.lat + (b.lat - a.lat) * i / count, lon=a.lon + (b.lon - a.lon) * i / count)
            for i in range(1, count)]


def statuses(files: dict[str, bytes]) -> list[tuple[str, str, TransactionSet]]:
    """(AT7-01, AT7-02, the 214) of every status in ``files``, in the order sent; each 214 schema-clean."""
    out = []
    for name in sorted(files, key=lambda n: int(n.split("_")[1].split(".")[0])):
        _, _, transaction = only_set(files[name])
        assert validate(SCHEMA_214, transaction.segments, Delimiters()) == (), name
        out += [(s.get(1), s.get(2), transaction) for s in transaction.segments if s.id == "AT7"]
    return out


def sent_of(state: Path, kind: str) -> dict[str, bytes]:
    out = state / "edi" / "prairie" / "out"
    return {n: (out / n).read_bytes() for n in outbox(state) if n.startswith(f"{kind}_")}


async def test_a_partners_load_driven_by_a_truck_gets_its_214s_and_its_210(trip_mesh, mesh_pki: Pki) -> None:
    mesh, state = trip_mesh
    truck = Truck.mint(mesh_pki.ca, f"EDI-{uuid.uuid4().hex[:8].upper()}")
    store_client = connect_async(mesh.store.url)
    events_client = redis.asyncio.Redis.from_url(mesh.store.url)
    edi = EdiStore(store_client)
    ops = grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops"))
    tender_ch = grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway"))
    telemetry = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials())
    missions = mission_service_pb2_grpc.MissionServiceStub(ops)
    alive: asyncio.Future | None = None
    try:
        await missions.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
            vehicle_id=truck.vehicle_id, vehicle=vehicle_pb2.Vehicle(
                display_name="EDI trip truck", home_region="US-TX-DAL",
                availability=vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE,
                capabilities=vehicle_pb2.VehicleCapabilities(equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT],
                                                             max_cargo_weight_lb=45_000, night_operations=True))),
            timeout=10)
        # 1. Prairie tenders the load: 997, and the 990 accepting it; the tender is dispatched to the truck.
        shipment = f"PF-{new_id()[-8:].upper()}"
        before = outbox(state)
        drop(state, load_tender_204(shipment, isa13="000000301"), f"{shipment}.x12")
        got = await new_files(state, before, kinds=("997", "990"))
        assert read_990(only_set(got["990"])[2]).decision is Decision.ACCEPT
        tender_name = await edi.tender_for("prairie", shipment)
        tenders = tender_service_pb2_grpc.TenderServiceStub(tender_ch)

        async def dispatched() -> str:
            tender = await tenders.GetTender(tender_service_pb2.GetTenderRequest(name=tender_name), metadata=TENANT,
                                             timeout=10)
            return tender.mission
        mission_name = await wait_for(dispatched, timeout_seconds=15)
        mission_id = mission_name.removeprefix("missions/")

        async def mission_in(*states: int) -> mission_pb2.Mission | None:
            current = await missions.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name),
                                                metadata=TENANT, timeout=10)
            return current if current.state in states else None

        # 2. The truck connects, accepts its assignment, passes pre-trip at the pickup: ENROUTE.
        session = Session(telemetry)
        session.send(truck.hello())
        alive = asyncio.ensure_future(_keep_alive(session))
        driver = Driver(truck, mission_id, session)
        [assign] = await wait_for(lambda: session.of("command"), timeout_seconds=15)
        ack = stream_pb2.CommandAck(command_id=assign.command_id, outcome=stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        ack.device_time.GetCurrentTime()
        session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
        pre_trip = await wait_for(lambda: mission_in(State.STATE_PRE_TRIP), timeout_seconds=15)
        if pre_trip.check_in_requirement.required:
            await missions.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
                name=mission_name, check_in=mission_pb2.CheckIn(point=mission_pb2.CheckIn.POINT_DEPARTURE,
                                                                outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)),
                metadata=TENANT, timeout=10)
        pickup, delivery = pre_trip.stops[0].location, pre_trip.stops[-1].location
        driver.send(KIND.KIND_HEALTH, pickup, speed_kph=0, health_checks=CHECKS)
        await wait_for(lambda: mission_in(State.STATE_ENROUTE), timeout_seconds=15)

        # 3. Driving to Houston: positions in bursts, the roster learns them, ETA updates follow.
        for point in _along(pickup, delivery, 10):
            driver.send(KIND.KIND_POSITION, point)
            await asyncio.sleep(0.4)

        async def eta_updates() -> list[event_pb2.Event] | None:
            entries = await events_client.xrange(f"events:{{{CARRIER}}}")
            found = [e for e in (event_pb2.Event.FromString(f[b"event"]) for _, f in entries)
                     if e.type == "haulmesh.telemetry.v1.eta_updated" and e.subject == mission_name]
            return found if len(found) >= 2 else None
        await wait_for(eta_updates, timeout_seconds=15)
        await wait_for(lambda: [s for s in statuses(sent_of(state, "214")) if s[0] == "X6"], timeout_seconds=15)

        # 4. The delivery's geofence, then a lidar fault (the mission stops: an exception, resolved by an operator).
        driver.send(KIND.KIND_POSITION, delivery, speed_kph=15)
        await wait_for(lambda: mission_in(State.STATE_ARRIVED), timeout_seconds=15)
        driver.send(KIND.KIND_POSITION, delivery, speed_kph=0, sensors=frame_pb2.SensorStatus(lidar_status="fault"))
        faulted = await wait_for(lambda: mission_in(State.STATE_EXCEPTION), timeout_seconds=15)
        await missions.ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
            name=mission_name, exception_id=faulted.exceptions[-1].exception_id, resolution="lidar cleaned"),
            metadata=TENANT, timeout=10)
        arrived = await wait_for(lambda: mission_in(State.STATE_ARRIVED), timeout_seconds=15)
        await wait_for(lambda: session.acked_through >= len(driver.payloads) or None, timeout_seconds=15)

        # 5. The truck's signed proof of delivery: DELIVERED, then billing's invoice.
        truck_channel = grpc.aio.secure_channel(mesh.address("mission"), truck.credentials())
        async with truck_channel:
            await mission_service_pb2_grpc.MissionServiceStub(truck_channel).SubmitProofOfDelivery(
                mission_service_pb2.SubmitProofOfDeliveryRequest(name=mission_name,
                                                                 proof_of_delivery=driver.proof(arrived)),
                timeout=10)
        invoices = await wait_for(lambda: sent_of(state, "210") or None, timeout_seconds=30)
        said = await wait_for(lambda: (lambda s: s if "D1" in [c for c, _, _ in s] else None)(
            statuses(sent_of(state, "214"))), timeout_seconds=15)

        # The 214s: each milestone once, in the trip's order; the fault a delay with its reason; one X6.
        codes = [c for c, _, _ in said]
        print(f"214 statuses: {codes}")
        assert [c for c in codes if c != "X6"] == ["X3", "AF", "X1", "SD", "D1"], codes
        assert codes.count("X6") == 1 and codes.index("AF") < codes.index("X6") < codes.index("X1"), codes
        assert [r for c, r, _ in said if c == "SD"] == [EXCEPTION_REASONS["SENSOR_FAULT"]]
        for _, _, transaction in said:
            b10 = transaction.segments[0]
            assert (b10.get(1), b10.get(2), b10.get(3)) == (mission_id, shipment, "HMSH")
        # At a stop MS1 is the 204's city and state; en route the truck's latitude and longitude.
        places = {(m.get(1), m.get(2)) for _, _, t in said for m in t.segments if m.id == "MS1" and m.get(1)}
        assert places == {("Dallas", "TX"), ("Houston", "TX")}, places
        (x6,) = [t for c, _, t in said if c == "X6"]
        ms1 = next(s for s in x6.segments if s.id == "MS1")
        lat, lon = from_dddmmss(ms1.get(5), ms1.get(7)), from_dddmmss(ms1.get(4), ms1.get(6))
        assert delivery.lat - 0.01 <= lat <= pickup.lat + 0.01 and pickup.lon - 0.01 <= lon <= delivery.lon + 0.01

        # The 210: the invoice's number and total, the lines summing to it, the 204's references echoed.
        entries = await events_client.xrange(f"events:{{{CARRIER}}}")
        carried = [event_pb2.Event.FromString(f[b"event"]) for _, f in entries]
        (issued,) = [e.billing_invoice_issued.invoice for e in carried
                     if e.type == "haulmesh.billing.v1.invoice_issued" and e.billing_invoice_issued.invoice.tender
                     == tender_name]
        ((_, invoice_data),) = invoices.items()
        transaction = only_set(invoice_data)[2]
        assert validate(SCHEMA_210, transaction.segments, Delimiters()) == ()
        segments = {s.id: s for s in transaction.segments}
        total = Decimal(issued.total.amount_minor) / 100
        assert (segments["B3"].get(2), segments["B3"].get(3)) == (issued.invoice_number, shipment)
        assert from_implied(segments["B3"].get(7)) == from_implied(segments["L3"].get(5)) == total
        assert sum(from_implied(s.get(4)) for s in transaction.segments if s.id == "L1") == total
        assert len([s for s in transaction.segments if s.id == "L1"]) == len(issued.lines)
        assert ("BM", f"BOL-{shipment}") in {(s.get(1), s.get(2)) for s in transaction.segments if s.id == "N9"}

        # Replayed (the carrier's whole stream added again, as a dead-letter replay would): nothing is sent again.
        sent_before = set(outbox(state))
        for _, fields in entries:
            await events_client.xadd(f"events:{{{CARRIER}}}", fields)
        await events_client.publish("events:doorbell", f"events:{{{CARRIER}}} replay")
        await asyncio.sleep(2)
        assert set(outbox(state)) == sent_before

        # The partner's 997 for the X3's 214 marks it accepted.
        records = {d["file"]: d for d in await edi.documents("prairie", limit=200) if d["shipment"] == shipment}
        first = min((n for n in records if n.startswith("214_")), key=lambda n: int(n.split("_")[1].split(".")[0]))
        record = records[first]
        assert record["state"] == "awaiting_997" and record["tender"] == tender_name
        group = FunctionalGroup("FA", "PRAIRIEFRT", "HAULMESH", "20261204", "1200", "302", "004010", (TransactionSet(
            "997", "0001", (Segment.of("AK1", "QM", record["gs06"]), Segment.of("AK2", "214", record["st02"]),
                            Segment.of("AK5", "A"), Segment.of("AK9", "A", "1", "1", "1"))),))
        drop(state, write(Interchange("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "261204", "1200", "000000302",
                                      groups=(group,), delimiters=Delimiters(line_end="\n"))), "997-214.x12")

        async def accepted() -> bool:
            return (await edi.document("prairie", record["id"]))["state"] == "accepted"
        await wait_for(accepted, timeout_seconds=15)

        # A mission first heard of by a telemetry event (its dispatch not seen: the service started later) is read
        # from the mission service as service edi, and found to be the shipment: what was said is not said again.
        await store_client.delete(f"edi:{{prairie}}:mission:{mission_id}")
        async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("service", "edi")) as ch:
            config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(state / "partners.toml")})
            desk = EdiDesk(partners=config.partners, store=edi, archive=RawArchive(str(state / "edi-archive")),
                           folders=PartnerFolders(state / "edi"), tenders=None, lanes=config.lanes, durable=nothing,
                           duplicate_window_seconds=60,
                           missions=MissionClient(lambda: mission_service_pb2_grpc.MissionServiceStub(ch)))
            seen = [e for e in carried if e.type == "haulmesh.telemetry.v1.geofence_entered"
                    and e.subject == mission_name]
            assert seen and await desk.follow(seen[-1]) == []
        assert await edi.followed("prairie", mission_id) == shipment
    finally:
        if alive is not None:
            alive.cancel()
        await telemetry.close()
        await ops.close()
        await tender_ch.close()
        await store_client.aclose()
        await events_client.aclose()
