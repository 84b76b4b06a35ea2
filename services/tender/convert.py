"""Translation between the peers' answers and the tender rules' own values (``domain.Capacity``,
``domain.Price``). The tender itself is its protobuf message throughout (docs/decisions.md)."""

from __future__ import annotations

from haulmesh.billing.v1 import quote_pb2
from haulmesh.mission.v1 import mission_service_pb2

from . import domain

__all__ = ["capacity_from_pb", "price_from_pb"]


def capacity_from_pb(response: mission_service_pb2.GetFleetCapacityResponse) -> domain.Capacity:
    """The availability windows mission reported."""
    return domain.Capacity([domain.window_bounds(w.window) for w in response.windows])


def price_from_pb(quote: quote_pb2.Quote) -> domain.Price:
    """What billing quoted; ``expire_time`` None when the quote has none."""
    expire_time = domain.instant(quote.expire_time) if quote.HasField("expire_time") else None
    return domain.Price(quote=quote.name, total=quote.total, lines=list(quote.lines), expire_time=expire_time)
