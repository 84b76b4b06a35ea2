"""The partner's 997s for our documents: matched when they come (:meth:`Acknowledgements._acknowledgements_in`),
chased when they do not (:meth:`Acknowledgements.chase_acknowledgements`: overdue, resent in a new envelope, given
up, on each partner's schedule; the rules in services/edi/domain/_tracking.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from ..domain import (
    AckAction,
    GroupReading,
    OutboundDocument,
    Partner,
    Transmission,
    X12Error,
    advance_tracking,
    apply_997,
    read,
    read_997,
    record_resend,
)
from ..metrics import OVERDUE, UNACKNOWLEDGED_AGE
from ..store import DocumentState, detail_json
from .outbound import DeskBase, interchange_bytes, ms, state_of

if TYPE_CHECKING:
    from .answers import Context

__all__ = ["Acknowledgements"]

_log = logging.getLogger("haulmesh.edi")


class Acknowledgements(DeskBase):
    """997s in, and the chase of those that do not come."""

    async def _acknowledgements_in(self, context: Context, group_reading: GroupReading) -> None:
        """A partner's 997s: each marks our documents accepted or rejected (a 997 is never acknowledged)."""
        for set_reading in group_reading.sets:
            try:
                ack = read_997(set_reading.transaction)
            except X12Error as exc:
                _log.warning("partner %s: unreadable 997 %s: %s", context.partner.id,
                             set_reading.transaction.control, exc)
                continue
            await self._record(context.partner.id, {
                "direction": "in", "set": "997", "isa13": context.interchange.control,
                "gs06": group_reading.group.control, "st02": set_reading.transaction.control,
                "state": DocumentState.RECEIVED.value, "file": context.file_name, "archive": context.archive_key,
                "detail": detail_json(acknowledges=ack.group_control, status=ack.status)})
            ids = set((await self.store.outbound_group(context.partner.id, ack.group_control)).values())
            records = [r for r in [await self.store.document(context.partner.id, i) for i in sorted(ids)]
                       if r is not None and r.get("tracking")]
            result = apply_997(ack, [OutboundDocument.from_dict(json.loads(r["tracking"])) for r in records],
                               self.clock())
            for document in result.documents:
                await self.store.track(context.partner.id, document.document, json.dumps(document.to_dict()),
                                       state_of(document), due_ms=None)
            for report in result.reports:
                if report.needs_attention:
                    _log.warning("partner %s: 997 %s: %s %s %s", context.partner.id, report.group,
                                 report.finding.value, report.outcome, report.detail)

    async def chase_acknowledgements(self) -> int:
        """Our documents due a look (services/edi/domain/_tracking.py): overdue (alerted), resent in a new
        envelope, or given up, by each partner's schedule; how many were looked at. Then the age of the oldest
        document of ours still awaiting a 997, over every partner, is the unacknowledged-age gauge (0: none)."""
        now = self.clock()
        looked = 0
        oldest: datetime | None = None
        for partner in self.partners:
            for record in await self.store.due(partner.id, now_ms=ms(now) or 0):
                looked += 1
                tracked = OutboundDocument.from_dict(json.loads(record["tracking"]))
                step = advance_tracking(tracked, partner.ack_schedule, now)
                document = step.document
                for action in step.actions:
                    if action is AckAction.OVERDUE:
                        OVERDUE.inc()
                        _log.warning("partner %s: no 997 for %s %s after %s: overdue", partner.id, document.set_id,
                                     record["file"], now - document.transmissions[-1].sent_at)
                    elif action is AckAction.GIVE_UP:
                        _log.error("partner %s: no 997 for %s %s after %d resends: given up (a person's turn)",
                                   partner.id, document.set_id, record["file"], document.resends)
                    elif action is AckAction.RESEND:
                        document = await self._resend(partner, record, document, now)
                due = advance_tracking(document, partner.ack_schedule, now).due
                await self.store.track(partner.id, record["id"], json.dumps(document.to_dict()),
                                       state_of(document), due_ms=ms(due))
            first = await self.store.oldest_unacknowledged(partner.id)
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        UNACKNOWLEDGED_AGE.set(max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
        return looked

    async def _resend(self, partner: Partner, record: dict[str, str], document: OutboundDocument,
                      now: datetime) -> OutboundDocument:
        """The same set as first sent (its archived bytes), in a new envelope: new ISA13, GS06 and ST02 (a
        partner refuses an interchange control number it has seen; why: _tracking's docstring)."""
        (reading,) = read(await self.archive.get(record["archive"]))[:1]
        (group_reading,) = reading.groups[:1]
        first = group_reading.sets[0].transaction
        allocation = await self.store.allocate(partner.id, (1,))
        gs06, st02 = allocation.groups[0], allocation.sets[0][0]
        group = dataclasses.replace(group_reading.group, date=now.strftime("%Y%m%d"), time=now.strftime("%H%M"),
                                    control=gs06, sets=(dataclasses.replace(first, control=st02),))
        data = interchange_bytes(partner, allocation.interchange, (group,), (), now)
        await self.archive.put("out", partner.id, data, when=now)
        document = record_resend(document, Transmission(allocation.interchange, gs06, st02, now))
        await self.store.track(partner.id, record["id"], json.dumps(document.to_dict()), state_of(document),
                               due_ms=ms(now), transmission=(gs06, st02))
        await self._durable()
        name = f"{document.set_id}_{allocation.interchange}.x12"
        await asyncio.to_thread(self.folders.write_out, partner.id, name, data)
        _log.info("partner %s: no 997 for %s: resent as %s", partner.id, record["file"], name)
        return document
