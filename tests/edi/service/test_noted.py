"""A 204 whose only errors are in data Haulmesh does not use (an over-long stop description, S5-09; a note longer
than NTE's 80 characters, kept cut) is accepted with errors: its 997 says AK5 ``E`` and AK9 ``E`` with the AK3/AK4s
pointing at them, and it still becomes a tender on the real tender service (called over mTLS as service ``edi``)
and gets its 990. Its record and the documents metric say ``accepted_with_errors``."""

from __future__ import annotations

import random
from pathlib import Path

import grpc

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import read, read_990, read_997
from services.edi.folders import PartnerFolders
from services.edi.store import EdiStore
from services.edi.usecases import EdiDesk, TenderClient
from services.runtime import METRICS_REGISTRY, carrier_metadata, connect_async, new_id

from ...conftest import Pki
from .samples import load_tender_204, nothing

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"
NOTE = "Autonomous lane; trailer pre-loaded at door 4"


def _accepted_with_errors() -> float:
    return METRICS_REGISTRY.get_sample_value("haulmesh_edi_documents_total", {
        "direction": "in", "set": "204", "state": "accepted_with_errors"}) or 0.0


async def test_a_204_accepted_with_errors_still_becomes_a_tender_and_gets_its_990(mesh, mesh_pki: Pki,
                                                                                   tmp_path: Path) -> None:
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(EXAMPLE)})
    partner = config.partners.get("prairie")
    assert partner is not None
    folders = PartnerFolders(tmp_path / "edi")
    folders.ensure(p.id for p in config.partners)
    shipment, isa13 = f"PF-{new_id()[-8:].upper()}", f"{random.randrange(10**8, 10**9):09d}"
    long_note = NOTE + " " + "and a long remark the partner's TMS let through. " * 2
    data = load_tender_204(shipment, isa13=isa13).replace(
        b"S5*1*LD*42000*L*22*PL~", b"S5*1*LD*42000*L*22*PL***" + b"D" * 90 + b"~").replace(
        NOTE.encode(), long_note.encode())
    counted = _accepted_with_errors()
    client = connect_async(mesh.store.url)
    try:
        async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "edi")) as ch:
            stub = tender_service_pb2_grpc.TenderServiceStub(ch)
            desk = EdiDesk(partners=config.partners, store=EdiStore(client),
                           archive=RawArchive(str(tmp_path / "archive")), folders=folders,
                           tenders=TenderClient(lambda: stub), lanes=config.lanes, durable=nothing,
                           duplicate_window_seconds=60)
            outcome = await desk.receive(partner, f"{shipment}.x12", data)
            (tender_name,) = outcome.tenders
            tender = await stub.GetTender(tender_service_pb2.GetTenderRequest(name=tender_name),
                                          metadata=carrier_metadata(partner.carrier), timeout=10)
        out = {p.name: p.read_bytes() for p in folders.folder("prairie", "out").iterdir()}
        assert {n.split("_")[0] for n in outcome.sent} >= {"997", "990"}

        (ack_name,) = [n for n in outcome.sent if n.startswith("997_")]
        ack_set = read(out[ack_name])[0].groups[0].sets[0].transaction
        assert [str(s) for s in ack_set.segments] == [
            "AK1*SM*" + str(int(isa13)), "AK2*204*0001",
            "AK3*NTE*6**8", "AK4*2*352*5*" + long_note[:99], "AK3*S5*9*0300*8", "AK4*9*352*5*" + "D" * 90,
            "AK5*E*5", "AK9*E*1*1*1"]
        assert read_997(ack_set).outcome("0001") == "accepted_with_errors"

        (answer_name,) = [n for n in outcome.sent if n.startswith("990_")]
        answer = read_990(read(out[answer_name])[0].groups[0].sets[0].transaction)
        assert answer.shipment_id == shipment

        assert tender.tms_load_id == shipment and tender.special_instructions == long_note[:80]
        (record,) = [d for d in await EdiStore(client).documents("prairie", limit=500)
                     if d["direction"] == "in" and d["shipment"] == shipment]
        assert record["state"] == "accepted_with_errors" and record["tender"] == tender_name
        assert "S5@9" in record["detail"] and "NTE@6" in record["detail"]
        assert _accepted_with_errors() == counted + 1
    finally:
        await client.aclose()
