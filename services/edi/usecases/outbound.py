"""What every use case of the desk stands on: its collaborators, the document record, and :meth:`DeskBase._send`,
the one path by which anything reaches a partner's ``out/``.

An outbound interchange is numbered (the partner's durable counters: ISA13, GS06, ST02 never reused), written,
archived raw, recorded, made durable, and only then placed in ``out/`` (as ``out/<name>.tmp`` and a rename): the
partner never sees a document the store could forget. A document the partner owes a 997 for (990, 214, 210) is
tracked from its sending (services/edi/domain/_tracking.py; the chaser is acknowledgements.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from services.runtime import new_id

from ..archive import RawArchive
from ..domain import (
    AckState,
    Delimiters,
    FunctionalGroup,
    GroupReading,
    Interchange,
    OutboundDocument,
    Partner,
    Partners,
    Ta1,
    TransactionSet,
    Transmission,
    acknowledgement_group,
    advance_tracking,
    track_sent,
    write,
)
from ..folders import PartnerFolders
from ..metrics import DOCUMENTS
from ..store import DocumentState, EdiStore, detail_json
from .clients import MissionClient, TenderClient

__all__ = ["FUNCTIONAL_IDS_OUT", "Build", "DeskBase"]

_log = logging.getLogger("haulmesh.edi")
#: GS01 of the sets we send (997s are built by acknowledgement_group with FA).
FUNCTIONAL_IDS_OUT = {"990": "GF", "214": "QM", "210": "IM"}
#: The sets of ours a partner owes a 997 for (its 997s and TA1s are never acknowledged).
_TRACKED = frozenset(FUNCTIONAL_IDS_OUT)
#: A transaction set built once its ST02 is known: (ST02, now) -> the set.
Build = Callable[[str, datetime], TransactionSet]


class DeskBase:
    """The desk's collaborators and its outbound path; the use cases are mixins over it (see desk.py).

    ``missions`` may be None (a desk that only reads files): then a mission is followed only once an event that
    carries it was seen, and no X6 is sent (the vehicle's position is the mission service's roster)."""

    def __init__(self, *, partners: Partners, store: EdiStore, archive: RawArchive, folders: PartnerFolders,
                 tenders: TenderClient, lanes, durable: Callable[[], Awaitable[None]],
                 duplicate_window_seconds: int, missions: MissionClient | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.partners = partners
        self.store = store
        self.archive = archive
        self.folders = folders
        self.tenders = tenders
        self.missions = missions
        self.lanes = lanes
        self._durable = durable
        self._window = duplicate_window_seconds
        self.clock = clock

    async def _record(self, partner: str, fields: dict[str, str], *, doc_id: str | None = None,
                      due_ms: int | None = None, sent_ms: int | None = None) -> str:
        doc_id = await self.store.record_document(partner, fields, doc_id=doc_id, due_ms=due_ms, sent_ms=sent_ms)
        DOCUMENTS.labels(fields.get("direction", ""), fields.get("set", ""), fields.get("state", "")).inc()
        return doc_id

    async def _send(self, partner: Partner, kind: str, *, ta1s: tuple[Ta1, ...] = (),
                    acknowledging: GroupReading | None = None, build: Build | None = None, shipment: str = "",
                    detail: dict[str, Any] | None = None) -> str:
        """Number, write, archive, record (durably), then place one outbound interchange in ``out/``; its file
        name. ``kind`` is ``TA1`` (``ta1s``), ``997`` (``acknowledging`` the group read) or a set of ours
        (``build`` makes it, ``shipment`` its B2-04): tracked until the partner's 997 comes."""
        allocation = await self.store.allocate(partner.id, () if kind == "TA1" else (1,))
        now = self.clock()
        gs06, st02 = (allocation.groups[0], allocation.sets[0][0]) if allocation.groups else ("", "")
        groups: tuple[FunctionalGroup, ...] = ()
        if acknowledging is not None:
            group = acknowledgement_group(acknowledging, group_control=gs06, set_control=st02,
                                          date=now.strftime("%Y%m%d"), time=now.strftime("%H%M"),
                                          sender=partner.our_gs_id, receiver=partner.gs_id,
                                          delimiters=delimiters_for(partner))
            groups = (group,) if group is not None else ()
        elif build is not None:
            groups = (FunctionalGroup(FUNCTIONAL_IDS_OUT[kind], partner.our_gs_id, partner.gs_id,
                                      now.strftime("%Y%m%d"), now.strftime("%H%M"), gs06, partner.version,
                                      (build(st02, now),)),)
        tender_name = (await self.store.tender_for(partner.id, shipment) or "") if shipment else ""
        data = interchange_bytes(partner, allocation.interchange, groups, ta1s, now)
        archive_key = await self.archive.put("out", partner.id, data, when=now)
        name = f"{kind}_{allocation.interchange}.x12"
        fields = {"direction": "out", "set": kind, "isa13": allocation.interchange,
                  "gs06": gs06 if groups else "", "st02": st02 if groups else "", "shipment": shipment,
                  "tender": tender_name, "state": DocumentState.SENT.value, "file": name, "archive": archive_key,
                  "detail": detail_json(**(detail or {}))}
        doc_id, due_ms = new_id(), None
        if kind in _TRACKED:
            tracked = track_sent(doc_id, kind, Transmission(allocation.interchange, gs06, st02, now))
            step = advance_tracking(tracked, partner.ack_schedule, now)
            fields.update(state=state_of(step.document), tracking=json.dumps(step.document.to_dict()))
            due_ms = ms(step.due)
        await self._record(partner.id, fields, doc_id=doc_id, due_ms=due_ms, sent_ms=ms(now))
        await self._durable()  # the record (and the counters) on disk before the partner can see the document
        await asyncio.to_thread(self.folders.write_out, partner.id, name, data)
        _log.info("partner %s: sent %s %s", partner.id, kind, name)
        return name


def interchange_bytes(partner: Partner, control: str, groups: tuple[FunctionalGroup, ...],
                      ta1s: tuple[Ta1, ...], now: datetime) -> bytes:
    """Our interchange to ``partner``: our ids as sender, its as receiver, its version and usage."""
    return write(Interchange(
        partner.our_isa_qualifier, partner.our_isa_id, partner.isa_qualifier, partner.isa_id,
        now.strftime("%y%m%d"), now.strftime("%H%M"), control,
        version="00501" if partner.version >= "005010" else "00401", usage=partner.usage, groups=groups,
        ta1s=ta1s, delimiters=delimiters_for(partner)))


def delimiters_for(partner: Partner) -> Delimiters:
    return Delimiters(line_end="\n", repetition="^" if partner.version >= "005010" else None)


def state_of(document: OutboundDocument) -> str:
    """The record's state for a tracked document (``waiting`` reads ``awaiting_997``)."""
    return DocumentState.AWAITING_997.value if document.state is AckState.WAITING else document.state.value


def ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)
