"""The EDI store on a real Valkey: control numbers unique and only growing, also across a restart of the store
(AOF) and between processes; a received interchange claimed once, a crash's unfinished one finished."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.edi.domain import ControlKind, control_number
from services.edi.store import DocumentState, EdiStore, InterchangeClaim
from services.runtime import EmbeddedStore, connect_async, new_id

ENVELOPE = ("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "000000905", "P")


async def test_control_numbers_are_unique_and_grow_across_a_restart(tmp_path: Path) -> None:
    embedded = EmbeddedStore(tmp_path / "store")
    info = embedded.ensure_running()
    partner = f"p{new_id()[-6:]}"
    try:
        client = connect_async(info.url)
        store = EdiStore(client)
        # Concurrent allocations (several workers, or two replicas) never share a number.
        allocations = await asyncio.gather(*(store.allocate(partner, (1, 2)) for _ in range(40)))
        interchanges = [a.interchange for a in allocations]
        groups = [g for a in allocations for g in a.groups]
        sets = [s for a in allocations for group in a.sets for s in group]
        assert len(set(interchanges)) == 40 and len(set(groups)) == 80 and len(set(sets)) == 120
        assert sorted(interchanges) == [control_number(ControlKind.INTERCHANGE, n) for n in range(1, 41)]
        await client.aclose()
        embedded.stop()
        info = embedded.ensure_running()  # the store restarts from its AOF
        client = connect_async(info.url)
        after = await EdiStore(client).allocate(partner)  # a new process's first allocation
        assert after.interchange == "000000041" and after.groups == ("81",) and after.sets == (("0121",),)
        other = await EdiStore(client).allocate(f"{partner}x")  # each partner counts on its own
        assert other.interchange == "000000001"
        await client.aclose()
    finally:
        embedded.stop()


async def test_an_interchange_is_claimed_once(store_client) -> None:
    store = EdiStore(store_client)
    partner = f"p{new_id()[-6:]}"
    assert await store.claim_interchange(partner, ENVELOPE, ttl_seconds=60) is InterchangeClaim.NEW
    # Read again before it was finished (a crash between reading and moving the file): finish it.
    assert await store.claim_interchange(partner, ENVELOPE, ttl_seconds=60) is InterchangeClaim.UNFINISHED
    await store.finish_interchange(partner, ENVELOPE, ttl_seconds=60)
    assert await store.claim_interchange(partner, ENVELOPE, ttl_seconds=60) is InterchangeClaim.DONE
    # Another ISA13, or the same number in test (ISA15 T) rather than production, is another interchange.
    assert await store.claim_interchange(partner, (*ENVELOPE[:4], "000000906", "P"),
                                         ttl_seconds=60) is InterchangeClaim.NEW
    assert await store.claim_interchange(partner, (*ENVELOPE[:5], "T"), ttl_seconds=60) is InterchangeClaim.NEW
    ttl = await store_client.ttl(store._seen_key(partner, ENVELOPE))
    assert 0 < ttl <= 60


async def test_documents_and_the_997_that_answers_them(store_client) -> None:
    store = EdiStore(store_client)
    partner = f"p{new_id()[-6:]}"
    doc = await store.record_document(partner, {"direction": "out", "set": "990", "isa13": "000000007",
                                                "gs06": "7", "st02": "0007", "shipment": "PF-1",
                                                "state": DocumentState.AWAITING_997.value})
    assert await store.outbound_for(partner, "7", "0007") == doc
    assert await store.outbound_for(partner, "7", "0008") is None
    await store.set_state(partner, doc, DocumentState.ACCEPTED, "ak5 A")
    (latest,) = await store.documents(partner)
    assert latest["state"] == "accepted" and latest["shipment"] == "PF-1" and latest["partner"] == partner
    await store.link_tender(partner, "PF-1", "tenders/01abc")
    assert await store.tender_for(partner, "PF-1") == "tenders/01abc"
    assert await store.shipment_for(partner, "tenders/01abc") == "PF-1"
