"""The 990: how the fleet's offer for a partner's 204 is answered, by the partner's policy (accept within the rate
tolerance, decline with a reason code, or hold for a person), and a person's later answer to a held tender."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal

import grpc

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from services.runtime import describe_rpc_error

from ..domain import (
    Decision,
    Interchange,
    LoadTender,
    Partner,
    Purpose,
    Reading,
    Reference,
    ResponseRule,
    clean_text,
    response_990,
)
from .clients import is_transient
from .outbound import DeskBase

__all__ = ["Answers", "Context", "Received"]

_log = logging.getLogger("haulmesh.edi")
State = tender_pb2.Tender.State
#: A 990 remark's length: ten K1s of two 30-character remarks hold 600; words wrap, so less is safe.
_MAX_REMARK = 300
_STOP_FIELD = re.compile(r"tender\.stops\[(\d+)\]")


@dataclass
class Received:
    """What one inbound file led to (for the worker's log and the tests)."""

    interchanges: int = 0
    duplicates: int = 0
    sent: list[str] = field(default_factory=list)
    tenders: list[str] = field(default_factory=list)
    unreadable: bool = False


@dataclass(frozen=True)
class Context:
    """The interchange being processed."""

    partner: Partner
    reading: Reading
    interchange: Interchange
    archive_key: str
    file_name: str
    #: When the file was taken (time.monotonic()), for the 997 latency.
    began: float


class Answers(DeskBase):
    """990s: the partner's policy applied to the offer, and a person's answer to a held tender."""

    async def _decide(self, context: Context, tender: LoadTender, created: tender_pb2.Tender,
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
                                   remark_for(exc, tender), outcome)
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

    async def _answer(self, context: Context, tender: LoadTender, created: tender_pb2.Tender, decision: Decision,
                      reason: str | None, remark: str, outcome: Received) -> None:
        """The 990 that answers the tender for good (a person's later answer to it sends none: answer_held)."""
        await self._respond(context, tender, decision, reason, remark, outcome)
        await self.store.mark_answered(context.partner.id, created.name)

    async def _respond(self, context: Context, tender: LoadTender, decision: Decision, reason: str | None,
                       remark: str, outcome: Received) -> None:
        outcome.sent.append(await self._send_990(context.partner, tender, decision, reason, remark))

    async def _send_990(self, partner: Partner, tender: LoadTender, decision: Decision, reason: str | None,
                        remark: str) -> str:
        remark_text = clean_text(remark)[:_MAX_REMARK]
        return await self._send(
            partner, "990", shipment=tender.shipment_id,
            build=lambda st02, now: response_990(tender, decision, scac=partner.scac, date=now.date(),
                                                 control=st02, reason_code=reason, remark=remark_text,
                                                 style=partner.response.decline_style, version=partner.version),
            detail={"decision": decision.value, "reason": reason or "", "remark": remark})

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
            await self._send_990(partner, load, decision, reason, remark)
            await self.store.mark_answered(partner.id, tender.name)
            return True
        return False


def remark_for(exc: grpc.aio.AioRpcError, tender: LoadTender) -> str:
    """A failed call's message, as a 990 remark: the tender service names the field and the rule; a stop it names
    (``tender.stops[1]``) is named as the 204 does (``stop 2``, its S5-01). The gRPC code's name is left out: a
    TMS user reads the remark, and the reason is the message."""
    def stop(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"stop {tender.stops[index].sequence}" if index < len(tender.stops) else match.group(0)
    message = describe_rpc_error(exc).removeprefix(f"{exc.code().name}: ")
    return _STOP_FIELD.sub(stop, message)[:_MAX_REMARK]
