"""Inbound X12 from a trading partner, end to end: archive, read, acknowledge, act on the tender service, answer.

One file (:meth:`EdiDesk.receive`), every interchange in it, in this order:

1. the raw bytes are archived before anything is read (nothing received is lost, a malformed file included);
2. the envelope is checked against the partner (ISA05/06 its ids, ISA07/08 ours): a bad envelope gets a TA1 ``R``
   and nothing else; a good one a TA1 when the partner wants one for every interchange or ISA14 asks;
3. a duplicate interchange (same sender, receiver, ISA13 and ISA15 within the window, already processed) gets a
   TA1 with note 025 when the partner wants TA1s, and nothing else is done: the same file delivered twice makes
   one tender. One whose processing a crash cut short is finished instead (every step is idempotent);
4. each functional group gets its 997 (never a group of 997s: those are matched to our documents, which become
   accepted or rejected); a 204's content errors (no B2-04, a stop out of order) are in the 997 as AK3/AK4;
5. each accepted 204: original (00) → CreateTender as service ``edi`` for the partner's carrier, with a
   request id from partner, B2-04, purpose and ISA13 (a retry never creates a second tender); change (04) →
   UpdateTender; cancel (01) → CancelTender. Then the 990 per the partner's policy: accept (AcceptTender, 990
   ``A``) when the offer is eligible and within the tolerance of the 204's rate, decline (DeclineTender, 990
   ``D`` with the reason code), or hold (nothing sent yet). A tender the fleet rejected, or a 204 that cannot
   become one (a stop that cannot be placed), is declined with the partner's ineligible reason and a remark
   naming why.

Every document in or out is recorded (store.py) and archived raw; an outbound file is written only once its
record is durable, through ``out/<name>.tmp`` and a rename.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import redis

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Unavailable, carrier_metadata, describe_rpc_error, new_id

from .archive import RawArchive
from .convert import UPDATE_PATHS, Refusal, request_id_for, tender_request
from .domain import (
    AckAction,
    AckState,
    Decision,
    Delimiters,
    FunctionalGroup,
    GroupReading,
    Interchange,
    LoadTender,
    OutboundDocument,
    Partner,
    Partners,
    Purpose,
    Reading,
    Reference,
    ResponseRule,
    SetError,
    SetReading,
    SetSyntax,
    Ta1,
    Ta1Note,
    TransactionSet,
    Transmission,
    X12Error,
    acknowledge,
    acknowledgement_group,
    advance_tracking,
    apply_997,
    clean_text,
    read,
    read_997,
    read_load_tender,
    record_resend,
    response_990,
    ta1_for,
    track_sent,
    write,
)
from .folders import PartnerFolders
from .metrics import ACK_LATENCY, DOCUMENTS, OVERDUE
from .store import DocumentState, EdiStore, InterchangeClaim, detail_json

__all__ = ["EdiDesk", "Received", "TenderClient", "is_transient"]

_log = logging.getLogger("haulmesh.edi")
State = tender_pb2.Tender.State
#: A 990 remark's length: ten K1s of two 30-character remarks hold 600; words wrap, so less is safe.
_MAX_REMARK = 300


class TenderClient:
    """The tender service as the edi service calls it: always for the partner's carrier (haulmesh-carrier)."""

    def __init__(self, stub: Callable[[], tender_service_pb2_grpc.TenderServiceStub]) -> None:
        self._stub = stub

    async def create(self, carrier: str, request: tender_service_pb2.CreateTenderRequest) -> tender_pb2.Tender:
        return await self._stub().CreateTender(request, metadata=carrier_metadata(carrier))

    async def get(self, carrier: str, name: str) -> tender_pb2.Tender:
        return await self._stub().GetTender(tender_service_pb2.GetTenderRequest(name=name),
                                            metadata=carrier_metadata(carrier))

    async def update(self, carrier: str, name: str, changed: tender_pb2.Tender) -> tender_pb2.Tender:
        request = tender_service_pb2.UpdateTenderRequest(tender=changed)
        request.tender.name = name
        request.update_mask.paths.extend(UPDATE_PATHS)
        return await self._stub().UpdateTender(request, metadata=carrier_metadata(carrier))

    async def cancel(self, carrier: str, name: str, reason: str) -> tender_pb2.Tender:
        return await self._stub().CancelTender(tender_service_pb2.CancelTenderRequest(name=name, reason=reason),
                                               metadata=carrier_metadata(carrier))

    async def accept(self, carrier: str, name: str) -> tender_pb2.Tender:
        return await self._stub().AcceptTender(tender_service_pb2.AcceptTenderRequest(name=name),
                                               metadata=carrier_metadata(carrier))

    async def decline(self, carrier: str, name: str, reason: int, comment: str) -> tender_pb2.Tender:
        return await self._stub().DeclineTender(
            tender_service_pb2.DeclineTenderRequest(name=name, reason=reason, comment=comment),
            metadata=carrier_metadata(carrier))


