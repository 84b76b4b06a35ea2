"""The KPI report's rules, plain Python: compact facts per mission and per tender → one row per lane.

Facts are what the projection (workers.py) keeps from the events; a report is a pure function of the facts
in its window, the optional lane filter and the optional baseline cost per mile, so it can be checked
against figures worked out by hand (tests/billing/reports/test_domain.py).

Definitions (also in protos/haulmesh/billing/v1/report_service.proto and docs/billing.md):

* a mission belongs to the window of its dispatch time, a tender to the window of its creation time;
* success rate = completed / (completed + aborted); a mission cancelled before departure is neither;
* handovers = exceptions whose contingency is HUMAN_TAKEOVER (takeovers) or MINIMAL_RISK_STOP;
* percentiles are nearest-rank (the value at rank ceil(p/100 x n) of the n sorted values): always a
  measured value, no interpolation between two missions that did not happen;
* on time = the delivery stop reached within its window [start, end); arriving early is not on time;
* cost per mile = sum of invoice totals / sum of measured miles (a ratio of sums, so a short mission does
  not weigh as much as a long one), rounded half to even to the minor unit like every amount;
* packet loss = frames missing / (frames stored + frames missing), summed over the missions;
* telemetry freshness p95 = nearest-rank p95 of the missions' own p95 freshness (their invoices carry a
  p95 per mission, not the frames' individual freshness).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from services.runtime import FailedPrecondition, FieldViolation, InvalidArgument
from services.runtime.limits import KPI_BASELINE_MINOR

from ..domain import _CURRENCY, _REGION, Lane, Money, exact_quantity

__all__ = [
    "ABORTED",
    "CANCELLED",
    "COMPLETED",
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "MINIMAL_RISK_STOP",
    "TAKEOVER",
    "Invoiced",
    "KpiRow",
    "MissionFacts",
    "Percentiles",
    "Report",
    "Telemetry",
    "TenderFacts",
    "build_report",
    "check_report_size",
    "nearest_rank",
    "percentiles",
    "resolve_window",
    "validate_baseline",
    "validate_lane",
]

#: The longest window one report covers (a year, leap day included).
MAX_WINDOW = timedelta(days=366)
#: The window when the request gives no start.
DEFAULT_WINDOW = timedelta(days=30)

#: Terminal mission outcomes the report counts (Mission.State names without the prefix).
COMPLETED, ABORTED, CANCELLED = "COMPLETED", "ABORTED", "CANCELLED"
#: The contingencies that hand the truck over (MissionException.Contingency names without the prefix).
TAKEOVER, MINIMAL_RISK_STOP = "HUMAN_TAKEOVER", "MINIMAL_RISK_STOP"

_MIN_BASELINE_MINOR, _MAX_BASELINE_MINOR = KPI_BASELINE_MINOR


@dataclass(frozen=True)
class Invoiced:
    """What a mission's invoice says: measured miles and the total billed."""

    miles: float
    total: Money


@dataclass(frozen=True)
class Telemetry:
    """The telemetry provenance of a mission's invoice: frames stored, frames missing, p95 freshness."""

    frames: int
    frames_missing: int
    freshness_p95_ms: int | None = None


@dataclass(frozen=True)
class MissionFacts:
    """The compact facts of one mission (times in ms since the epoch)."""

    mission_id: str
    lane: Lane | None
    dispatch_ms: int
    ack_ms: int | None = None
    #: COMPLETED, ABORTED or CANCELLED once ended; None while in progress.
    outcome: str | None = None
    #: exception id → (kind, contingency), enum names without their prefix (e.g. ("SENSOR_FAULT", "REROUTE")).
    exceptions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: The delivery stop's window [start, end) in ms, if it has one.
    delivery_window_ms: tuple[int, int] | None = None
    delivery_arrive_ms: int | None = None
    invoice: Invoiced | None = None
    telemetry: Telemetry | None = None


