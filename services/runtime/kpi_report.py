"""``haulmesh report``: the pilot's KPI report (billing's ReportService) as a table, CSV or JSON.

    haulmesh report [--carrier C ...] [--since T] [--until T] [--lane ORIGIN:DESTINATION]
                    [--baseline CURRENCY:AMOUNT] [--format table|csv|json]

The command calls the billing service over mTLS as the operator (the ``operator-cli`` certificate of the
certificate folder), naming each carrier in the ``haulmesh-carrier`` metadata; the billing address is
``HAULMESH_BILLING_ADDR`` (default 127.0.0.1:50054), read where the CLI reads every service address (cli.py's
``service_address``). Without ``--carrier`` it reports every carrier that has an event stream in the store
(``REDIS_URL``, or the embedded store of the state folder).

Times (``--since``, ``--until``) are RFC 3339 (``2026-11-01T00:00:00Z``), a date (``2026-11-01``: midnight UTC) or
an age (``30d``, ``12h``, ``90m``: that long before now). JSON is the service's proto-JSON (one object for one
``--carrier``, else a list); CSV has one line per carrier and lane plus a line ``ALL`` per carrier, with rates
as fractions, latencies in seconds and amounts in major units beside their currency.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from haulmesh.billing.v1 import report_service_pb2, report_service_pb2_grpc
from haulmesh.mission.v1 import mission_pb2
from haulmesh.type.v1 import lane_pb2, money_pb2

from ._config import TlsConfig
from ._events import STREAMS_KEY
from ._keys import FLEET, carrier_metadata
from ._status import describe_rpc_error
from ._store import connect_async
from ._tls import CertificateFiles, client_credentials
from .money import format_minor, minor_unit_exponent

__all__ = ["add_parser", "csv_lines", "parse_baseline", "parse_lane", "parse_time", "table"]

_AGE = re.compile(r"^(\d{1,5})([dhm])$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_KIND = mission_pb2.MissionException.Kind
Response = report_service_pb2.GetKpiReportResponse
Row = report_service_pb2.KpiRow


# --- arguments -----------------------------------------------------------------------------------------


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An RFC 3339 time, a date (midnight UTC) or an age before ``now`` (``30d``, ``12h``, ``90m``)."""
    now = now or datetime.now(UTC)
    age = _AGE.fullmatch(text)
    if age:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[age.group(2)]
        return now - timedelta(**{unit: int(age.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: give 2026-11-01T00:00:00Z, 2026-11-01 or an "
                                         "age such as 30d, 12h, 90m") from None
    if _DATE.fullmatch(text):
        return when.replace(tzinfo=UTC)
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or an offset such as +02:00")
    return when.astimezone(UTC)


def parse_lane(text: str) -> lane_pb2.Lane:
    """``US-TX-HOU:US-GA-ATL`` (the service checks the market codes)."""
    origin, sep, destination = text.partition(":")
    if not sep or not origin or not destination:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lane: give ORIGIN:DESTINATION such as "
                                         "US-TX-HOU:US-GA-ATL")
    return lane_pb2.Lane(origin_region=origin.upper(), destination_region=destination.upper())


def parse_baseline(text: str) -> money_pb2.Money:
    """``USD:2.10`` → USD 210 minor units (exactly: an amount finer than the currency's minor unit is refused)."""
    currency, sep, amount = text.partition(":")
    currency = currency.upper()
    try:
        value = Decimal(amount)
    except InvalidOperation:
        value = None
    if not sep or value is None or not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a cost per mile: give CURRENCY:AMOUNT such as USD:2.10")
    minor = value.scaleb(minor_unit_exponent(currency))
    if minor != minor.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r}: {currency} has {minor_unit_exponent(currency)} decimals")
    return money_pb2.Money(currency_code=currency, amount_minor=int(minor))


def add_parser(sub: Any, *, cert_dir: Callable[[argparse.Namespace], Path], store_url: Callable[[], str],
               address: Callable[[str], str]) -> None:
    """The ``report`` sub-command of ``haulmesh`` (``sub``: the CLI's sub-parsers; ``address(service)`` gives
    a service's host:port, as the CLI reads it)."""
    r = sub.add_parser("report", help="the pilot's KPI report per carrier and lane (table, CSV or JSON)",
                       description=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--carrier", action="append", default=[],
                   help="carrier id, e.g. russell-transport (repeatable; default: every carrier with events)")
    r.add_argument("--since", type=parse_time, help="window start (default: 30 days before --until)")
    r.add_argument("--until", type=parse_time, help="window end, exclusive (default: now)")
    r.add_argument("--lane", type=parse_lane, help="only this lane, ORIGIN:DESTINATION (US-TX-HOU:US-GA-ATL)")
    r.add_argument("--baseline", type=parse_baseline, help="baseline cost per mile, CURRENCY:AMOUNT (USD:2.10)")
    r.add_argument("--format", choices=["table", "csv", "json"], default="table")
    r.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    r.set_defaults(func=lambda a: asyncio.run(_report(a, cert_dir(a), store_url, address("billing"))))


