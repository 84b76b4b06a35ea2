"""Billing's event consumers, started through the runtime (``Service.add_consumer``).

A tender's acceptance tells billing when its quote was accepted.

RecordUsage refuses to invoice a quote accepted after it expired (QUOTE_EXPIRED); billing learns the
acceptance time from ``haulmesh.tender.v1.accepted`` rather than by calling the tender service while
invoicing, so invoicing keeps working when the tender service is down.
"""

from __future__ import annotations

import logging

from haulmesh.events.v1 import event_pb2
from services.runtime import InvalidArgument, Service

from . import domain
from .store import BillingStore

__all__ = ["ACCEPTANCE_GROUP", "TENDER_ACCEPTED", "QuoteAcceptances", "register"]

_log = logging.getLogger("haulmesh.billing")

#: The consumer group of billing's acceptance handler, and the event type it reads.
ACCEPTANCE_GROUP = "billing-quote-acceptances"
TENDER_ACCEPTED = "haulmesh.tender.v1.accepted"


class QuoteAcceptances:
    """Handler of ``haulmesh.tender.v1.accepted``: records the accepted quote's acceptance time."""

    def __init__(self, store: BillingStore) -> None:
        self._store = store

    def register(self, service: Service) -> None:
        service.add_consumer(ACCEPTANCE_GROUP, self.handle, types={TENDER_ACCEPTED})

    async def handle(self, event: event_pb2.Event) -> None:
        """Idempotent: the first acceptance time recorded for a quote is kept."""
        tender = event.tender_accepted.tender
        carrier_id = event.carrier.removeprefix("carriers/")
        if not carrier_id or not tender.offer.quote:
            _log.warning("event %s: accepted tender %s names no carrier or quote; ignored", event.id, tender.name)
            return
        try:
            quote_id = domain.parse_quote_name(tender.offer.quote)
        except InvalidArgument:
            _log.warning("event %s: malformed quote name %r; ignored", event.id, tender.offer.quote[:80])
            return
        accepted = tender.accept_time if tender.HasField("accept_time") else event.time
        await self._store.record_acceptance(carrier_id, quote_id,
                                            accepted.seconds * 1000 + accepted.nanos // 1_000_000)


def register(service: Service, store: BillingStore) -> None:
    """Start billing's consumers with ``service``."""
    QuoteAcceptances(store).register(service)
