"""The EDI service in a real mesh, folder mode: 204 files dropped in a partner's ``in/`` become a 997, a tender
(created over mTLS as service ``edi`` for the partner's carrier) and a 990 in ``out/``; the same interchange again
is processed once (TA1 025); a malformed 204 is rejected by its 997 and kept in the raw archive; a cancel cancels.

The partners file is the repository's example (services/edi/partners.example.toml): partner ``prairie`` wants TA1s
and accepts automatically within 5 % of the 204's rate (the samples offer $9,999.00, above any price of the lane).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import grpc
import pytest

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2
from services.edi.domain import (
    Decision,
    Delimiters,
    Interchange,
    acknowledgement_group,
    read,
    read_990,
    read_997,
    write,
)
from services.edi.store import EdiStore
from services.runtime import Mesh, carrier_metadata, connect_async, new_id

from ...conftest import Pki, running_mesh, wait_for
from .samples import load_tender_204

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"
CARRIER = carrier_metadata("prairie-freight")
State = tender_pb2.Tender.State


@pytest.fixture(scope="module")
async def edi_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("edi-mesh")
    env = {"HAULMESH_EDI_PARTNERS_FILE": str(EXAMPLE), "HAULMESH_EDI_ROOT": str(state / "edi"),
           "HAULMESH_EDI_ARCHIVE_URL": str(state / "edi-archive"), "HAULMESH_EDI_POLL_SECONDS": "0.1"}
    async with running_mesh(mesh_pki, state, env=env) as mesh:
        assert "edi" in mesh.children  # started because a partners file is configured
        async with grpc.aio.secure_channel(mesh.address("mission"),
                                           mesh_pki.credentials("operator", "dispatch")) as channel:
            stub = mission_service_pb2_grpc.MissionServiceStub(channel)
            for n in range(1, 11):  # each accepted tender takes one
                vehicle = vehicle_pb2.Vehicle(
                    display_name=f"EDI test truck {n}", home_region="US-TX-DAL",
                    availability=vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE,
                    capabilities=vehicle_pb2.VehicleCapabilities(
                        equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                        night_operations=True))
                await stub.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
                    vehicle_id=f"EDI-TRK-{n:03d}", vehicle=vehicle), timeout=10)
        yield mesh, state


@pytest.fixture
async def tenders(edi_mesh, mesh_pki: Pki):
    mesh, _ = edi_mesh
    async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
        yield tender_service_pb2_grpc.TenderServiceStub(ch)


@pytest.fixture
async def edi_store(edi_mesh):
    mesh, _ = edi_mesh
    client = connect_async(mesh.store.url)
    yield EdiStore(client)
    await client.aclose()


def drop(state: Path, data: bytes, name: str, partner: str = "prairie") -> None:
    """Upload as a partner does: to a ``.part`` name, then renamed."""
    inbox = state / "edi" / partner / "in"
    (inbox / f"{name}.part").write_bytes(data)
    os.replace(inbox / f"{name}.part", inbox / name)


def outbox(state: Path, partner: str = "prairie") -> set[str]:
    return {p.name for p in (state / "edi" / partner / "out").iterdir()}


async def new_files(state: Path, before: set[str], *, kinds: tuple[str, ...], partner: str = "prairie") -> \
        dict[str, bytes]:
    """Wait until ``out/`` holds a new file of each kind (``997``, ``990``, ``TA1``); kind -> bytes."""
    out = state / "edi" / partner / "out"

    def found():
        # A document appears whole under its name (written as a hidden .tmp, then renamed): skip the hidden ones.
        fresh = sorted(n for n in outbox(state, partner) - before if not n.startswith("."))
        got = {k: (out / n).read_bytes() for k in kinds for n in fresh if n.startswith(f"{k}_")}
        return got if len(got) == len(kinds) else None

    return await wait_for(found, timeout_seconds=30)


async def tendered(state: Path, shipment: str, isa13: str) -> bytes:
    """Prairie tenders ``shipment`` (an original 204); the 990 it gets back."""
    before = outbox(state)
    drop(state, load_tender_204(shipment, isa13=isa13), f"{shipment}-original.x12")
    return (await new_files(state, before, kinds=("990",)))["990"]


async def get(tenders, name: str, carrier: str = "prairie-freight") -> tender_pb2.Tender:
    return await tenders.GetTender(tender_service_pb2.GetTenderRequest(name=name),
                                   metadata=carrier_metadata(carrier), timeout=10)


def only_set(data: bytes):
    (reading,) = read(data)
    (group,) = reading.groups
    (set_reading,) = group.sets
    return reading, group, set_reading.transaction


async def test_a_204_becomes_a_997_a_tender_and_a_990(edi_mesh, tenders, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    before = outbox(state)
    drop(state, load_tender_204(shipment, isa13="000000101"), f"{shipment}.x12")
    got = await new_files(state, before, kinds=("TA1", "997", "990"))

    ta1 = read(got["TA1"])[0].interchange.ta1s[0]
    assert (ta1.control, ta1.ack, ta1.note) == ("000000101", "A", "000")
    _, group, ack = only_set(got["997"])
    assert group.group.functional_id == "FA"
    ack997 = read_997(ack)
    assert (ack997.group_control, ack997.status, ack997.accepted) == ("101", "A", 1)
    _, group, response = only_set(got["990"])
    answer = read_990(response)
    assert answer.shipment_id == shipment and answer.scac == "HMSH"
    assert answer.decision is Decision.ACCEPT, answer

    name = await edi_store.tender_for("prairie", shipment)
    tender = await get(tenders, name)
    assert tender.tms_load_id == shipment and tender.state == State.STATE_ACCEPTED
    assert tender.carrier == "carriers/prairie-freight"
    # What the 204 carries beyond the lane: its stops (placed by their ZIP codes), references, rate, commodity.
    assert [(s.type, s.address.postal_code, s.facility_code.code) for s in tender.stops] == [
        (tender_pb2.Stop.TYPE_PICKUP, "75212", "PF-DAL-01"), (tender_pb2.Stop.TYPE_DELIVERY, "77002", "PF-HOU-02")]
    assert tender.stops[0].location_source == tender_pb2.Stop.LOCATION_SOURCE_POSTAL_CODE
    assert {(r.qualifier, r.value) for r in tender.references} >= {("SI", shipment), ("BM", f"BOL-{shipment}")}
    assert tender.offered_rate.amount_minor == 999_900 and tender.weight_lb == 42000
    assert [c.description for c in tender.commodities] == ["Canned vegetables"]
    # The documents' records name the shipment and the tender, in and out.
    records = [d for d in await edi_store.documents("prairie", limit=50) if d["shipment"] == shipment]
    assert {(d["direction"], d["set"], d["tender"]) for d in records} == {("in", "204", name), ("out", "990", name)}
    # The file left in/ for archive/ once processed.
    assert not list((state / "edi" / "prairie" / "in").iterdir())
    assert any(p.name.endswith(f"{shipment}.x12") for p in (state / "edi" / "prairie" / "archive").iterdir())

    # The same interchange again (a partner's retry, a re-read): a TA1 025, nothing else, no second tender.
    before = outbox(state)
    drop(state, load_tender_204(shipment, isa13="000000101"), f"{shipment}-again.x12")
    got = await new_files(state, before, kinds=("TA1",))
    ta1 = read(got["TA1"])[0].interchange.ta1s[0]
    assert (ta1.control, ta1.ack, ta1.note) == ("000000101", "R", "025")
    assert not any(n.startswith(("997_", "990_")) for n in outbox(state) - before)
    listed = await tenders.ListTenders(tender_service_pb2.ListTendersRequest(page_size=100), metadata=CARRIER,
                                       timeout=10)
    assert [t.name for t in listed.tenders if t.tms_load_id == shipment] == [name]


async def test_a_file_read_again_after_a_crash_makes_no_second_tender(edi_mesh, tenders, edi_store) -> None:
    """A crash after the tender was created, before the interchange was marked done and the file moved: the file
    is read again, its processing finished (the same request id returns the same tender), and answered again."""
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    await tendered(state, shipment, "000000111")
    name = await edi_store.tender_for("prairie", shipment)
    envelope = ("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "000000111", "P")
    await edi_store._redis.set(edi_store._seen_key("prairie", envelope), "processing")  # as the crash left it
    answer = read_990(only_set(await tendered(state, shipment, "000000111"))[2])
    assert answer.decision is Decision.ACCEPT
    assert await edi_store.tender_for("prairie", shipment) == name
    listed = await tenders.ListTenders(tender_service_pb2.ListTendersRequest(page_size=100), metadata=CARRIER,
                                       timeout=10)
    assert [t.name for t in listed.tenders if t.tms_load_id == shipment] == [name]


async def test_the_partners_997_marks_our_990_accepted(edi_mesh, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    sent = await tendered(state, shipment, "000000109")
    (ours,) = read(sent)
    (group,) = ours.groups
    documents = {(d["gs06"], d["st02"]): d for d in await edi_store.documents("prairie", limit=200)
                 if d["direction"] == "out" and d["set"] == "990"}
    record = documents[(group.group.control, group.sets[0].transaction.control)]
    assert record["state"] == "awaiting_997" and record["shipment"] == shipment
    # The partner's translator acknowledges it: a 997 in its own interchange (which we never acknowledge).
    fa = acknowledgement_group(group, group_control="4401", set_control="0001", date="20261204", time="1200")
    reply = Interchange("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "261204", "1200", "000000110", groups=(fa,),
                        delimiters=Delimiters(line_end="\n"))
    before = outbox(state)
    drop(state, write(reply), "997.x12")

    async def accepted():
        return (await edi_store.document("prairie", record["id"]))["state"] == "accepted"
    await wait_for(accepted, timeout_seconds=15)
    assert not any(n.startswith("997_") for n in outbox(state) - before)


async def test_a_malformed_204_is_rejected_by_its_997_and_kept(edi_mesh, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    data = load_tender_204(shipment, isa13="000000102", without_shipment_id=True)
    before = outbox(state)
    drop(state, data, "malformed.x12")
    got = await new_files(state, before, kinds=("997",))
    ack = read_997(only_set(got["997"])[2])
    assert ack.status == "R" and ack.accepted == 0
    (set_ack,) = ack.sets
    assert set_ack.status == "R" and "5" in set_ack.codes
    assert [(e.segment_id, e.elements[0].position) for e in set_ack.errors] == [("B2", 4)]
    assert not any(n.startswith("990_") for n in outbox(state) - before)
    # Kept: the raw bytes in the archive, as received.
    digest = hashlib.sha256(data).hexdigest()
    assert list((state / "edi-archive" / "in" / "prairie").glob(f"*/{digest}.x12"))


async def test_a_cancel_204_cancels_the_tender(edi_mesh, tenders, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    await tendered(state, shipment, "000000103")
    name = await edi_store.tender_for("prairie", shipment)
    before = outbox(state)
    drop(state, load_tender_204(shipment, purpose="01", isa13="000000104"), "cancel.x12")
    await new_files(state, before, kinds=("997",))

    async def cancelled():
        return (await get(tenders, name)).state == State.STATE_CANCELLED
    await wait_for(cancelled, timeout_seconds=10)


async def test_a_stop_that_cannot_be_placed_is_declined_by_name(edi_mesh, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    before = outbox(state)
    drop(state, load_tender_204(shipment, isa13="000000105", delivery_zip="99999"), "unplaced.x12")
    got = await new_files(state, before, kinds=("997", "990"))
    answer = read_990(only_set(got["990"])[2])
    assert answer.decision is Decision.DECLINE and answer.reason_code == "NCA"
    assert "stop 2 cannot be placed" in answer.remark and "99999" in answer.remark
    assert await edi_store.tender_for("prairie", shipment) is None


async def test_a_stop_the_tender_service_cannot_place_is_declined_by_name(edi_mesh, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    before = outbox(state)
    drop(state, load_tender_204(shipment, isa13="000000106", delivery_zip="99999", delivery_window=False),
         "unplaceable.x12")
    got = await new_files(state, before, kinds=("997", "990"))
    answer = read_990(only_set(got["990"])[2])
    assert answer.decision is Decision.DECLINE and answer.reason_code == "NCA"
    assert "stop 2" in answer.remark and "tender.stops" not in answer.remark, answer.remark


async def test_a_change_204_updates_the_tender(edi_mesh, tenders, edi_store) -> None:
    _, state = edi_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    # A partner on hold would leave it OFFERED; prairie accepts, and an accepted tender takes no lane change:
    # the change is declined by a 990 that names why, and the tender keeps its weight.
    await tendered(state, shipment, "000000107")
    before = outbox(state)
    drop(state, load_tender_204(shipment, purpose="04", isa13="000000108", weight=40000), "change.x12")
    got = await new_files(state, before, kinds=("997", "990"))
    answer = read_990(only_set(got["990"])[2])
    name = await edi_store.tender_for("prairie", shipment)
    tender = await get(tenders, name)
    assert answer.decision is Decision.DECLINE and answer.remark.startswith("change not applied"), answer.remark
    assert "ACCEPTED" in answer.remark.upper(), answer.remark
    assert tender.weight_lb == 42000


async def test_a_held_tender_is_changed_and_cancelled_without_a_990(edi_mesh, tenders, edi_store) -> None:
    """Partner ``lonestar`` holds its loads for a person: no 990; its change updates the offered tender."""
    _, state = edi_mesh
    shipment = f"LS-{new_id()[-8:].upper()}"
    lonestar = ("02", "LSLG")
    before = outbox(state, "lonestar")
    drop(state, load_tender_204(shipment, isa13="000000201", sender=lonestar), "original.x12", "lonestar")
    await new_files(state, before, kinds=("997",), partner="lonestar")
    name = await wait_for(lambda: edi_store.tender_for("lonestar", shipment))
    tender = await get(tenders, name, "lonestar-logistics")
    assert tender.state == State.STATE_OFFERED and tender.weight_lb == 42000
    drop(state, load_tender_204(shipment, purpose="04", isa13="000000202", weight=40000, sender=lonestar),
         "change.x12", "lonestar")

    async def changed():
        tender = await get(tenders, name, "lonestar-logistics")
        return tender.weight_lb == 40000 and tender.state == State.STATE_OFFERED
    await wait_for(changed, timeout_seconds=15)
    assert await edi_store.tender_for("lonestar", shipment) == name  # the same tender, changed
    drop(state, load_tender_204(shipment, purpose="01", isa13="000000203", sender=lonestar), "cancel.x12",
         "lonestar")

    async def cancelled():
        return (await get(tenders, name, "lonestar-logistics")).state == State.STATE_CANCELLED
    await wait_for(cancelled, timeout_seconds=15)
    assert not any(n.startswith("990_") for n in outbox(state, "lonestar"))


async def test_a_person_answering_a_held_tender_sends_its_990(edi_mesh, tenders, edi_store) -> None:
    """Lonestar's loads wait for a person: accepted over REST (as the gateway), the 990 A follows; declined, D."""
    _, state = edi_mesh
    lonestar = ("02", "LSLG")
    names = {}
    for shipment, isa13 in ((f"LS-{new_id()[-8:].upper()}", "000000211"), (f"LS-{new_id()[-8:].upper()}",
                                                                             "000000212")):
        before = outbox(state, "lonestar")
        drop(state, load_tender_204(shipment, isa13=isa13, sender=lonestar), f"{shipment}.x12", "lonestar")
        await new_files(state, before, kinds=("997",), partner="lonestar")
        names[shipment] = await wait_for(lambda s=shipment: edi_store.tender_for("lonestar", s))
    (take, leave) = names
    metadata = carrier_metadata("lonestar-logistics")
    before = outbox(state, "lonestar")
    await tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=names[take]), metadata=metadata,
                               timeout=10)
    answer = read_990(only_set((await new_files(state, before, kinds=("990",), partner="lonestar"))["990"])[2])
    assert (answer.shipment_id, answer.decision) == (take, Decision.ACCEPT)
    before = outbox(state, "lonestar")
    await tenders.DeclineTender(tender_service_pb2.DeclineTenderRequest(
        name=names[leave], reason=tender_service_pb2.DeclineTenderRequest.REASON_RISK, comment="not this week"),
        metadata=metadata, timeout=10)
    answer = read_990(only_set((await new_files(state, before, kinds=("990",), partner="lonestar"))["990"])[2])
    assert (answer.shipment_id, answer.decision, answer.reason_code) == (leave, Decision.DECLINE, "PRC")
    await asyncio.sleep(0.5)  # nothing more comes (one 990 per tender)
    assert len([n for n in outbox(state, "lonestar") if n.startswith("990_")]) == 2


