"""Events → the facts' hash fields, hash fields → domain facts, and the domain report → GetKpiReportResponse.

The hash fields of a mission (store.py keeps them):

* ``lane`` ``ORIGIN>DESTINATION``; ``dispatch``, ``ack``, ``arrive`` ms since the epoch; ``window``
  ``start_ms/end_ms`` of the delivery stop; ``outcome`` COMPLETED / ABORTED / CANCELLED;
* ``exc:<exception id>`` ``KIND CONTINGENCY`` (enum names without their prefixes);
* ``inv_miles``, ``inv_total`` (minor units), ``inv_currency``: the invoice;
* ``tel_frames``, ``tel_missing``, ``tel_fresh_p95_ms``: the telemetry provenance of the invoice's usage.

Each field is set from what an event says and never changes meaning afterwards (a dispatch time, a terminal
outcome, an exception's kind), so the events can be applied in any order, any number of times.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf import duration_pb2

from haulmesh.billing.v1 import invoice_pb2, report_service_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import lane_pb2, money_pb2
from services.runtime import to_timestamp

from ..domain import Lane, Money
from . import domain

__all__ = ["exception_fields", "invoice_fields", "lane_from_pb", "mission_facts", "mission_fields", "report_to_pb",
           "tender_facts", "tender_fields"]

Mission = mission_pb2.Mission
Exception_ = mission_pb2.MissionException
_TERMINAL = {Mission.STATE_COMPLETED: domain.COMPLETED, Mission.STATE_ABORTED: domain.ABORTED,
             Mission.STATE_CANCELLED: domain.CANCELLED}
_KIND_NUMBER = {name.removeprefix("KIND_"): number for name, number in Exception_.Kind.items()}


def _ms(timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


def _lane_text(lane: lane_pb2.Lane) -> str:
    return f"{lane.origin_region}>{lane.destination_region}"


def lane_from_pb(lane: lane_pb2.Lane) -> Lane:
    return Lane(lane.origin_region, lane.destination_region)


def _lane_from_text(text: str | None) -> Lane | None:
    if not text or ">" not in text:
        return None
    origin, _, destination = text.partition(">")
    return Lane(origin, destination)


# --- events → fields -----------------------------------------------------------------------------------


def exception_fields(exception: mission_pb2.MissionException) -> dict[str, str]:
    kind = Exception_.Kind.Name(exception.kind).removeprefix("KIND_")
    contingency = Exception_.Contingency.Name(exception.contingency).removeprefix("CONTINGENCY_")
    return {f"exc:{exception.exception_id}": f"{kind} {contingency}"}


def mission_fields(mission: Mission) -> tuple[dict[str, str], int | None]:
    """The facts a mission snapshot gives, and its dispatch time (ms) for the index (None if it has none)."""
    fields: dict[str, str] = {}
    if mission.HasField("lane"):
        fields["lane"] = _lane_text(mission.lane)
    dispatch = _ms(mission.dispatch_time) if mission.HasField("dispatch_time") else None
    if dispatch is not None:
        fields["dispatch"] = str(dispatch)
    if mission.HasField("dispatch_ack_time"):
        fields["ack"] = str(_ms(mission.dispatch_ack_time))
    if mission.state in _TERMINAL:
        fields["outcome"] = _TERMINAL[mission.state]
    deliveries = [s for s in mission.stops if s.type == mission_pb2.Stop.TYPE_DELIVERY]
    if deliveries:
        delivery = deliveries[-1]
        window = delivery.planned_window
        if window.HasField("start_time") and window.HasField("end_time"):
            fields["window"] = f"{_ms(window.start_time)}/{_ms(window.end_time)}"
        if delivery.HasField("arrive_time"):
            fields["arrive"] = str(_ms(delivery.arrive_time))
    for exception in mission.exceptions:
        fields.update(exception_fields(exception))
    return fields, dispatch


def invoice_fields(invoice: invoice_pb2.Invoice) -> dict[str, str]:
    """The invoice's measured miles and total, and its usage's telemetry provenance when it has one."""
    fields = {"inv_miles": repr(invoice.usage.miles), "inv_total": str(invoice.total.amount_minor),
              "inv_currency": invoice.total.currency_code}
    if invoice.usage.HasField("provenance"):
        provenance = invoice.usage.provenance
        fields["tel_frames"] = str(provenance.frame_count)
        fields["tel_missing"] = str(provenance.frames_missing)
        # Freshness is optional in the provenance (0 = not measured): a real p95 of 0 s does not happen over a
        # network, and counting "not measured" as perfectly fresh would flatter the figure.
        if provenance.freshness_p95_seconds > 0:
            fields["tel_fresh_p95_ms"] = str(round(provenance.freshness_p95_seconds * 1000))
    return fields


def tender_fields(tender: tender_pb2.Tender) -> tuple[dict[str, str], dict[str, str], int]:
    """(fields, first-offer-only fields, creation ms) of an offered tender."""
    fields = {"create": str(_ms(tender.create_time))}
    if tender.HasField("lane"):
        fields["lane"] = _lane_text(tender.lane)
    once = {"offer": str(_ms(tender.offer.create_time))} if tender.offer.HasField("create_time") else {}
    return fields, once, _ms(tender.create_time)


# --- fields → facts ------------------------------------------------------------------------------------


def _int(fields: Mapping[str, str], name: str) -> int | None:
    value = fields.get(name)
    return int(value) if value not in (None, "") else None


def mission_facts(mission_id: str, fields: Mapping[str, str]) -> domain.MissionFacts | None:
    """The facts of a mission's hash; None when it has no dispatch time (not a mission the window can hold)."""
    dispatch = _int(fields, "dispatch")
    if dispatch is None:
        return None
    window = None
    if fields.get("window"):
        start, _, end = fields["window"].partition("/")  # "/": a time before 1970 is negative
        window = (int(start), int(end))
    exceptions = {}
    for name, value in fields.items():
        if name.startswith("exc:"):
            kind, _, contingency = value.partition(" ")
            exceptions[name.removeprefix("exc:")] = (kind, contingency)
    invoice = None
    if "inv_total" in fields:
        invoice = domain.Invoiced(float(fields.get("inv_miles") or 0.0),
                                  Money(fields.get("inv_currency", ""), int(fields["inv_total"])))
    telemetry = None
    if "tel_frames" in fields:
        telemetry = domain.Telemetry(int(fields["tel_frames"]), _int(fields, "tel_missing") or 0,
                                     _int(fields, "tel_fresh_p95_ms"))
    return domain.MissionFacts(
        mission_id=mission_id, lane=_lane_from_text(fields.get("lane")), dispatch_ms=dispatch,
        ack_ms=_int(fields, "ack"), outcome=fields.get("outcome"), exceptions=exceptions,
        delivery_window_ms=window, delivery_arrive_ms=_int(fields, "arrive"), invoice=invoice, telemetry=telemetry)