@dataclass
class Received:
    """What one inbound file led to (for the worker's log and the tests)."""

    interchanges: int = 0
    duplicates: int = 0
    sent: list[str] = field(default_factory=list)
    tenders: list[str] = field(default_factory=list)
    unreadable: bool = False


@dataclass(frozen=True)
class _Context:
    partner: Partner
    reading: Reading
    interchange: Interchange
    archive_key: str
    file_name: str
    #: When the file was taken (time.monotonic()), for the 997 latency.
    began: float


class EdiDesk:
    """The EDI service's use cases."""

    def __init__(self, *, partners: Partners, store: EdiStore, archive: RawArchive, folders: PartnerFolders,
                 tenders: TenderClient, lanes, durable: Callable[[], Awaitable[None]],
                 duplicate_window_seconds: int, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.partners = partners
        self.store = store
        self.archive = archive
        self.folders = folders
        self.tenders = tenders
        self.lanes = lanes
        self._durable = durable
        self._window = duplicate_window_seconds
        self.clock = clock

    async def _record(self, partner: str, fields: dict[str, str], *, doc_id: str | None = None,
                      due_ms: int | None = None) -> str:
        doc_id = await self.store.record_document(partner, fields, doc_id=doc_id, due_ms=due_ms)
        DOCUMENTS.labels(fields.get("direction", ""), fields.get("set", ""), fields.get("state", "")).inc()
        return doc_id

    # --- inbound -------------------------------------------------------------------------------------------

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
        context = _Context(partner, reading, ic, archive_key, file_name, began)
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

    async def _group(self, context: _Context, group_reading: GroupReading, outcome: Received) -> None:
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
                "state": (DocumentState.RECEIVED if set_reading.accepted and not group_reading.problems
                          else DocumentState.REJECTED).value,
                "file": context.file_name, "archive": context.archive_key,
                "detail": detail_json(problems=[str(p) for p in set_reading.problems],
                                      errors=[str(e) for e in set_reading.segment_errors][:20])})
        if acknowledge(group_reading, control="0001") is not None:
            outcome.sent.append(await self._send(context.partner, "997", acknowledging=group_reading))
            ACK_LATENCY.observe(time.monotonic() - context.began)
        for set_reading in group_reading.accepted_sets:
            tender = tenders.get(set_reading.transaction.control)
            if tender is not None:
                await self._tender(context, tender, outcome, records[set_reading.transaction.control])

    @staticmethod
    def _read_tenders(group_reading: GroupReading) -> tuple[GroupReading, dict[str, LoadTender]]:
        """Each accepted 204 as a LoadTender; a 204 whose content is wrong becomes a rejected set (its AK3/AK4 in
        the 997)."""
        tenders: dict[str, LoadTender] = {}
        sets: list[SetReading] = []
        for set_reading in group_reading.sets:
            if set_reading.accepted and set_reading.transaction.id == "204":
                result = read_load_tender(set_reading.transaction)
                if isinstance(result, LoadTender):
                    tenders[set_reading.transaction.control] = result
                else:
                    set_reading = dataclasses.replace(
                        set_reading, problems=(*set_reading.problems, SetError(
                            SetSyntax.SEGMENTS_IN_ERROR, f"{len(result)} segment errors")),
                        segment_errors=(*set_reading.segment_errors, *result))
            sets.append(set_reading)
        return dataclasses.replace(group_reading, sets=tuple(sets)), tenders

    async def _acknowledgements_in(self, context: _Context, group_reading: GroupReading) -> None:
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
                                       _state_of(document), due_ms=None)
            for report in result.reports:
                if report.needs_attention:
                    _log.warning("partner %s: 997 %s: %s %s %s", context.partner.id, report.group,
                                 report.finding.value, report.outcome, report.detail)

    # --- tenders ---------------------------------------------------------------------------------------------

    async def _tender(self, context: _Context, tender: LoadTender, outcome: Received, record: str) -> None:
        """Act on one accepted 204 (``record``: its document's id, which learns the tender's name)."""
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
            remark = _remark(exc, tender)
            if known is not None:  # the 990 declines the change, not the load the partner tendered before
                remark = f"change not applied, the load stands as tendered before: {remark}"
            await self._respond(context, tender, Decision.DECLINE, partner.response.ineligible_reason, remark,
                                outcome)
            return
        await self.store.link_tender(partner.id, tender.shipment_id, created.name)
        await self.store.annotate(partner.id, record, tender=created.name)
        outcome.tenders.append(created.name)
        await self._decide(context, tender, created, outcome)

    async def _decide(self, context: _Context, tender: LoadTender, created: tender_pb2.Tender,
                      outcome: Received) -> None:
        policy = context.partner.response
        carrier = context.partner.carrier
        if created.state == State.STATE_REJECTED:
            reasons = "; ".join(r.description for r in created.rejection_reasons) or created.state_reason
            await self._answer(context, tender, created, Decision.DECLINE, policy.ineligible_reason, reasons,
                               outcome)
            return
        if created.state == State.STATE_ACCEPTED:  # a re-read after a crash: the answer was decided before
            await self._answer(context, tender, created, Decision.ACCEPT, None, "", outcome)
            return
        if created.state != State.STATE_OFFERED or policy.rule is ResponseRule.HOLD:
            return  # held for a person (or in no state to answer): no 990 yet
        price = Decimal(created.offer.price.amount_minor) / 100
        offered = tender.offered_rate.amount if tender.offered_rate else None
        if policy.rule is ResponseRule.ACCEPT and policy.within_tolerance(price, offered):
            try:
                await self.tenders.accept(carrier, created.name)
            except grpc.aio.AioRpcError as exc:
                if is_transient(exc):
                    raise
                await self._answer(context, tender, created, Decision.DECLINE, policy.ineligible_reason,
                                   _remark(exc, tender), outcome)
                return
            await self._answer(context, tender, created, Decision.ACCEPT, None, "", outcome)
            return
        remark = (f"our price {price} exceeds the offered {offered} by more than {policy.rate_tolerance_percent}%"
                  if policy.rule is ResponseRule.ACCEPT else "")
        try:
            await self.tenders.decline(carrier, created.name,
                                       tender_service_pb2.DeclineTenderRequest.REASON_PRICE
                                       if remark else tender_service_pb2.DeclineTenderRequest.REASON_OTHER,
                                       f"EDI 990 policy of partner {context.partner.id}")
        except grpc.aio.AioRpcError as exc:
            if is_transient(exc):
                raise
            _log.warning("partner %s: decline of %s failed: %s", context.partner.id, created.name,
                         describe_rpc_error(exc))
        await self._answer(context, tender, created, Decision.DECLINE, policy.decline_reason, remark, outcome)

    async def _answer(self, context: _Context, tender: LoadTender, created: tender_pb2.Tender, decision: Decision,
                      reason: str | None, remark: str, outcome: Received) -> None:
        """The 990 that answers the tender for good (a person's later answer to it sends none: answer_held)."""
        await self._respond(context, tender, decision, reason, remark, outcome)
        await self.store.mark_answered(context.partner.id, created.name)

    async def _cancel(self, context: _Context, tender: LoadTender) -> None:
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

    async def _respond(self, context: _Context, tender: LoadTender, decision: Decision, reason: str | None,
                       remark: str, outcome: Received) -> None:
        partner = context.partner
        outcome.sent.append(await self._send(partner, "990", load_tender=tender, decision=decision,
                                             reason=reason, remark=remark))

    # --- a person's answer to a held tender ------------------------------------------------------------------

    async def answer_held(self, carrier: str, tender: tender_pb2.Tender, decision: Decision, remark: str) -> bool:
        """The 990 for a tender of a partner that holds its loads for a person, once it is answered (accepted or
        declined in the console or over REST) or lapses unanswered; whether one was sent. Once per tender: a
        redelivered event, or a tender no partner of ours tendered, sends nothing."""
        for partner in self.partners:
            if partner.carrier != carrier or partner.response.rule is not ResponseRule.HOLD:
                continue
            shipment = await self.store.shipment_for(partner.id, tender.name)
            if shipment is None or await self.store.answered(partner.id, tender.name):
                continue
            load = LoadTender(shipment, Purpose.ORIGINAL, (), references=tuple(
                Reference(r.qualifier, r.value) for r in tender.references if r.qualifier and r.value))
            reason = partner.response.decline_reason if decision is Decision.DECLINE else None
            await self._send(partner, "990", load_tender=load, decision=decision, reason=reason, remark=remark)
            await self.store.mark_answered(partner.id, tender.name)
            return True
        return False

    # --- 997s we wait for -------------------------------------------------------------------------------------

    async def chase_acknowledgements(self) -> int:
        """Our documents due a look (services/edi/domain/_tracking.py): overdue (alerted), resent in a new
        envelope, or given up, by each partner's schedule; how many were looked at."""
        now = self.clock()
        looked = 0
        for partner in self.partners:
            for record in await self.store.due(partner.id, now_ms=_ms(now) or 0):
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
                                       _state_of(document), due_ms=_ms(due))
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
        data = self._interchange_bytes(partner, allocation.interchange, (group,), (), now)
        await self.archive.put("out", partner.id, data, when=now)
        document = record_resend(document, Transmission(allocation.interchange, gs06, st02, now))
        await self.store.track(partner.id, record["id"], json.dumps(document.to_dict()), _state_of(document),
                               due_ms=_ms(now), transmission=(gs06, st02))
        await self._durable()
        name = f"{document.set_id}_{allocation.interchange}.x12"
        await asyncio.to_thread(self.folders.write_out, partner.id, name, data)
        _log.info("partner %s: no 997 for %s: resent as %s", partner.id, record["file"], name)
        return document

    # --- outbound --------------------------------------------------------------------------------------------

    async def _send(self, partner: Partner, kind: str, *, ta1s: tuple[Ta1, ...] = (),
                    acknowledging: GroupReading | None = None, load_tender: LoadTender | None = None,
                    decision: Decision | None = None, reason: str | None = None, remark: str = "") -> str:
        """Number, write, archive, record (durably), then place one outbound interchange in ``out/``; its file
        name. A document the partner owes a 997 for (a 990) is tracked until it comes (chase_acknowledgements)."""
        allocation = await self.store.allocate(partner.id, () if kind == "TA1" else (1,))
        now = self.clock()
        gs06, st02 = (allocation.groups[0], allocation.sets[0][0]) if allocation.groups else ("", "")
        groups: tuple[FunctionalGroup, ...] = ()
        shipment = tender_name = ""
        if acknowledging is not None:
            group = acknowledgement_group(acknowledging, group_control=gs06, set_control=st02,
                                          date=now.strftime("%Y%m%d"), time=now.strftime("%H%M"),
                                          sender=partner.our_gs_id, receiver=partner.gs_id,
                                          delimiters=_delimiters(partner))
            groups = (group,) if group is not None else ()
        elif load_tender is not None and decision is not None:
            shipment = load_tender.shipment_id
            tender_name = await self.store.tender_for(partner.id, shipment) or ""
            transaction: TransactionSet = response_990(
                load_tender, decision, scac=partner.scac, date=now.date(), control=st02, reason_code=reason,
                remark=clean_text(remark)[:_MAX_REMARK], style=partner.response.decline_style)
            groups = (FunctionalGroup("GF", partner.our_gs_id, partner.gs_id, now.strftime("%Y%m%d"),
                                      now.strftime("%H%M"), gs06, partner.version, (transaction,)),)
        data = self._interchange_bytes(partner, allocation.interchange, groups, ta1s, now)
        archive_key = await self.archive.put("out", partner.id, data, when=now)
        name = f"{kind}_{allocation.interchange}.x12"
        fields = {"direction": "out", "set": kind, "isa13": allocation.interchange,
                  "gs06": gs06 if groups else "", "st02": st02 if groups else "", "shipment": shipment,
                  "tender": tender_name, "state": DocumentState.SENT.value, "file": name, "archive": archive_key,
                  "detail": detail_json(decision=decision.value if decision else "", reason=reason or "",
                                        remark=remark)}
        doc_id, due_ms = new_id(), None
        if kind in _TRACKED:
            tracked = track_sent(doc_id, kind, Transmission(allocation.interchange, gs06, st02, now))
            step = advance_tracking(tracked, partner.ack_schedule, now)
            fields.update(state=_state_of(step.document), tracking=json.dumps(step.document.to_dict()))
            due_ms = _ms(step.due)
        await self._record(partner.id, fields, doc_id=doc_id, due_ms=due_ms)
        await self._durable()  # the record (and the counters) on disk before the partner can see the document
        await asyncio.to_thread(self.folders.write_out, partner.id, name, data)
        _log.info("partner %s: sent %s %s", partner.id, kind, name)
        return name

    @staticmethod
    def _interchange_bytes(partner: Partner, control: str, groups: tuple[FunctionalGroup, ...],
                           ta1s: tuple[Ta1, ...], now: datetime) -> bytes:
        """Our interchange to ``partner``: our ids as sender, its as receiver, its version and usage."""
        return write(Interchange(
            partner.our_isa_qualifier, partner.our_isa_id, partner.isa_qualifier, partner.isa_id,
            now.strftime("%y%m%d"), now.strftime("%H%M"), control,
            version="00501" if partner.version >= "005010" else "00401", usage=partner.usage, groups=groups,
            ta1s=ta1s, delimiters=_delimiters(partner)))