# --- the call ------------------------------------------------------------------------------------------


async def _carriers(store_url: Callable[[], str]) -> list[str]:
    client = connect_async(store_url())
    try:
        streams = await client.smembers(STREAMS_KEY)
    finally:
        await client.aclose()
    tags = (s.decode().removeprefix("events:{").removesuffix("}") for s in streams)
    return sorted(t for t in tags if t != FLEET)


async def _report(args: argparse.Namespace, certs: Path, store_url: Callable[[], str], address: str) -> int:
    carriers = args.carrier or await _carriers(store_url)
    if not carriers:
        print("haulmesh report: no carrier has events in the store; name one with --carrier", file=sys.stderr)
        return 2
    request = report_service_pb2.GetKpiReportRequest()
    if args.since:
        request.start_time.FromDatetime(args.since)
    if args.until:
        request.end_time.FromDatetime(args.until)
    if args.lane:
        request.lane.CopyFrom(args.lane)
    if args.baseline:
        request.baseline_cost_per_mile.CopyFrom(args.baseline)
    credentials = client_credentials(CertificateFiles(TlsConfig(
        certs / "ca.pem", certs / "operator-cli.pem", certs / "operator-cli-key.pem")))
    responses: list[Response] = []
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = report_service_pb2_grpc.ReportServiceStub(channel)
        for carrier in carriers:
            try:
                responses.append(await stub.GetKpiReport(request, metadata=carrier_metadata(carrier),
                                                         timeout=args.timeout))
            except grpc.aio.AioRpcError as exc:
                print(f"haulmesh report: carriers/{carrier}: {describe_rpc_error(exc)}", file=sys.stderr)
                return 2 if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                           grpc.StatusCode.FAILED_PRECONDITION) else 1
    if args.format == "json":
        documents = [json_format.MessageToDict(r) for r in responses]
        print(json.dumps(documents[0] if len(args.carrier) == 1 else documents, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows(csv_lines(responses))
    else:
        print("\n\n".join(table(r) for r in responses))
    return 0


# --- output --------------------------------------------------------------------------------------------


def _lane(row: Row) -> str:
    return f"{row.lane.origin_region}>{row.lane.destination_region}" if row.HasField("lane") else "ALL"


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _optional(row: Row, name: str) -> float | None:
    return getattr(row, name) if row.HasField(name) else None


def _amount(money: money_pb2.Money) -> str:
    """Major units as a plain decimal (``3.67``), for CSV."""
    return str(Decimal(money.amount_minor).scaleb(-minor_unit_exponent(money.currency_code)))


def _exceptions(row: Row) -> str:
    return ";".join(f"{_KIND.Name(e.kind).removeprefix('KIND_')}={e.count}" for e in row.exceptions_by_kind)


def _percentile(latency: str, p: str) -> Callable[[Row], float | None]:
    def get(row: Row) -> float | None:
        measured = getattr(row, latency)
        return _seconds(getattr(measured, p)) if measured.count else None
    return get


#: CSV columns: name, value of a row (None: empty cell, the figure is unavailable).
_COLUMNS: list[tuple[str, Callable[[Row], Any]]] = [
    ("missions", lambda r: r.missions),
    ("completed", lambda r: r.missions_completed),
    ("aborted", lambda r: r.missions_aborted),
    ("cancelled", lambda r: r.missions_cancelled),
    ("in_progress", lambda r: r.missions_in_progress),
    ("success_rate", lambda r: _optional(r, "success_rate")),
    ("takeovers", lambda r: r.takeovers),
    ("minimal_risk_stops", lambda r: r.minimal_risk_stops),
    ("handovers_per_mission", lambda r: _optional(r, "handovers_per_mission")),
    ("exceptions_by_kind", _exceptions),
    *[(f"{short}_{p}_s", _percentile(name, p))
      for short, name in (("dispatch_ack", "dispatch_ack_latency"), ("tender_to_offer", "tender_to_offer_latency"))
      for p in ("p50", "p95", "p99")],
    ("dispatch_acks", lambda r: r.dispatch_ack_latency.count),
    ("tenders_offered", lambda r: r.tender_to_offer_latency.count),
    ("telemetry_missions", lambda r: r.telemetry_missions),
    ("telemetry_freshness_p95_s", lambda r: _seconds(r.telemetry_freshness_p95)
     if r.HasField("telemetry_freshness_p95") else None),
    ("packet_loss_ratio", lambda r: _optional(r, "packet_loss_ratio")),
    ("arrivals", lambda r: r.arrivals),
    ("on_time_arrival_rate", lambda r: _optional(r, "on_time_arrival_rate")),
    ("invoiced_missions", lambda r: r.invoiced_missions),
    ("measured_miles", lambda r: r.measured_miles),
    ("currency", lambda r: r.invoiced_total.currency_code or None),
    ("invoiced_total", lambda r: _amount(r.invoiced_total) if r.HasField("invoiced_total") else None),
    ("measured_cost_per_mile", lambda r: _amount(r.measured_cost_per_mile)
     if r.HasField("measured_cost_per_mile") else None),
    ("cost_per_mile_vs_baseline", lambda r: _amount(r.cost_per_mile_vs_baseline)
     if r.HasField("cost_per_mile_vs_baseline") else None),
    ("cost_per_mile_vs_baseline_bps", lambda r: _optional(r, "cost_per_mile_vs_baseline_bps")),
]


def csv_lines(responses: list[Response]) -> list[list[str]]:
    """The header and one line per carrier and lane (the carrier's ``ALL`` line after its lanes)."""
    lines = [["carrier", "window_start", "window_end", "lane", *(name for name, _ in _COLUMNS)]]
    for response in responses:
        head = [response.carrier.removeprefix("carriers/"), response.window.start_time.ToJsonString(),
                response.window.end_time.ToJsonString()]
        for row in [*response.rows, response.total]:
            values = [get(row) for _, get in _COLUMNS]
            lines.append([*head, _lane(row), *("" if v is None else str(v) for v in values)])
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _latency(p: report_service_pb2.LatencyPercentiles) -> str:
    if not p.count:
        return "n/a"
    return f"{_human(_seconds(p.p50))} / {_human(_seconds(p.p95))} / {_human(_seconds(p.p99))} (n={p.count})"


def _human(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _money(row: Row, name: str) -> str:
    if not row.HasField(name):
        return "n/a"
    money = getattr(row, name)
    return format_minor(money.currency_code, money.amount_minor)


#: Table lines: label, text of a row.
_LINES: list[tuple[str, Callable[[Row], str]]] = [
    ("missions", lambda r: f"{r.missions}"),
    ("  completed / aborted", lambda r: f"{r.missions_completed} / {r.missions_aborted}"),
    ("  cancelled / in progress", lambda r: f"{r.missions_cancelled} / {r.missions_in_progress}"),
    ("success rate", lambda r: _percent(_optional(r, "success_rate"))),
    ("handovers (takeover / MRS)", lambda r: f"{r.takeovers + r.minimal_risk_stops} "
                                             f"({r.takeovers} / {r.minimal_risk_stops})"),
    ("handovers per mission", lambda r: "n/a" if not r.HasField("handovers_per_mission")
     else f"{r.handovers_per_mission:.3f}"),
    ("exceptions by kind", lambda r: _exceptions(r).replace(";", " ") or "none"),
    ("dispatch ack p50/p95/p99", lambda r: _latency(r.dispatch_ack_latency)),
    ("tender to offer p50/p95/p99", lambda r: _latency(r.tender_to_offer_latency)),
    ("telemetry freshness p95", lambda r: _human(_seconds(r.telemetry_freshness_p95))
     if r.HasField("telemetry_freshness_p95") else "n/a"),
    ("packet loss", lambda r: "n/a" if not r.HasField("packet_loss_ratio") else f"{r.packet_loss_ratio * 100:.3f}%"),
    ("on-time arrival", lambda r: f"{_percent(r.on_time_arrival_rate)} of {r.arrivals}"
     if r.HasField("on_time_arrival_rate") else "n/a"),
    ("invoiced missions / miles", lambda r: f"{r.invoiced_missions} / {r.measured_miles:.1f} mi"),
    ("invoiced total", lambda r: _money(r, "invoiced_total")),
    ("cost per mile (measured)", lambda r: _money(r, "measured_cost_per_mile")),
    ("  vs baseline", lambda r: _money(r, "cost_per_mile_vs_baseline")
     + ("" if not r.HasField("cost_per_mile_vs_baseline_bps")
        else f" ({r.cost_per_mile_vs_baseline_bps / 100:+.2f}%)")),
]


def table(response: Response) -> str:
    """The report for people: one column per lane and one for all lanes, the reasons for n/a below."""
    rows = [*response.rows, response.total]
    baseline = response.baseline_cost_per_mile
    title = (f"KPI report {response.carrier}  {response.window.start_time.ToJsonString()} .. "
             f"{response.window.end_time.ToJsonString()}"
             + (f"  baseline {format_minor(baseline.currency_code, baseline.amount_minor)}/mi"
                if response.HasField("baseline_cost_per_mile") else ""))
    grid = [["", *(_lane(r) for r in rows)], *([label, *(text(r) for r in rows)] for label, text in _LINES)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    out = [title, *("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                    for line in grid)]
    reasons = {(u.kpi, u.reason) for r in rows for u in r.unavailable}
    out += [f"n/a {kpi}: {reason}" for kpi, reason in sorted(reasons)]
    return "\n".join(out)
