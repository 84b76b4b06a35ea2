"""Translation between billing's protobuf messages and the plain domain values of ``domain.py``."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from google.protobuf.message import Message

from haulmesh.billing.v1 import invoice_pb2, rate_card_pb2
from haulmesh.type.v1 import charge_line_pb2, lane_pb2, money_pb2
from services.runtime import STRING_FIELD, TIME_FIELD, enum_field, from_timestamp

from . import domain

__all__ = [
    "INVOICE_FILTER",
    "RATE_CARD_FILTER",
    "card_from_pb",
    "estimate_differences_to_pb",
    "etag_of",
    "invoice_filter_values",
    "lane_from_pb",
    "line_figure",
    "line_to_pb",
    "money_from_pb",
    "money_to_pb",
    "optional_time",
    "rate_card_filter_values",
    "reconciliation_to_pb",
    "usage_from_pb",
]


def money_from_pb(money: money_pb2.Money) -> domain.Money:
    return domain.Money(money.currency_code, money.amount_minor)


def _optional_money(parent: Message, name: str) -> domain.Money | None:
    return money_from_pb(getattr(parent, name)) if parent.HasField(name) else None


def money_to_pb(money: domain.Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency, amount_minor=money.minor)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def optional_time(parent: Message, name: str) -> datetime | None:
    """The Timestamp field ``name`` of ``parent`` as an aware datetime; None when the field is absent.

    A present zero value is the epoch, not "unset" as the runtime's ``from_timestamp`` alone reads it: the
    default rate card is in effect since the epoch (config.py).
    """
    if not parent.HasField(name):
        return None
    return from_timestamp(getattr(parent, name)) or _EPOCH


def lane_from_pb(parent: Message, name: str = "lane") -> domain.Lane | None:
    if not parent.HasField(name):
        return None
    lane: lane_pb2.Lane = getattr(parent, name)
    return domain.Lane(lane.origin_region, lane.destination_region)


def card_from_pb(card: rate_card_pb2.RateCard) -> domain.RateCard:
    """The domain card; validation is :func:`domain.validate_rate_card`'s job."""
    detention = None
    if card.HasField("detention"):
        detention = domain.DetentionTerms(
            card.detention.free_time_minutes,
            _optional_money(card.detention, "rate_per_hour"),  # type: ignore[arg-type]  # None: reported
            card.detention.increment_minutes)
    return domain.RateCard(
        currency=card.currency_code,
        default_rate_per_mile=_optional_money(card, "default_rate_per_mile"),  # type: ignore[arg-type]
        effective_time=optional_time(card, "effective_time"),
        lane_rates=tuple(
            domain.LaneRate(lane_from_pb(rate), _optional_money(rate, "rate_per_mile"),  # type: ignore[arg-type]
                            frozenset(rate.equipment), _optional_money(rate, "minimum_charge"))
            for rate in card.lane_rates),
        fuel_surcharge_bps=card.fuel_surcharge_bps,
        minimum_charge=_optional_money(card, "minimum_charge"),
        hazmat_surcharge=_optional_money(card, "hazmat_surcharge"),
        detention=detention,
        expire_time=optional_time(card, "expire_time"),
        display_name=card.display_name,
    )


def _provenance_from_pb(usage: invoice_pb2.Usage) -> domain.Provenance | None:
    if not usage.HasField("provenance"):
        return None
    p = usage.provenance
    source = invoice_pb2.UsageProvenance.Source.Name(p.source).removeprefix("SOURCE_")
    return domain.Provenance(first_sequence=p.first_sequence, last_sequence=p.last_sequence, frames=p.frame_count,
                             gaps=len(p.gaps), bridged_miles=round(sum(g.bridged_miles for g in p.gaps), 1),
                             source=source, telemetry_log_sha256=p.telemetry_log_sha256)


def usage_from_pb(usage: invoice_pb2.Usage) -> domain.Usage:
    basis = invoice_pb2.StopDwell.Basis
    return domain.Usage(
        lane=lane_from_pb(usage),
        miles=usage.miles,
        hours=usage.hours,
        stop_dwells=tuple(
            domain.StopDwell(d.stop_index, d.dwell_minutes,
                             optional_time(d, "arrive_time"), optional_time(d, "depart_time"),
                             basis.Name(d.basis).removeprefix("BASIS_") if d.basis else "")
            for d in usage.stop_dwells),
        provenance=_provenance_from_pb(usage),
    )


