"""Our documents still without a 997: resent as first sent at each step of the partner's schedule, overdue at its
last (the example partner ``prairie``: resent at 60 minutes, overdue at 240); a 997 stops the chase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import Delimiters, FunctionalGroup, Interchange, Segment, TransactionSet, write
from services.edi.folders import PartnerFolders
from services.edi.store import DocumentState, EdiStore
from services.edi.usecases import EdiDesk

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"


async def _nothing() -> None:
    return None


def _desk(store: EdiStore, tmp_path: Path, now: list[datetime]) -> EdiDesk:
    """A desk for partners of their own (another test's prairie documents in the session store are not theirs)."""
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(EXAMPLE)})
    folders = PartnerFolders(tmp_path / "edi")
    folders.ensure(p.id for p in config.partners)
    return EdiDesk(partners=config.partners, store=store, archive=RawArchive(str(tmp_path / "archive")),
                   folders=folders, tenders=None, lanes=config.lanes, durable=_nothing, duplicate_window_seconds=60,
                   clock=lambda: now[0])


async def test_a_990_without_a_997_is_resent_then_overdue(store_client, tmp_path: Path) -> None:
    now = [datetime.now(UTC)]
    store = EdiStore(store_client)
    desk = _desk(store, tmp_path, now)
    archive, folders = desk.archive, desk.folders
    sent = b"ISA*00*...990 as first sent~"
    key = await archive.put("out", "prairie", sent)
    chased = await store.record_document("prairie", {
        "direction": "out", "set": "990", "isa13": "000000042", "gs06": "42", "st02": "0042",
        "state": DocumentState.AWAITING_997.value, "file": "990_000000042.x12", "archive": key})
    answered = await store.record_document("prairie", {
        "direction": "out", "set": "990", "isa13": "000000043", "gs06": "43", "st02": "0043",
        "state": DocumentState.AWAITING_997.value, "file": "990_000000043.x12", "archive": key})
    await store.set_state("prairie", answered, DocumentState.ACCEPTED)  # its 997 came
    out = folders.folder("prairie", "out")

    now[0] += timedelta(minutes=59)
    await desk.chase_acknowledgements()
    assert not (out / "990_000000042.resend1.x12").exists()
    now[0] += timedelta(minutes=2)
    await desk.chase_acknowledgements()
    assert (out / "990_000000042.resend1.x12").read_bytes() == sent  # the same bytes, the same control numbers
    assert not (out / "990_000000043.resend1.x12").exists()
    await desk.chase_acknowledgements()  # not twice for one step
    assert sorted(p.name for p in out.iterdir()) == ["990_000000042.resend1.x12"]
    assert (await store.document("prairie", chased))["state"] == "awaiting_997"

    now[0] += timedelta(minutes=180)
    await desk.chase_acknowledgements()
    record = await store.document("prairie", chased)
    assert record["state"] == "overdue" and record["resends"] == "1"
    assert await store.awaiting("prairie", sent_before_ms=int(now[0].timestamp() * 1000) + 10**9) == []


def _997_from_prairie(isa13: str, *body: Segment) -> bytes:
    group = FunctionalGroup("FA", "PRAIRIEFRT", "HAULMESH", "20261204", "1200", str(int(isa13)), "004010",
                            (TransactionSet("997", "0001", body),))
    return write(Interchange("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "261204", "1200", isa13, groups=(group,),
                             delimiters=Delimiters(line_end="\n")))


async def test_a_partners_997_accepts_or_rejects_our_sets(store_client, tmp_path: Path) -> None:
    store = EdiStore(store_client)
    desk = _desk(store, tmp_path, [datetime.now(UTC)])
    prairie = desk.partners.get("prairie")
    assert prairie is not None
    docs = {}
    for gs06 in ("51", "52"):
        docs[gs06] = await store.record_document("prairie", {
            "direction": "out", "set": "990", "isa13": f"0000000{gs06}", "gs06": gs06, "st02": f"00{gs06}",
            "state": DocumentState.AWAITING_997.value, "file": f"990_0000000{gs06}.x12", "archive": "k"})
    # A 997 accepting group 51 without listing its sets (AK9 alone): every set of the group is accepted.
    accepted = _997_from_prairie("000000301", Segment.of("AK1", "GF", "51"), Segment.of("AK9", "A", "1", "1", "1"))
    # One rejecting group 52's set 0052.
    rejected = _997_from_prairie("000000302", Segment.of("AK1", "GF", "52"), Segment.of("AK2", "990", "0052"),
                                 Segment.of("AK5", "R", "5"), Segment.of("AK9", "R", "1", "1", "0"))
    for data in (accepted, rejected):
        outcome = await desk.receive(prairie, "997.x12", data)
        assert outcome.sent == [n for n in outcome.sent if n.startswith("TA1_")]  # a TA1 (wanted), never a 997
    assert (await store.document("prairie", docs["51"]))["state"] == "accepted"
    assert (await store.document("prairie", docs["52"]))["state"] == "rejected"