async def test_control_numbers_only_grow_across_a_restart_of_the_service(edi_mesh) -> None:
    mesh, state = edi_mesh

    def numbers() -> list[int]:
        return [int(n.split("_")[1].split(".")[0]) for n in outbox(state) if not n.startswith(".")]
    before = numbers()
    assert len(before) == len(set(before)) >= 3
    stop = asyncio.Event()
    supervising = asyncio.ensure_future(mesh.supervise(stop))
    edi = mesh.children["edi"]
    os.kill(edi.process.pid, signal.SIGKILL)  # no goodbye: whatever it held in memory is gone
    await wait_for(lambda: edi.restarts == 1, timeout_seconds=30)
    await mesh.wait_serving(timeout_seconds=60)
    await tendered(state, f"PF-{new_id()[-8:].upper()}", "000000120")
    stop.set()
    assert await asyncio.wait_for(supervising, 10) is None
    after = sorted(set(numbers()) - set(before))
    assert after and after[0] > max(before) and len(numbers()) == len(set(numbers()))


def test_mesh_without_partners_file_does_not_start_edi(tmp_path: Path) -> None:
    assert Mesh(tmp_path, http_port=1234).optional == ()
    assert Mesh(tmp_path, http_port=1234, extra_env={"HAULMESH_EDI_PARTNERS_FILE": "x"}).optional == ("edi",)
    assert Mesh(tmp_path, optional=("edi",)).address("edi") == "127.0.0.1:50056"