def line_figure(line: charge_line_pb2.ChargeLine) -> domain.LineFigure:
    """What estimate-vs-measured compares of a ChargeLine."""
    unit = charge_line_pb2.ChargeUnit.Name(line.unit).removeprefix("CHARGE_UNIT_")
    return domain.LineFigure(line.code, "" if unit == "UNSPECIFIED" else unit, line.quantity,
                             money_from_pb(line.amount))


def estimate_differences_to_pb(differences: list[domain.EstimateDifference]) -> list[invoice_pb2.EstimateDifference]:
    return [invoice_pb2.EstimateDifference(
        code=d.code, unit=charge_line_pb2.ChargeUnit.Value(f"CHARGE_UNIT_{d.unit or 'UNSPECIFIED'}"),
        estimated_quantity=d.estimated_quantity, measured_quantity=d.measured_quantity,
        estimated_amount=money_to_pb(d.estimated), measured_amount=money_to_pb(d.measured),
        difference=money_to_pb(d.difference)) for d in differences]


def line_to_pb(line: domain.ChargeLine) -> charge_line_pb2.ChargeLine:
    return charge_line_pb2.ChargeLine(
        type=charge_line_pb2.ChargeType.Value(f"CHARGE_TYPE_{line.type}"),
        code=line.code,
        description=line.description[:200],
        quantity=float(line.quantity),
        unit=charge_line_pb2.ChargeUnit.Value(f"CHARGE_UNIT_{line.unit or 'UNSPECIFIED'}"),
        unit_price=money_to_pb(line.unit_price) if line.unit_price else None,
        rate_bps=line.rate_bps,
        amount=money_to_pb(line.amount),
    )


def reconciliation_to_pb(result: domain.Reconciliation, tms_total: domain.Money,
                         tms_reference: str) -> invoice_pb2.Reconciliation:
    """The Reconciliation message without ``reconcile_time`` (set by the caller when it commits)."""
    kinds = invoice_pb2.LineDifference.Kind
    return invoice_pb2.Reconciliation(
        result=(invoice_pb2.Reconciliation.RESULT_MATCHED if result.matched
                else invoice_pb2.Reconciliation.RESULT_DISPUTED),
        tms_total=money_to_pb(tms_total),
        total_difference=money_to_pb(result.total_difference),
        line_differences=[
            invoice_pb2.LineDifference(
                code=d.code, kind=kinds.Value(f"KIND_{d.kind}"),
                invoiced_amount=money_to_pb(d.invoiced) if d.invoiced else None,
                tms_amount=money_to_pb(d.tms) if d.tms else None,
                difference=money_to_pb(d.difference))
            for d in result.line_differences],
        tms_reference=tms_reference,
    )


def etag_of(resource: Message) -> str:
    """A version tag of ``resource``: a digest of its content (``etag`` aside), so any change changes it."""
    copy = type(resource)()
    copy.CopyFrom(resource)
    copy.ClearField("etag")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:20]


# --- List filters: the filterable fields (the runtime's AIP-160 grammar) and their values ---------------

RATE_CARD_FILTER = {"currency_code": STRING_FIELD, "effective_time": TIME_FIELD, "expire_time": TIME_FIELD}
INVOICE_FILTER = {"state": enum_field(invoice_pb2.Invoice.State.keys(), prefix="STATE_"), "mission": STRING_FIELD,
                  "tender": STRING_FIELD, "tms_load_id": STRING_FIELD, "issue_time": TIME_FIELD}


def rate_card_filter_values(card: rate_card_pb2.RateCard) -> dict[str, object]:
    return {"currency_code": card.currency_code, "effective_time": optional_time(card, "effective_time"),
            "expire_time": optional_time(card, "expire_time")}


def invoice_filter_values(invoice: invoice_pb2.Invoice) -> dict[str, object]:
    return {"state": invoice_pb2.Invoice.State.Name(invoice.state).removeprefix("STATE_"),
            "mission": invoice.mission, "tender": invoice.tender, "tms_load_id": invoice.tms_load_id,
            "issue_time": optional_time(invoice, "issue_time")}