@dataclass(frozen=True)
class TenderFacts:
    """When a tender was created and when the fleet first offered for it (ms since the epoch)."""

    tender_id: str
    lane: Lane | None
    create_ms: int
    offer_ms: int | None = None


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank p50, p95 and p99 of ``count`` values (None when there are none)."""

    count: int
    p50: int | None = None
    p95: int | None = None
    p99: int | None = None


@dataclass(frozen=True)
class KpiRow:
    """The KPIs of one lane (``lane`` None: all lanes). A figure that cannot be computed is None and is named
    in ``unavailable`` with the reason."""

    lane: Lane | None
    missions: int = 0
    missions_completed: int = 0
    missions_aborted: int = 0
    missions_cancelled: int = 0
    missions_in_progress: int = 0
    success_rate: float | None = None
    takeovers: int = 0
    minimal_risk_stops: int = 0
    handovers_per_mission: float | None = None
    exceptions_by_kind: Mapping[str, int] = field(default_factory=dict)
    dispatch_ack_latency_ms: Percentiles = Percentiles(0)
    tender_to_offer_latency_ms: Percentiles = Percentiles(0)
    telemetry_missions: int = 0
    telemetry_freshness_p95_ms: int | None = None
    packet_loss_ratio: float | None = None
    arrivals: int = 0
    on_time_arrival_rate: float | None = None
    invoiced_missions: int = 0
    measured_miles: float = 0.0
    invoiced_total: Money | None = None
    measured_cost_per_mile: Money | None = None
    cost_per_mile_vs_baseline: Money | None = None
    cost_per_mile_vs_baseline_bps: int | None = None
    unavailable: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Report:
    """Rows per lane (lane order) and the row of every lane together."""

    rows: tuple[KpiRow, ...]
    total: KpiRow


# --- input ---------------------------------------------------------------------------------------------


def resolve_window(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The window [start, end): ``end`` defaults to ``now``, ``start`` to :data:`DEFAULT_WINDOW` before ``end``.

    INVALID_ARGUMENT when ``end`` is not after ``start`` or the window is longer than :data:`MAX_WINDOW`.
    """
    if end is None and start is not None and start >= now:
        raise InvalidArgument("start_time must be before end_time, which defaults to now", violations=[
            FieldViolation("start_time", f"must be before end_time (default: now, {now.isoformat()})")])
    end = end or now
    start = start or end - DEFAULT_WINDOW
    if end <= start:
        raise InvalidArgument("end_time must be after start_time", violations=[
            FieldViolation("end_time", f"must be after start_time ({start.isoformat()})")])
    if end - start > MAX_WINDOW:
        raise InvalidArgument(f"the window is longer than {MAX_WINDOW.days} days", violations=[
            FieldViolation("end_time", f"must be at most {MAX_WINDOW.days} days after start_time")])
    return start, end


def validate_lane(lane: Lane | None, *, path: str = "lane") -> None:
    """INVALID_ARGUMENT unless both market codes look like US-TX-HOU (a lane filter names both ends)."""
    if lane is None:
        return
    bad = [FieldViolation(f"{path}.{name}", "must be a market code such as US-TX-HOU")
           for name, value in (("origin_region", lane.origin), ("destination_region", lane.destination))
           if not _REGION.fullmatch(value)]
    if bad:
        raise InvalidArgument("invalid lane filter", violations=bad)


def validate_baseline(baseline: Money | None, *, path: str = "baseline_cost_per_mile") -> None:
    """INVALID_ARGUMENT unless the baseline is a positive amount in an ISO 4217 code."""
    if baseline is None:
        return
    bad = []
    if not _CURRENCY.fullmatch(baseline.currency):
        bad.append(FieldViolation(f"{path}.currency_code", "must be an ISO 4217 code such as USD"))
    if not _MIN_BASELINE_MINOR <= baseline.minor <= _MAX_BASELINE_MINOR:
        bad.append(FieldViolation(f"{path}.amount_minor",
                                  f"must be in [{_MIN_BASELINE_MINOR}, {_MAX_BASELINE_MINOR}] minor units"))
    if bad:
        raise InvalidArgument("invalid baseline cost per mile", violations=bad)


def check_report_size(found: int, limit: int, what: str) -> None:
    """FAILED_PRECONDITION (REPORT_TOO_LARGE) when the window holds more than ``limit`` of ``what``.

    The count is of the whole window, every lane: the facts are indexed by time only, and reading past the
    limit to filter by lane first would make the read unbounded. So the advice is a shorter window; a lane
    filter would not help, and the message does not suggest it."""
    if found > limit:
        raise FailedPrecondition(f"the window holds more than {limit} {what} (all lanes counted, before any lane "
                                 "filter); ask for a shorter window",
                                 reason="REPORT_TOO_LARGE", metadata={"limit": str(limit), "what": what})


# --- figures -------------------------------------------------------------------------------------------


def nearest_rank(ordered: Sequence[int], p: int) -> int:
    """The nearest-rank ``p``-th percentile (0 < p ≤ 100) of the non-empty ascending ``ordered``."""
    rank = max(1, math.ceil(Fraction(p, 100) * len(ordered)))  # exact: no float rounding at the boundary
    return ordered[rank - 1]