def _delimiters(partner: Partner) -> Delimiters:
    return Delimiters(line_end="\n", repetition="^" if partner.version >= "005010" else None)


#: The sets of ours a partner owes a 997 for (its 997s and TA1s are never acknowledged).
_TRACKED = frozenset({"990", "214", "210"})


def _state_of(document: OutboundDocument) -> str:
    """The record's state for a tracked document (``waiting`` reads ``awaiting_997``)."""
    return DocumentState.AWAITING_997.value if document.state is AckState.WAITING else document.state.value


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


_STOP_FIELD = re.compile(r"tender\.stops\[(\d+)\]")
#: A call failed by these passes by itself: the file stays in ``in/`` and is taken again (never a 990 decline).
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed step is to be retried (the store, a peer or the disk hiccuped), not answered or failed."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT_CODES
    return isinstance(exc, (redis.RedisError, OSError, TimeoutError, Unavailable))


def _echo(value: str, width: int) -> str:
    return value if len(value) == width and value.isdigit() else "0" * width


def _remark(exc: grpc.aio.AioRpcError, tender: LoadTender) -> str:
    """A failed call's message, as a 990 remark: the tender service names the field and the rule; a stop it names
    (``tender.stops[1]``) is named as the 204 does (``stop 2``, its S5-01)."""
    def stop(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"stop {tender.stops[index].sequence}" if index < len(tender.stops) else match.group(0)
    return _STOP_FIELD.sub(stop, describe_rpc_error(exc))[:_MAX_REMARK]
