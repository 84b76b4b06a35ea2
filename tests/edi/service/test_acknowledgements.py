"""Our documents still without a 997: resent as first sent at each step of the partner's schedule, overdue at its
last (the example partner ``prairie``: resent at 60 minutes, overdue at 240); a 997 stops the chase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.folders import PartnerFolders
from services.edi.store import DocumentState, EdiStore
from services.edi.usecases import EdiDesk

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"


async def _nothing() -> None:
    return None


async def test_a_990_without_a_997_is_resent_then_overdue(store_client, tmp_path: Path) -> None:
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(EXAMPLE)})
    now = [datetime.now(UTC)]
    folders = PartnerFolders(tmp_path / "edi")
    folders.ensure(p.id for p in config.partners)
    archive = RawArchive(str(tmp_path / "archive"))
    store = EdiStore(store_client)
    desk = EdiDesk(partners=config.partners, store=store, archive=archive, folders=folders, tenders=None,
                   lanes=config.lanes, durable=_nothing, duplicate_window_seconds=60, clock=lambda: now[0])
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
