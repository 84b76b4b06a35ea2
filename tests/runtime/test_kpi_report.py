"""``haulmesh report``'s argument parsing and output formats, and the runtime's money formatting it uses (the
command against a real mesh: tests/billing/reports/test_reports_mesh.py)."""

from __future__ import annotations

import argparse
import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from haulmesh.billing.v1 import report_service_pb2 as api
from haulmesh.mission.v1 import mission_pb2
from haulmesh.type.v1 import lane_pb2, money_pb2
from services.runtime import FLEET_OPERATORS, Identity, Policy, pki
from services.runtime.kpi_report import csv_lines, parse_baseline, parse_lane, parse_time, table
from services.runtime.money import format_minor

NOW = datetime(2026, 12, 2, 12, 30, tzinfo=UTC)


def test_times_are_rfc3339_dates_or_ages() -> None:
    assert parse_time("2026-11-01T06:00:00+02:00", now=NOW) == datetime(2026, 11, 1, 4, tzinfo=UTC)
    assert parse_time("2026-11-01T00:00:00Z", now=NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01", now=NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("30d", now=NOW) == NOW - timedelta(days=30)
    assert parse_time("12h", now=NOW) == NOW - timedelta(hours=12)
    assert parse_time("90m", now=NOW) == NOW - timedelta(minutes=90)
    for bad in ("yesterday", "2026-11-01T00:00:00", "30w", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_time(bad, now=NOW)


def test_lanes_and_baselines() -> None:
    assert parse_lane("us-tx-hou:US-GA-ATL") == lane_pb2.Lane(origin_region="US-TX-HOU", destination_region="US-GA-ATL")
    assert parse_baseline("USD:2.10") == money_pb2.Money(currency_code="USD", amount_minor=210)
    assert parse_baseline("jpy:300") == money_pb2.Money(currency_code="JPY", amount_minor=300)
    assert parse_baseline("KWD:0.125") == money_pb2.Money(currency_code="KWD", amount_minor=125)
    for bad in ("US-TX-HOU", ":US-GA-ATL"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_lane(bad)
    for bad in ("2.10", "USD:", "USD:abc", "USD:2.105", "JPY:1.5", "USD:inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_baseline(bad)


def test_money_for_people() -> None:
    assert format_minor("USD", -123_456) == "USD -1234.56"
    assert format_minor("JPY", 500) == "JPY 500"
    assert format_minor("KWD", 1_500) == "KWD 1.500"


def _response() -> api.GetKpiReportResponse:
    lane = lane_pb2.Lane(origin_region="US-TX-HOU", destination_region="US-GA-ATL")
    row = api.KpiRow(lane=lane, missions=3, missions_completed=2, missions_aborted=1, success_rate=2 / 3,
                     takeovers=1, exceptions_by_kind=[api.ExceptionCount(
                         kind=mission_pb2.MissionException.KIND_SENSOR_FAULT, count=2)],
                     dispatch_ack_latency=api.LatencyPercentiles(count=2), invoiced_missions=1, measured_miles=100.5,
                     invoiced_total=money_pb2.Money(currency_code="USD", amount_minor=36_000),
                     measured_cost_per_mile=money_pb2.Money(currency_code="USD", amount_minor=358),
                     unavailable=[api.UnavailableKpi(kpi="packet_loss_ratio", reason="no provenance")])
    row.dispatch_ack_latency.p50.FromMilliseconds(12_000)
    row.dispatch_ack_latency.p95.FromMilliseconds(40_000)
    row.dispatch_ack_latency.p99.FromMilliseconds(40_000)
    total = api.KpiRow()
    total.CopyFrom(row)
    total.ClearField("lane")
    response = api.GetKpiReportResponse(carrier="carriers/acme", rows=[row], total=total)
    response.window.start_time.FromJsonString("2026-11-01T00:00:00Z")
    response.window.end_time.FromJsonString("2026-12-01T00:00:00Z")
    return response


def test_csv_has_a_line_per_lane_and_all() -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(csv_lines([_response()]))
    lines = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert [line["lane"] for line in lines] == ["US-TX-HOU>US-GA-ATL", "ALL"]
    line = lines[0]
    assert (line["carrier"], line["window_start"], line["missions"], line["exceptions_by_kind"]) == (
        "acme", "2026-11-01T00:00:00Z", "3", "SENSOR_FAULT=2")
    assert (line["dispatch_ack_p50_s"], line["dispatch_ack_p99_s"], line["tender_to_offer_p50_s"]) == \
        ("12.0", "40.0", "")
    assert (line["measured_cost_per_mile"], line["invoiced_total"], line["currency"]) == ("3.58", "360.00", "USD")
    assert line["packet_loss_ratio"] == "" and line["on_time_arrival_rate"] == ""  # unavailable: empty


def test_the_table_has_a_column_per_lane_and_says_why_na() -> None:
    text = table(_response())
    assert text.splitlines()[0] == "KPI report carriers/acme  2026-11-01T00:00:00Z .. 2026-12-01T00:00:00Z"
    assert "US-TX-HOU>US-GA-ATL" in text.splitlines()[1] and "ALL" in text.splitlines()[1]
    assert "66.7%" in text and "12.0 s / 40.0 s / 40.0 s (n=2)" in text and "USD 3.58" in text
    assert "n/a packet_loss_ratio: no provenance" in text


def test_a_server_of_two_apis_allows_what_either_policy_allows() -> None:
    first = Policy({"/a.A/Get": ["service/gateway"], "/a.A/Put": [FLEET_OPERATORS]})
    second = Policy({"/a.A/Get": [FLEET_OPERATORS], "/b.B/*": ["service/tender"]})
    both = first | second
    assert both.methods == first.methods | second.methods
    gateway, ops, tender = (Identity.parse(f"spiffe://haulmesh.local/{who}")
                            for who in ("service/gateway", "operator/ops", "service/tender"))
    fleet = pki.OperatorGrant(pki.FLEET_OPERATOR, frozenset({"acme"}))
    assert both.allows("/a.A/Get", gateway) and both.allows("/a.A/Get", ops, fleet)
    assert both.allows("/b.B/List", tender) and not both.allows("/a.A/Put", tender)


def test_the_billing_address_is_read_where_the_cli_reads_every_service_address(monkeypatch) -> None:
    """kpi_report reads no environment itself: cli.py's service_address is the one place (HAULMESH_<NAME>_ADDR)."""
    import inspect

    from services.runtime import cli, kpi_report

    assert "os.environ" not in inspect.getsource(kpi_report) and "getenv" not in inspect.getsource(kpi_report)
    monkeypatch.setenv("HAULMESH_BILLING_ADDR", "billing.internal:7443")
    assert cli.service_address("billing") == "billing.internal:7443"
    monkeypatch.delenv("HAULMESH_BILLING_ADDR")
    assert cli.service_address("billing") == "127.0.0.1:50054"