def tender_facts(tender_id: str, fields: Mapping[str, str]) -> domain.TenderFacts | None:
    create = _int(fields, "create")
    if create is None:
        return None
    return domain.TenderFacts(tender_id, _lane_from_text(fields.get("lane")), create, _int(fields, "offer"))


# --- report → proto ------------------------------------------------------------------------------------


def _money(money: Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency, amount_minor=money.minor)


def _duration(ms: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(ms)
    return duration


def _latency(p: domain.Percentiles) -> report_service_pb2.LatencyPercentiles:
    out = report_service_pb2.LatencyPercentiles(count=p.count)
    if p.count:
        out.p50.CopyFrom(_duration(p.p50))
        out.p95.CopyFrom(_duration(p.p95))
        out.p99.CopyFrom(_duration(p.p99))
    return out


def _row(row: domain.KpiRow) -> report_service_pb2.KpiRow:
    out = report_service_pb2.KpiRow(
        missions=row.missions, missions_completed=row.missions_completed, missions_aborted=row.missions_aborted,
        missions_cancelled=row.missions_cancelled, missions_in_progress=row.missions_in_progress,
        takeovers=row.takeovers, minimal_risk_stops=row.minimal_risk_stops,
        exceptions_by_kind=[report_service_pb2.ExceptionCount(kind=_KIND_NUMBER.get(kind, 0), count=count)
                            for kind, count in sorted(row.exceptions_by_kind.items(),
                                                      key=lambda item: _KIND_NUMBER.get(item[0], 0))],
        dispatch_ack_latency=_latency(row.dispatch_ack_latency_ms),
        tender_to_offer_latency=_latency(row.tender_to_offer_latency_ms),
        telemetry_missions=row.telemetry_missions, arrivals=row.arrivals, invoiced_missions=row.invoiced_missions,
        measured_miles=row.measured_miles,
        unavailable=[report_service_pb2.UnavailableKpi(kpi=kpi, reason=reason) for kpi, reason in row.unavailable])
    if row.lane is not None:
        out.lane.CopyFrom(lane_pb2.Lane(origin_region=row.lane.origin, destination_region=row.lane.destination))
    for name in ("success_rate", "handovers_per_mission", "packet_loss_ratio", "on_time_arrival_rate",
                 "cost_per_mile_vs_baseline_bps"):
        if getattr(row, name) is not None:
            setattr(out, name, getattr(row, name))
    if row.telemetry_freshness_p95_ms is not None:
        out.telemetry_freshness_p95.CopyFrom(_duration(row.telemetry_freshness_p95_ms))
    for name in ("invoiced_total", "measured_cost_per_mile", "cost_per_mile_vs_baseline"):
        if getattr(row, name) is not None:
            getattr(out, name).CopyFrom(_money(getattr(row, name)))
    return out


def report_to_pb(carrier_id: str, report: domain.Report, *, start: datetime, end: datetime, baseline: Money | None,
                 now: datetime) -> report_service_pb2.GetKpiReportResponse:
    """The response of a computed report over [start, end) (aware datetimes), generated at ``now``."""
    out = report_service_pb2.GetKpiReportResponse(carrier=f"carriers/{carrier_id}", rows=[_row(r) for r in report.rows],
                                                  total=_row(report.total), generate_time=to_timestamp(now))
    out.window.start_time.CopyFrom(to_timestamp(start))
    out.window.end_time.CopyFrom(to_timestamp(end))
    if baseline is not None:
        out.baseline_cost_per_mile.CopyFrom(_money(baseline))
    return out
