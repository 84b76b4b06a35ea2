"""The EDI service's loops, started through the runtime (``Service.add_periodic``).

* the folder poller: every partner's ``in/`` (folders.py), at most N complete files a pass, each processed once
  (usecases.EdiDesk.receive) and then moved out of ``in/``. A pass failed by the store, the tender service or the
  disk leaves the file where it is: the next pass takes it again, and finishes what the first began (a duplicate
  interchange check with a ``processing`` mark, request ids derived from the interchange). A file whose processing
  fails otherwise (a bug) goes to ``failed/`` (it is archived raw already), never blocking the partner's queue;
* the held tenders' answers (consumer group ``edi-tender-answers``): a tender of a partner that holds its loads
  for a person, once accepted or declined (the console, REST) or lapsed, gets its 990;
* the shipments (consumer group ``edi-shipments``): the mission's, telemetry's and billing's events of the partners'
  carriers become the 214s and 210s of the partners' shipments (usecases.EdiDesk.follow, usecases/shipments.py);
* the 997 chaser: our documents still without a 997 go overdue, are resent in a new envelope and are given up on
  each partner's schedule (usecases.EdiDesk.chase_acknowledgements, the rules in domain/_tracking.py).
"""

from __future__ import annotations

import asyncio
import logging

from haulmesh.events.v1 import event_pb2
from services.runtime import Periodic, Service

from .domain import Decision, ResponseRule
from .usecases import SHIPMENT_EVENT_TYPES, EdiDesk, is_transient

__all__ = ["ACK_CHASE_INTERVAL_SECONDS", "ANSWERS_GROUP", "SHIPMENTS_GROUP", "FolderPoller", "HeldAnswers",
           "ShipmentEvents", "register"]

_log = logging.getLogger("haulmesh.edi")
#: How often documents awaiting a 997 are looked at (the schedules count in minutes).
ACK_CHASE_INTERVAL_SECONDS = 30.0


class FolderPoller:
    """One pass over every partner's ``in/`` folder."""

    def __init__(self, desk: EdiDesk, *, files_per_poll: int) -> None:
        self._desk = desk
        self._limit = files_per_poll

    async def run_once(self) -> int:
        """Process the ready files; how many were processed."""
        desk = self._desk
        ids = [p.id for p in desk.partners]
        ready = await asyncio.to_thread(desk.folders.ready, ids, limit=self._limit)
        done = 0
        for partner_id, path in ready:
            partner = desk.partners.get(partner_id)
            assert partner is not None
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                continue  # taken away meanwhile (the partner deleted its upload)
            try:
                outcome = await desk.receive(partner, path.name, data)
            except Exception as exc:
                if is_transient(exc):
                    raise
                _log.exception("partner %s: %s could not be processed; moved to failed/", partner_id, path.name)
                await asyncio.to_thread(desk.folders.settle, path, partner_id, failed=True)
                continue
            await asyncio.to_thread(desk.folders.settle, path, partner_id, failed=outcome.unreadable)
            _log.info("partner %s: %s: %d interchanges, %d duplicates, sent %s, tenders %s", partner_id, path.name,
                      outcome.interchanges, outcome.duplicates, ", ".join(outcome.sent) or "nothing",
                      ", ".join(outcome.tenders) or "none")
            done += 1
        return done

    async def tick(self) -> None:
        await self.run_once()


#: The consumer group of the held tenders' answers, and the events it reads.
ANSWERS_GROUP = "edi-tender-answers"
_ANSWERS = {"haulmesh.tender.v1.accepted": ("tender_accepted", Decision.ACCEPT, ""),
            "haulmesh.tender.v1.declined": ("tender_declined", Decision.DECLINE, ""),
            "haulmesh.tender.v1.lapsed": ("tender_lapsed", Decision.DECLINE, "offer lapsed unanswered")}


class HeldAnswers:
    """Handler of a tender's acceptance, decline or lapse: the 990 of a held tender (usecases.answer_held)."""

    def __init__(self, desk: EdiDesk) -> None:
        self._desk = desk

    async def handle(self, event: event_pb2.Event) -> None:
        field, decision, remark = _ANSWERS[event.type]
        tender = getattr(event, field).tender
        carrier = event.carrier.removeprefix("carriers/")
        remark = remark or (tender.state_reason if decision is Decision.DECLINE else "")
        if carrier and await self._desk.answer_held(carrier, tender, decision, remark):
            _log.info("event %s: 990 %s sent for held %s", event.id, decision.value, tender.name)


#: The consumer group of the shipments' events (214s, 210s).
SHIPMENTS_GROUP = "edi-shipments"


class ShipmentEvents:
    """Handler of the mission's, telemetry's and billing's events: the 214s and 210s they make due."""

    def __init__(self, desk: EdiDesk) -> None:
        self._desk = desk

    async def handle(self, event: event_pb2.Event) -> None:
        sent = await self._desk.follow(event)
        if sent:
            _log.info("event %s (%s): sent %s", event.id, event.type, ", ".join(sent))


async def _chase(desk: EdiDesk) -> None:
    await desk.chase_acknowledgements()


def register(service: Service, desk: EdiDesk, *, poll_interval_seconds: float, files_per_poll: int) -> Periodic:
    """Start the EDI service's loops with ``service``; the folder poller returned."""
    poller = FolderPoller(desk, files_per_poll=files_per_poll)
    if any(p.response.rule is ResponseRule.HOLD for p in desk.partners):
        service.add_consumer(ANSWERS_GROUP, HeldAnswers(desk).handle, types=set(_ANSWERS))
    service.add_consumer(SHIPMENTS_GROUP, ShipmentEvents(desk).handle, types=set(SHIPMENT_EVENT_TYPES))
    service.add_periodic("edi 997 chaser", lambda: _chase(desk), interval_seconds=ACK_CHASE_INTERVAL_SECONDS)
    return service.add_periodic("edi folder poller", poller.tick, interval_seconds=poll_interval_seconds,
                                max_backoff_seconds=10.0)
