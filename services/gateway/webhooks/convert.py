"""The delivery log's list filter: the fields ListWebhookDeliveries filters on and a delivery's values for them
(the runtime's AIP-160 grammar)."""

from __future__ import annotations

from haulmesh.gateway.v1 import webhook_pb2
from services.runtime import STRING_FIELD, TIME_FIELD, enum_field, from_timestamp

__all__ = ["DELIVERY_FILTER", "delivery_filter_values"]

_Delivery = webhook_pb2.WebhookDelivery

#: ``state = FAILED AND event.type = "haulmesh.tender.v1.offered" AND create_time >= "2026-11-24T00:00:00Z"``.
DELIVERY_FILTER = {"state": enum_field(_Delivery.State.keys(), prefix="STATE_"), "event.type": STRING_FIELD,
                   "event.id": STRING_FIELD, "create_time": TIME_FIELD}


def delivery_filter_values(delivery: _Delivery) -> dict[str, object]:
    return {"state": _Delivery.State.Name(delivery.state).removeprefix("STATE_"), "event.type": delivery.event.type,
            "event.id": delivery.event.id, "create_time": from_timestamp(delivery.create_time)}