def percentiles(values: Iterable[int]) -> Percentiles:
    """p50, p95 and p99 of ``values`` by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return Percentiles(0)
    return Percentiles(len(ordered), nearest_rank(ordered, 50), nearest_rank(ordered, 95), nearest_rank(ordered, 99))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _row(lane: Lane | None, missions: Sequence[MissionFacts], tenders: Sequence[TenderFacts],
         baseline: Money | None) -> KpiRow:
    unavailable: list[tuple[str, str]] = []
    outcomes = Counter(m.outcome for m in missions)
    completed, aborted, cancelled = outcomes[COMPLETED], outcomes[ABORTED], outcomes[CANCELLED]
    if not completed + aborted:
        unavailable.append(("success_rate", "no mission in the window has completed or aborted"))

    contingencies = Counter(c for m in missions for _, c in m.exceptions.values())
    kinds = Counter(k for m in missions for k, _ in m.exceptions.values())
    takeovers, stops = contingencies[TAKEOVER], contingencies[MINIMAL_RISK_STOP]
    if not missions:
        unavailable.append(("handovers_per_mission", "no mission in the window"))

    acks = percentiles(m.ack_ms - m.dispatch_ms for m in missions if m.ack_ms is not None)
    offers = percentiles(t.offer_ms - t.create_ms for t in tenders if t.offer_ms is not None)

    measured = [m.telemetry for m in missions if m.telemetry is not None]
    frames = sum(t.frames for t in measured)
    missing = sum(t.frames_missing for t in measured)
    fresh = [t.freshness_p95_ms for t in measured if t.freshness_p95_ms is not None]
    if not measured:
        unavailable.append(("packet_loss_ratio", "no invoice in the window carries telemetry provenance"))
    if not fresh:
        unavailable.append(("telemetry_freshness_p95", "no invoice in the window carries telemetry freshness"))

    arrived = [m for m in missions if m.delivery_arrive_ms is not None and m.delivery_window_ms is not None]
    on_time = sum(1 for m in arrived if m.delivery_window_ms[0] <= m.delivery_arrive_ms < m.delivery_window_ms[1])
    if not arrived:
        unavailable.append(("on_time_arrival_rate", "no mission in the window has arrived at a delivery window"))

    invoiced = [m.invoice for m in missions if m.invoice is not None]
    miles = sum((exact_quantity(i.miles) for i in invoiced), Decimal(0))
    currencies = sorted({i.total.currency for i in invoiced})
    total = cost = versus = versus_bps = None
    if not invoiced:
        unavailable.append(("measured_cost_per_mile", "no mission in the window is invoiced"))
    elif len(currencies) > 1:
        unavailable.append(("measured_cost_per_mile", f"invoices in several currencies ({', '.join(currencies)})"))
    else:
        total = Money(currencies[0], sum(i.total.minor for i in invoiced))
        if miles <= 0:
            unavailable.append(("measured_cost_per_mile", "the invoiced missions measured no miles"))
        else:
            exact = Fraction(total.minor) / Fraction(miles)
            cost = Money(total.currency, round(exact))  # round() of a Fraction: half to even, exactly
            if baseline is not None and baseline.currency != total.currency:
                unavailable.append(("cost_per_mile_vs_baseline",
                                    f"the baseline is in {baseline.currency}, the invoices in {total.currency}"))
            elif baseline is not None:
                versus = Money(total.currency, cost.minor - baseline.minor)
                versus_bps = round((exact - baseline.minor) / baseline.minor * 10_000)
    if baseline is None:
        unavailable.append(("cost_per_mile_vs_baseline", "no baseline cost per mile was given"))

    return KpiRow(
        lane=lane, missions=len(missions), missions_completed=completed, missions_aborted=aborted,
        missions_cancelled=cancelled, missions_in_progress=len(missions) - completed - aborted - cancelled,
        success_rate=_rate(completed, completed + aborted), takeovers=takeovers, minimal_risk_stops=stops,
        handovers_per_mission=_rate(takeovers + stops, len(missions)), exceptions_by_kind=dict(sorted(kinds.items())),
        dispatch_ack_latency_ms=acks, tender_to_offer_latency_ms=offers, telemetry_missions=len(measured),
        telemetry_freshness_p95_ms=nearest_rank(sorted(fresh), 95) if fresh else None,
        packet_loss_ratio=_rate(missing, frames + missing) if measured else None,
        arrivals=len(arrived), on_time_arrival_rate=_rate(on_time, len(arrived)),
        invoiced_missions=len(invoiced), measured_miles=float(miles), invoiced_total=total,
        measured_cost_per_mile=cost, cost_per_mile_vs_baseline=versus, cost_per_mile_vs_baseline_bps=versus_bps,
        unavailable=tuple(unavailable))


def _lane_key(lane: Lane | None) -> tuple[str, str]:
    return (lane.origin, lane.destination) if lane is not None else ("", "")


def build_report(missions: Iterable[MissionFacts], tenders: Iterable[TenderFacts], *, start_ms: int, end_ms: int,
                 lane: Lane | None = None, baseline: Money | None = None) -> Report:
    """The report of the facts in the window [start_ms, end_ms) (missions by dispatch, tenders by creation),
    of ``lane`` only when given, compared with ``baseline`` when given."""
    def wanted(fact_lane: Lane | None, at_ms: int) -> bool:
        return start_ms <= at_ms < end_ms and (lane is None or fact_lane == lane)

    chosen = [m for m in missions if wanted(m.lane, m.dispatch_ms)]
    offered = [t for t in tenders if wanted(t.lane, t.create_ms)]
    # A fact without a lane (none is expected: missions and offered tenders always have one) counts in the
    # total only.
    lanes = sorted(({m.lane for m in chosen} | {t.lane for t in offered}) - {None}, key=_lane_key)
    rows = tuple(_row(each, [m for m in chosen if m.lane == each], [t for t in offered if t.lane == each], baseline)
                 for each in lanes)
    return Report(rows=rows, total=_row(None, chosen, offered, baseline))
