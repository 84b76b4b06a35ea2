"""The KPI projection: the events that carry a KPI's facts, kept per mission and per tender (store.py).

One consumer group (:data:`KPI_GROUP`, ``Service.add_consumer``) reads every carrier's stream from its
beginning, so a new deployment projects the history still in the streams. The runtime skips an event id the
group already handled; the writes are idempotent anyway (they set values, never add), so a redelivery after
a crash between the write and the acknowledgement changes nothing.
"""

from __future__ import annotations

import logging
import time

from haulmesh.events.v1 import event_pb2
from services.runtime import Service

from . import convert
from .store import ReportStore

__all__ = ["KPI_EVENT_TYPES", "KPI_GROUP", "KpiProjection", "register"]

_log = logging.getLogger("haulmesh.billing.reports")

#: The consumer group of the KPI projection.
KPI_GROUP = "billing-kpi"
#: The event types the projection reads (event.proto's names of the data fields it handles).
KPI_EVENT_TYPES = frozenset({
    "haulmesh.tender.v1.offered",
    "haulmesh.mission.v1.dispatched",
    "haulmesh.mission.v1.state_changed",
    "haulmesh.mission.v1.exception_raised",
    "haulmesh.mission.v1.exception_resolved",
    "haulmesh.billing.v1.invoice_issued",
})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class KpiProjection:
    """Handler of :data:`KPI_EVENT_TYPES`: each event's facts into the store."""

    def __init__(self, store: ReportStore) -> None:
        self._store = store

    def register(self, service: Service) -> None:
        service.add_consumer(KPI_GROUP, self.handle, types=set(KPI_EVENT_TYPES))

    async def handle(self, event: event_pb2.Event) -> None:
        carrier_id = event.carrier.removeprefix("carriers/")
        if not carrier_id:
            return  # fleet events belong to no carrier's report
        kind = event.WhichOneof("data")
        now = _now_ms()
        if kind == "tender_offered":
            tender = event.tender_offered.tender
            fields, once, created = convert.tender_fields(tender)
            await self._store.record_tender(carrier_id, tender.name.removeprefix("tenders/"), fields, once=once,
                                            create_ms=created, now_ms=now)
        elif kind in ("mission_dispatched", "mission_state_changed"):
            mission = getattr(event, kind).mission
            fields, dispatch = convert.mission_fields(mission)
            await self._store.record_mission(carrier_id, mission.name.removeprefix("missions/"), fields,
                                             dispatch_ms=dispatch, now_ms=now)
        elif kind in ("mission_exception_raised", "mission_exception_resolved"):
            payload = getattr(event, kind)
            await self._store.record_mission(carrier_id, payload.mission.removeprefix("missions/"),
                                             convert.exception_fields(payload.exception), dispatch_ms=None,
                                             now_ms=now)
        elif kind == "billing_invoice_issued":
            invoice = event.billing_invoice_issued.invoice
            if not invoice.mission:
                _log.warning("event %s: invoice %s names no mission; ignored", event.id, invoice.name)
                return
            await self._store.record_mission(carrier_id, invoice.mission.removeprefix("missions/"),
                                             convert.invoice_fields(invoice), dispatch_ms=None, now_ms=now)


def register(service: Service, store: ReportStore) -> None:
    """Start the KPI projection with ``service``."""
    KpiProjection(store).register(service)
