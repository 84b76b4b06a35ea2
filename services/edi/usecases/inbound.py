"""Inbound X12 from a trading partner, end to end: archive, read, acknowledge, act on the tender service, answer.

One file (:meth:`EdiDesk.receive`), every interchange in it, in this order:

1. the raw bytes are archived before anything is read (nothing received is lost, a malformed file included);
2. the envelope is checked against the partner (ISA05/06 its ids, ISA07/08 ours): a bad envelope gets a TA1 ``R``
   and nothing else; a good one a TA1 when the partner wants one for every interchange or ISA14 asks;
3. a duplicate interchange (same sender, receiver, ISA13 and ISA15 within the window, already processed) gets a
   TA1 with note 025 when the partner wants TA1s, and nothing else is done: the same file delivered twice makes
   one tender. One whose processing a crash cut short is finished instead (every step is idempotent);
4. each functional group gets its 997 (never a group of 997s: those are matched to our documents, which become
   accepted or rejected); a 204's content errors (no B2-04, a stop out of order) are in the 997 as AK3/AK4. A set
   whose errors are all confined to data the 204 reading does not use (services/edi/domain/_ack.py says which) is
   accepted with errors (AK5 ``E``): recorded ``accepted_with_errors`` and acted on like an accepted one;
5. each accepted 204 (with errors noted or without): original (00) → CreateTender as service ``edi`` for the
   partner's carrier, with a request id from partner, B2-04, purpose and ISA13 (a retry never creates a second
   tender); change (04) → UpdateTender; cancel (01) → CancelTender. Then the 990 per the partner's policy: accept
   (AcceptTender, 990 ``A``) when the offer is eligible and within the tolerance of the 204's rate, decline
   (DeclineTender, 990 ``D`` with the reason code), or hold (nothing sent yet). A tender the fleet rejected, or a
   204 that cannot become one (a stop that cannot be placed), is declined with the partner's ineligible reason and
   a remark naming why.

Every document in or out is recorded (store.py) and archived raw; an outbound file is written only once its
record is durable, through ``out/<name>.tmp`` and a rename.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import grpc

from ..convert import Refusal, request_id_for, tender_request
from ..domain import (
    Decision,
    GroupReading,
    Interchange,
    LoadTender,
    Partner,
    Purpose,
    Reading,
    SetError,
    SetReading,
    SetSyntax,
    Ta1,
    Ta1Note,
    TransactionSet,
    acknowledge,
    read,
    read_load_tender,
    ta1_for,
)
from ..metrics import ACK_LATENCY
from ..store import DocumentState, InterchangeClaim, detail_json
from .acknowledgements import Acknowledgements
from .answers import Answers, Context, Received, remark_for
from .clients import is_transient
from .shipments import kept_204

__all__ = ["Inbound"]

_log = logging.getLogger("haulmesh.edi")


class Inbound(Answers, Acknowledgements):
    """Inbound files: archive, read, acknowledge, act on the tender service, answer."""

    async def receive(self, partner: Partner, file_name: str, data: bytes) -> Received:
        """Process one inbound file of ``partner``'s: archived first, then every interchange in it."""
        began = time.monotonic()
        archive_key = await self.archive.put("in", partner.id, data, when=self.clock())
        outcome = Received()
        readings = read(data)
        if not readings:
            outcome.unreadable = True
            await self._record(partner.id, {
                "direction": "in", "set": "", "state": DocumentState.REJECTED.value, "file": file_name,
                "archive": archive_key, "detail": detail_json(problem="no interchange (no ISA) in the file")})
            return outcome
        for reading in readings:
            outcome.interchanges += 1
            await self._interchange(partner, reading, archive_key, file_name, outcome, began)
        return outcome

    async def _interchange(self, partner: Partner, reading: Reading, archive_key: str, file_name: str,
                           outcome: Received, began: float) -> None:
        ic = reading.interchange
        wrong = self._envelope_mismatch(partner, ic)
        if ic is None or wrong is not None or not reading.accepted:
            ta1 = ta1_for(reading) if wrong is None else Ta1(
                *(_echo(v, w) for v, w in ((reading.control, 9), (reading.date, 6), (reading.time, 4))), "R",
                wrong.value)
            await self._record(partner.id, {
                "direction": "in", "set": "", "isa13": reading.control, "state": DocumentState.REJECTED.value,
                "file": file_name, "archive": archive_key,
                "detail": detail_json(ta1=ta1.note, problems=[str(p) for p in reading.problems])})
            outcome.sent.append(await self._send(partner, "TA1", ta1s=(ta1,)))
            return
        envelope = (ic.sender_qualifier, ic.sender_id, ic.receiver_qualifier, ic.receiver_id, ic.control, ic.usage)
        claim = await self.store.claim_interchange(partner.id, envelope, ttl_seconds=self._window)
        if claim is InterchangeClaim.DONE:
            outcome.duplicates += 1
            await self._record(partner.id, {
                "direction": "in", "set": "", "isa13": ic.control, "state": DocumentState.DUPLICATE.value,
                "file": file_name, "archive": archive_key, "detail": detail_json(duplicate_of=ic.control)})
            if partner.ta1_wanted:
                ta1 = Ta1(ic.control, ic.date, ic.time, "R", Ta1Note.DUPLICATE_CONTROL_NUMBER.value)
                outcome.sent.append(await self._send(partner, "TA1", ta1s=(ta1,)))
            return
        if partner.ta1_wanted or ic.ack_requested == "1" or reading.problems:
            outcome.sent.append(await self._send(partner, "TA1", ta1s=(ta1_for(reading),)))
        context = Context(partner, reading, ic, archive_key, file_name, began)
        for group_reading in reading.groups:
            await self._group(context, group_reading, outcome)
        await self.store.finish_interchange(partner.id, envelope, ttl_seconds=self._window)

    @staticmethod
    def _envelope_mismatch(partner: Partner, ic: Interchange | None) -> Ta1Note | None:
        """Whether the interchange is not from this partner to us (the folder it came through says who)."""
        if ic is None:
            return None
        if ic.sender_qualifier != partner.isa_qualifier:
            return Ta1Note.INVALID_SENDER_QUALIFIER
        if ic.sender_id != partner.isa_id:
            return Ta1Note.INVALID_SENDER_ID
        if ic.receiver_qualifier != partner.our_isa_qualifier:
            return Ta1Note.INVALID_RECEIVER_QUALIFIER
        if ic.receiver_id != partner.our_isa_id:
            return Ta1Note.UNKNOWN_RECEIVER_ID
        return None

    async def _group(self, context: Context, group_reading: GroupReading, outcome: Received) -> None:
        group = group_reading.group
        if group.functional_id == "FA":
            await self._acknowledgements_in(context, group_reading)
            return
        group_reading, tenders = self._read_tenders(group_reading)
        records: dict[str, str] = {}
        for set_reading in group_reading.sets:
            transaction = set_reading.transaction
            shipment = tenders[transaction.control].shipment_id if transaction.control in tenders else ""
            records[transaction.control] = await self._record(context.partner.id, {
                "direction": "in", "set": transaction.id, "isa13": context.interchange.control,
                "gs06": group.control, "st02": transaction.control, "shipment": shipment,
                "state": _state(set_reading, group_reading).value,
                "file": context.file_name, "archive": context.archive_key,
                "detail": detail_json(problems=[str(p) for p in set_reading.problems],
                                      errors=[str(e) for e in set_reading.segment_errors][:20],
                                      noted=[str(e) for e in set_reading.noted][:20])})
        if acknowledge(group_reading, control="0001") is not None:
            outcome.sent.append(await self._send(context.partner, "997", acknowledging=group_reading))
            ACK_LATENCY.observe(time.monotonic() - context.began)
        for set_reading in group_reading.accepted_sets:
            tender = tenders.get(set_reading.transaction.control)
            if tender is not None:
                await self._tender(context, tender, outcome, records[set_reading.transaction.control],
                                   set_reading.transaction)

    @staticmethod
    def _read_tenders(group_reading: GroupReading) -> tuple[GroupReading, dict[str, LoadTender]]:
        """Each accepted 204 as a LoadTender; a 204 whose content is wrong becomes a rejected set (its AK3/AK4 in
        the 997)."""
        tenders: dict[str, LoadTender] = {}
        sets: list[SetReading] = []
        for set_reading in group_reading.sets:
            if set_reading.accepted and set_reading.transaction.id == "204":
                result = read_load_tender(set_reading.transaction, version=group_reading.group.version)
                if isinstance(result, LoadTender):
                    tenders[set_reading.transaction.control] = result
                else:
                    set_reading = dataclasses.replace(
                        set_reading, problems=(*set_reading.problems, SetError(
                            SetSyntax.SEGMENTS_IN_ERROR, f"{len(result)} segment errors")),
                        segment_errors=(*set_reading.segment_errors, *result))
            sets.append(set_reading)
        return dataclasses.replace(group_reading, sets=tuple(sets)), tenders

    # --- tenders ---------------------------------------------------------------------------------------------

    async def _tender(self, context: Context, tender: LoadTender, outcome: Received, record: str,
                      transaction: TransactionSet) -> None:
        """Act on one accepted 204 (``record``: its document's id, which learns the tender's name). The 204 of a
        tender created or changed is kept: its stops, parties and references are what the 214s and the 210
        echo."""
        partner = context.partner
        if tender.purpose is Purpose.CANCEL:
            await self._cancel(context, tender)
            return
        known = await self.store.tender_for(partner.id, tender.shipment_id)
        request_id = request_id_for(partner.id, tender.shipment_id, tender.purpose.value, context.interchange.control)
        request = tender_request(tender, self.lanes, request_id=request_id)
        if isinstance(request, Refusal):
            await self._respond(context, tender, Decision.DECLINE, partner.response.ineligible_reason,
                                request.remark, outcome)
            return
        try:
            if tender.purpose is Purpose.ORIGINAL or (tender.purpose is Purpose.REPLACE and known is None):
                created = await self.tenders.create(partner.carrier, request)
            elif known is None:  # a change before its original: quarantined, no 990 (the notes' pitfall)
                _log.warning("partner %s: change of shipment %s before its original: held", partner.id,
                             tender.shipment_id)
                return
            else:
                created = await self.tenders.update(partner.carrier, known, request.tender)
        except grpc.aio.AioRpcError as exc:
            if is_transient(exc):
                raise
            remark = remark_for(exc, tender)
            if known is not None:  # the 990 declines the change, not the load the partner tendered before
                remark = f"change not applied, the load stands as tendered before: {remark}"
            await self._respond(context, tender, Decision.DECLINE, partner.response.ineligible_reason, remark,
                                outcome)
            return
        await self.store.link_tender(partner.id, tender.shipment_id, created.name)
        await self.store.keep_load_tender(partner.id, tender.shipment_id, kept_204(partner, transaction))
        await self.store.annotate(partner.id, record, tender=created.name)
        outcome.tenders.append(created.name)
        await self._decide(context, tender, created, outcome)

    async def _cancel(self, context: Context, tender: LoadTender) -> None:
        partner = context.partner
        known = await self.store.tender_for(partner.id, tender.shipment_id)
        if known is None:
            _log.warning("partner %s: cancel of unknown shipment %s", partner.id, tender.shipment_id)
            return
        try:
            await self.tenders.cancel(partner.carrier, known,
                                      f"cancelled by EDI 204 (B2A 01) in interchange {context.interchange.control}")
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # already cancelled (a re-read) is done
                raise


def _state(set_reading: SetReading, group_reading: GroupReading) -> DocumentState:
    """A received set's record state: as its AK5 says (a set of a group rejected whole is rejected)."""
    if group_reading.problems or not set_reading.accepted:
        return DocumentState.REJECTED
    return DocumentState.ACCEPTED_WITH_ERRORS if set_reading.status == "E" else DocumentState.RECEIVED


def _echo(value: str, width: int) -> str:
    return value if len(value) == width and value.isdigit() else "0" * width
