"""Our 990s and the partner's 997s (the tracking rules: services/edi/domain/_tracking.py): a 990 without a 997 is
overdue after the partner's deadline, resent in a new envelope at its schedule's minutes, given up after the last;
a 997 (for any transmission, listing the set or not) ends the chase; a rejecting one marks it rejected.

The example partner ``lonestar`` (deadline 30 minutes, resends at 60 and 240) holds its loads: a person's answer
(:meth:`EdiDesk.answer_held`) sends the 990s these tests follow, on a real Valkey, with a clock of their own."""

from __future__ import annotations

from pathlib import Path

from haulmesh.tender.v1 import tender_pb2
from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import (
    Decision,
    Delimiters,
    FunctionalGroup,
    Interchange,
    Segment,
    TransactionSet,
    read,
    read_990,
    write,
)
from services.edi.folders import PartnerFolders
from services.edi.store import EdiStore
from services.edi.usecases import EdiDesk
from services.runtime import new_id

from .samples import Clock, nothing

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"


def _desk(store: EdiStore, tmp_path: Path, clock: Clock) -> EdiDesk:
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(EXAMPLE)})
    folders = PartnerFolders(tmp_path / "edi")
    folders.ensure(p.id for p in config.partners)
    return EdiDesk(partners=config.partners, store=store, archive=RawArchive(str(tmp_path / "archive")),
                   folders=folders, tenders=None, lanes=config.lanes, durable=nothing, duplicate_window_seconds=60,
                   clock=clock)


async def _held_990(desk: EdiDesk, decision: Decision = Decision.ACCEPT) -> tuple[str, str]:
    """A lonestar tender answered by a person: (shipment id, the record id of the 990 sent)."""
    shipment, name = f"LS-{new_id()[-8:].upper()}", f"tenders/{new_id()}"
    await desk.store.link_tender("lonestar", shipment, name)
    tender = tender_pb2.Tender(name=name, references=[tender_pb2.Reference(
        kind=tender_pb2.Reference.KIND_BILL_OF_LADING, qualifier="BM", value=f"BOL-{shipment}")])
    assert await desk.answer_held("lonestar-logistics", tender, decision, "")
    assert not await desk.answer_held("lonestar-logistics", tender, decision, "")  # once per tender
    (record,) = [d for d in await desk.store.documents("lonestar", limit=500) if d.get("shipment") == shipment]
    return shipment, record["id"]


def _outbox(desk: EdiDesk) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in desk.folders.folder("lonestar", "out").iterdir()}


def _997(isa13: str, *body: Segment) -> bytes:
    group = FunctionalGroup("FA", "LSLG", "HAULMESH", "20261204", "1200", str(int(isa13)), "004010",
                            (TransactionSet("997", "0001", body),))
    return write(Interchange("02", "LSLG", "ZZ", "HAULMESH", "261204", "1200", isa13, groups=(group,),
                             delimiters=Delimiters(line_end="\n")))


async def test_a_990_without_a_997_goes_overdue_is_resent_anew_and_accepted(store_client, tmp_path: Path) -> None:
    clock = Clock()
    store = EdiStore(store_client)
    desk = _desk(store, tmp_path, clock)
    shipment, doc = await _held_990(desk)
    (first_name,) = [n for n in _outbox(desk) if shipment.encode() in _outbox(desk)[n]]
    assert (await store.document("lonestar", doc))["state"] == "awaiting_997"

    clock.advance(29)
    await desk.chase_acknowledgements()
    assert (await store.document("lonestar", doc))["state"] == "awaiting_997"
    clock.advance(2)
    await desk.chase_acknowledgements()
    assert (await store.document("lonestar", doc))["state"] == "overdue"
    assert len(_outbox(desk)) == 1

    clock.advance(30)  # 61 minutes after the first send: resent
    await desk.chase_acknowledgements()
    await desk.chase_acknowledgements()  # once, however often the chaser looks
    files = _outbox(desk)
    (resent,) = [n for n in files if n != first_name]
    first, again = read(files[first_name])[0], read(files[resent])[0]
    assert again.interchange.control != first.interchange.control  # a new envelope...
    assert again.groups[0].group.control != first.groups[0].group.control
    assert again.groups[0].sets[0].transaction.control != first.groups[0].sets[0].transaction.control
    assert again.groups[0].sets[0].transaction.segments == first.groups[0].sets[0].transaction.segments  # ...same
    assert read_990(again.groups[0].sets[0].transaction).shipment_id == shipment
    assert (await store.document("lonestar", doc))["state"] == "awaiting_997"

    # The partner's 997 for the resend (AK9 alone: the group accepted) ends it.
    clock.advance(1)
    answered = _997("000000401", Segment.of("AK1", "GF", again.groups[0].group.control),
                    Segment.of("AK9", "A", "1", "1", "1"))
    outcome = await desk.receive(desk.partners.get("lonestar"), "997.x12", answered)
    assert not [n for n in outcome.sent if n.startswith("997_")]  # a 997 is never acknowledged
    assert (await store.document("lonestar", doc))["state"] == "accepted"
    clock.advance(600)
    await desk.chase_acknowledgements()
    assert len(_outbox(desk)) == 2 and (await store.document("lonestar", doc))["state"] == "accepted"


async def test_unanswered_990s_are_given_up_and_a_rejecting_997_rejects(store_client, tmp_path: Path) -> None:
    clock = Clock()
    store = EdiStore(store_client)
    desk = _desk(store, tmp_path, clock)
    _, ignored = await _held_990(desk)
    _, rejected = await _held_990(desk, Decision.DECLINE)
    (record,) = [d for d in await store.documents("lonestar", limit=500) if d["id"] == rejected]
    answer = _997("000000402", Segment.of("AK1", "GF", record["gs06"]), Segment.of("AK2", "990", record["st02"]),
                  Segment.of("AK5", "R", "5"), Segment.of("AK9", "R", "1", "1", "0"))
    await desk.receive(desk.partners.get("lonestar"), "997.x12", answer)
    assert (await store.document("lonestar", rejected))["state"] == "rejected"
    for _ in range(40):  # ten minutes a look, 400 minutes: resent at 60 and 240, given up at 300
        clock.advance(10)
        await desk.chase_acknowledgements()
    assert (await store.document("lonestar", ignored))["state"] == "given_up"
    sent = [n for n, data in _outbox(desk).items() if b"990" in data]
    assert len(sent) == 2 + 2  # each first 990, and the ignored one's two resends (a rejected one is not resent)
