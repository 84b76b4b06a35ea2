"""Translation between the peers' answers and the tender rules' own values (``domain.Capacity``,
``domain.Price``). The tender itself is its protobuf message throughout (docs/decisions.md)."""

from __future__ import annotations

from haulmesh.billing.v1 import quote_pb2
from haulmesh.mission.v1 import mission_service_pb2
from haulmesh.tender.v1 import tender_pb2
from services.runtime import STRING_FIELD, TIME_FIELD, enum_field, from_timestamp

from . import domain

__all__ = ["TENDER_FILTER", "capacity_from_pb", "price_from_pb", "tender_filter_values"]

#: What ListTenders filters on (the runtime's AIP-160 grammar).
TENDER_FILTER = {
    "state": enum_field(tender_pb2.Tender.State.keys(), prefix="STATE_"), "tms_load_id": STRING_FIELD,
    "lane.origin_region": STRING_FIELD, "lane.destination_region": STRING_FIELD, "create_time": TIME_FIELD}


def tender_filter_values(tender: tender_pb2.Tender) -> dict[str, object]:
    """A tender's filterable fields, as the filter compares them."""
    return {"state": tender_pb2.Tender.State.Name(tender.state).removeprefix("STATE_"),
            "tms_load_id": tender.tms_load_id, "lane.origin_region": tender.lane.origin_region,
            "lane.destination_region": tender.lane.destination_region,
            "create_time": from_timestamp(tender.create_time)}


def capacity_from_pb(response: mission_service_pb2.GetFleetCapacityResponse) -> domain.Capacity:
    """The availability windows mission reported."""
    return domain.Capacity([domain.window_bounds(w.window) for w in response.windows])


def price_from_pb(quote: quote_pb2.Quote) -> domain.Price:
    """What billing quoted; ``expire_time`` None when the quote has none."""
    expire_time = domain.instant(quote.expire_time) if quote.HasField("expire_time") else None
    return domain.Price(quote=quote.name, total=quote.total, lines=list(quote.lines), expire_time=expire_time)
