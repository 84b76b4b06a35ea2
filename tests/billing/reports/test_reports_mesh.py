"""The KPI report in the real mesh: events through the real store, billing's projection, the report over REST
(gateway, dev tokens) and gRPC, and ``haulmesh report`` as a process.

Each test reports on its own carrier (a fresh id); the events are written to the carrier's stream exactly as
the services commit them (``transact`` + ``add_event``), and the invoice is issued by billing itself.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2

from haulmesh.billing.v1 import (
    billing_service_pb2,
    billing_service_pb2_grpc,
    invoice_pb2,
    quote_pb2,
    report_service_pb2_grpc,
)
from haulmesh.billing.v1 import report_service_pb2 as api
from haulmesh.events.v1 import event_pb2, mission_events_pb2, tender_events_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import equipment_pb2, lane_pb2, time_window_pb2
from services.runtime import Mesh, add_event, carrier_metadata, connect_async, new_event, transact
from services.runtime.tokens import mint
from tests.gateway.rest.test_rest import seed_tender

from ...conftest import Pki, rich_error, wait_for

LANE = lane_pb2.Lane(origin_region="US-TX-HOU", destination_region="US-GA-ATL")
Mission = mission_pb2.Mission
Exc = mission_pb2.MissionException
#: The measured miles and telemetry provenance of the invoice (what billing's usage would carry).
MILES, FRAMES, MISSING, FRESH_P95 = 790.2, 1000, 5, 1.25


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def new_carrier() -> str:
    return f"kpi-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def http(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=15) as client:
        yield client


def bearer(mesh: Mesh, carrier: str, scopes: str = "report:read") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(carrier=carrier, scopes=scopes, state_dir=mesh.state_dir)}"}


async def publish(mesh: Mesh, carrier: str, *events: event_pb2.Event) -> None:
    """Commit ``events`` to the carrier's stream the way the services do (the outbox)."""
    client = connect_async(mesh.store.url)
    try:
        async def write(pipe) -> None:
            pipe.multi()
            for event in events:
                add_event(pipe, event)

        await transact(client, carrier, [], write)
    finally:
        await client.aclose()


def mission(name: str, state: int, *, dispatched: datetime, window: tuple[datetime, datetime],
            acked: datetime | None = None, arrived: datetime | None = None,
            exceptions: tuple[Exc, ...] = ()) -> Mission:
    m = Mission(name=name, tender="tenders/t-" + name[-1], quote="quotes/q", lane=LANE, state=state,
                dispatch_time=ts(dispatched), exceptions=exceptions,
                stops=[mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP),
                       mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, planned_window=time_window_pb2.TimeWindow(
                           start_time=ts(window[0]), end_time=ts(window[1])))])
    if acked:
        m.dispatch_ack_time.CopyFrom(ts(acked))
    if arrived:
        m.stops[1].arrive_time.CopyFrom(ts(arrived))
    return m


def event(field: str, payload, carrier: str, subject: str) -> event_pb2.Event:
    return new_event(field, payload, subject=subject, carrier_id=carrier, source="tests")


async def a_pilot_month(mesh: Mesh, pki: Pki, carrier: str, base: datetime) -> invoice_pb2.Invoice:
    """One tender offered 250 ms after creation; mission A acknowledged in 15 s, taken over by a human once,
    delivered in its window and invoiced; mission B cancelled before acknowledging."""
    window = (base + timedelta(hours=1), base + timedelta(hours=3))
    tender = tender_pb2.Tender(name="tenders/t-a", lane=LANE, state=tender_pb2.Tender.STATE_OFFERED,
                               create_time=ts(base), offer=tender_pb2.Offer(
                                   create_time=ts(base + timedelta(milliseconds=250))))
    dispatched = base + timedelta(minutes=10)
    takeover = Exc(exception_id="exc-1", kind=Exc.KIND_VEHICLE_FAULT, contingency=Exc.CONTINGENCY_HUMAN_TAKEOVER)
    a_dispatched = mission("missions/m-a", Mission.STATE_DISPATCHED, dispatched=dispatched, window=window)
    a_acked = mission("missions/m-a", Mission.STATE_PRE_TRIP, dispatched=dispatched, window=window,
                      acked=dispatched + timedelta(seconds=15))
    a_done = mission("missions/m-a", Mission.STATE_COMPLETED, dispatched=dispatched, window=window,
                     acked=dispatched + timedelta(seconds=15), arrived=base + timedelta(hours=2),
                     exceptions=(takeover,))
    b_dispatched = mission("missions/m-b", Mission.STATE_DISPATCHED, dispatched=base + timedelta(minutes=20),
                           window=window)
    b_cancelled = mission("missions/m-b", Mission.STATE_CANCELLED, dispatched=base + timedelta(minutes=20),
                          window=window)
    await publish(mesh, carrier,
                  event("tender_offered", tender_events_pb2.TenderOffered(tender=tender), carrier, tender.name),
                  event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=a_dispatched), carrier,
                        "missions/m-a"),
                  event("mission_state_changed", mission_events_pb2.MissionStateChanged(mission=a_acked), carrier,
                        "missions/m-a"),
                  event("mission_exception_raised", mission_events_pb2.MissionExceptionRaised(
                      mission="missions/m-a", exception=takeover), carrier, "missions/m-a"),
                  # The same takeover resolved, and mission A's dispatch announced twice: counted once each.
                  event("mission_exception_resolved", mission_events_pb2.MissionExceptionResolved(
                      mission="missions/m-a", exception=takeover), carrier, "missions/m-a"),
                  event("mission_state_changed", mission_events_pb2.MissionStateChanged(mission=a_done), carrier,
                        "missions/m-a"),
                  event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=a_dispatched), carrier,
                        "missions/m-a"),
                  event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=b_dispatched), carrier,
                        "missions/m-b"),
                  event("mission_state_changed", mission_events_pb2.MissionStateChanged(mission=b_cancelled), carrier,
                        "missions/m-b"))
    # The invoice: issued by billing itself (its invoice_issued event feeds the projection).
    md = carrier_metadata(carrier)
    async with grpc.aio.secure_channel(mesh.address("billing"), pki.credentials("service", "tender")) as tender_ch, \
            grpc.aio.secure_channel(mesh.address("billing"), pki.credentials("service", "mission")) as mission_ch:
        quote = await billing_service_pb2_grpc.BillingServiceStub(tender_ch).CreateQuote(
            billing_service_pb2.CreateQuoteRequest(quote=quote_pb2.Quote(tender="tenders/t-a", lane=LANE,
                                                                         route_miles=789.4, equipment=1)),
            metadata=md, timeout=10)
        usage = invoice_pb2.Usage(lane=LANE, miles=MILES, hours=13.5, provenance=invoice_pb2.UsageProvenance(
            mission="missions/m-a", vehicle="vehicles/AU-TRK-1", first_sequence=1, last_sequence=FRAMES + MISSING,
            frame_count=FRAMES, frames_missing=MISSING, freshness_p50_seconds=0.4, freshness_p95_seconds=FRESH_P95,
            source=invoice_pb2.UsageProvenance.SOURCE_POSITIONS, telemetry_log_sha256="0" * 64))
        return (await billing_service_pb2_grpc.BillingServiceStub(mission_ch).RecordUsage(
            billing_service_pb2.RecordUsageRequest(mission="missions/m-a", tender="tenders/t-a", quote=quote.name,
                                                   tms_load_id="TND-KPI-1", usage=usage),
            metadata=md, timeout=10)).invoice


async def test_the_projection_feeds_the_report_over_rest(mesh: Mesh, mesh_pki: Pki, http) -> None:
    carrier = new_carrier()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    invoice = await a_pilot_month(mesh, mesh_pki, carrier, base)
    query = {"startTime": (base - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
             "endTime": (base + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
             "baselineCostPerMile.currencyCode": "USD", "baselineCostPerMile.amountMinor": "210"}

    async def projected() -> dict | None:
        response = await http.get("/api/v1/kpiReport", params=query, headers=bearer(mesh, carrier))
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["total"]["invoicedMissions"] == 1 and body["total"]["missions"] == 2 else None

    body = await wait_for(projected, timeout_seconds=30)
    assert body["carrier"] == f"carriers/{carrier}"
    assert [row["lane"] for row in body["rows"]] == [{"originRegion": "US-TX-HOU", "destinationRegion": "US-GA-ATL"}]
    row = body["rows"][0]
    assert {k: v for k, v in body["total"].items() if k != "lane"} == {k: v for k, v in row.items() if k != "lane"}
    assert (row["missions"], row["missionsCompleted"], row["missionsCancelled"], row["missionsAborted"],
            row["missionsInProgress"]) == (2, 1, 1, 0, 0)
    assert row["successRate"] == 1.0                     # 1 completed / (1 completed + 0 aborted)
    assert (row["takeovers"], row["minimalRiskStops"], row["handoversPerMission"]) == (1, 0, 0.5)
    assert row["exceptionsByKind"] == [{"kind": "KIND_VEHICLE_FAULT", "count": 1}]
    assert row["dispatchAckLatency"] == {"count": 1, "p50": "15s", "p95": "15s", "p99": "15s"}
    assert row["tenderToOfferLatency"] == {"count": 1, "p50": "0.250s", "p95": "0.250s", "p99": "0.250s"}
    assert row["telemetryMissions"] == 1 and row["telemetryFreshnessP95"] == "1.250s"
    assert row["packetLossRatio"] == pytest.approx(MISSING / (FRAMES + MISSING))
    assert (row["arrivals"], row["onTimeArrivalRate"]) == (1, 1.0)  # B has a window but never arrived
    assert row["measuredMiles"] == MILES and row["invoicedTotal"] == {
        "currencyCode": "USD", "amountMinor": str(invoice.total.amount_minor)}
    cost = round(Fraction(invoice.total.amount_minor) / Fraction("790.2"))
    assert row["measuredCostPerMile"] == {"currencyCode": "USD", "amountMinor": str(cost)}
    assert row["costPerMileVsBaseline"] == {"currencyCode": "USD", "amountMinor": str(cost - 210)}
    assert row["costPerMileVsBaselineBps"] == round(
        (Fraction(invoice.total.amount_minor) / Fraction("790.2") - 210) / 210 * 10_000)
    assert row.get("unavailable", []) == []

    # The same over gRPC as an operator, with a lane filter; a lane without missions reports nothing.
    async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("operator", "ops")) as channel:
        stub = report_service_pb2_grpc.ReportServiceStub(channel)
        request = api.GetKpiReportRequest(start_time=ts(base - timedelta(hours=1)),
                                          end_time=ts(base + timedelta(hours=1)), lane=LANE)
        got = await stub.GetKpiReport(request, metadata=carrier_metadata(carrier), timeout=10)
        assert got.total.missions == 2 and got.total.tender_to_offer_latency.count == 1
        request.lane.destination_region = "US-TX-DAL"
        other_lane = await stub.GetKpiReport(request, metadata=carrier_metadata(carrier), timeout=10)
        assert list(other_lane.rows) == [] and other_lane.total.missions == 0


async def test_another_tenant_sees_nothing(mesh: Mesh, mesh_pki: Pki, http) -> None:
    carrier, other = new_carrier(), new_carrier()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    await a_pilot_month(mesh, mesh_pki, carrier, base)
    params = {"startTime": (base - timedelta(hours=1)).isoformat().replace("+00:00", "Z")}

    async def projected() -> bool:
        body = (await http.get("/api/v1/kpiReport", params=params, headers=bearer(mesh, carrier))).json()
        return body["total"]["invoicedMissions"] == 1

    await wait_for(projected, timeout_seconds=30)
    response = await http.get("/api/v1/kpiReport", params=params, headers=bearer(mesh, other))
    assert response.status_code == 200
    body = response.json()
    assert body["carrier"] == f"carriers/{other}"
    assert body.get("rows", []) == [] and body["total"]["missions"] == 0
    assert body["total"]["tenderToOfferLatency"]["count"] == 0 and "measuredCostPerMile" not in body["total"]


@pytest.mark.parametrize(("params", "fields"), [
    ({"startTime": "2026-06-01T00:00:00Z", "endTime": "2026-05-31T00:00:00Z"}, ["end_time"]),
    ({"startTime": "2025-01-01T00:00:00Z", "endTime": "2026-01-03T00:00:00Z"}, ["end_time"]),  # 367 days
    # The times' range, which the OpenAPI document states (services/runtime/limits.py KPI_REPORT_TIME).
    ({"startTime": "1969-12-31T23:59:59Z", "endTime": "1970-01-02T00:00:00Z"}, ["start_time"]),
    ({"lane.originRegion": "Houston", "lane.destinationRegion": "US-GA-ATL"}, ["lane.origin_region"]),
    ({"baselineCostPerMile.currencyCode": "USD", "baselineCostPerMile.amountMinor": "0"},
     ["baseline_cost_per_mile.amount_minor"]),
    ({"baselineCostPerMile.currencyCode": "dollars", "baselineCostPerMile.amountMinor": "210"},
     ["baseline_cost_per_mile.currency_code"]),
])
async def test_invalid_requests_are_refused_with_the_field(mesh: Mesh, http, params, fields) -> None:
    response = await http.get("/api/v1/kpiReport", params=params, headers=bearer(mesh, new_carrier()))
    assert response.status_code == 400, response.text
    body = response.json()
    violations = [v["field"] for d in body["details"] if d["@type"].endswith("BadRequest")
                  for v in d["fieldViolations"]]
    assert violations == fields


async def test_the_report_needs_its_scope_and_an_allowed_caller(mesh: Mesh, mesh_pki: Pki, http) -> None:
    response = await http.get("/api/v1/kpiReport", headers=bearer(mesh, new_carrier(), "billing:read"))
    assert response.status_code == 403 and "report:read" in response.text
    async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("vehicle", "AU-TRK-9")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await report_service_pb2_grpc.ReportServiceStub(ch).GetKpiReport(
                api.GetKpiReportRequest(), metadata=carrier_metadata("acme"), timeout=10)
    assert rich_error(caught.value)[:2] == ("PERMISSION_DENIED", "METHOD_NOT_ALLOWED")


async def haulmesh(mesh: Mesh, mesh_pki: Pki, *args: str) -> tuple[int, str, str]:
    """``haulmesh`` as its own process, pointed at the test mesh's billing and store."""
    env = {**os.environ, "HAULMESH_BILLING_ADDR": mesh.address("billing"), "REDIS_URL": mesh.store.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runtime.cli", "--cert-dir", str(mesh_pki.directory), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_prints_csv_json_and_a_table(mesh: Mesh, mesh_pki: Pki, http) -> None:
    carrier = new_carrier()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    invoice = await a_pilot_month(mesh, mesh_pki, carrier, base)

    async def projected() -> bool:
        body = (await http.get("/api/v1/kpiReport", headers=bearer(mesh, carrier))).json()
        return body["total"]["invoicedMissions"] == 1

    await wait_for(projected, timeout_seconds=30)
    since = (base - timedelta(hours=1)).isoformat()
    window = ["--since", since, "--until", "1m", "--baseline", "USD:2.10"]

    code, out, err = await haulmesh(mesh, mesh_pki, "report", "--carrier", carrier, *window, "--format", "csv")
    assert code == 0, err
    lines = list(csv.DictReader(io.StringIO(out)))
    assert [(line["carrier"], line["lane"]) for line in lines] == [(carrier, "US-TX-HOU>US-GA-ATL"), (carrier, "ALL")]
    line = lines[0]
    assert (line["missions"], line["completed"], line["cancelled"], line["success_rate"]) == ("2", "1", "1", "1.0")
    assert (line["takeovers"], line["handovers_per_mission"], line["exceptions_by_kind"]) == \
        ("1", "0.5", "VEHICLE_FAULT=1")
    assert (line["dispatch_ack_p50_s"], line["tender_to_offer_p99_s"]) == ("15.0", "0.25")
    assert (line["telemetry_freshness_p95_s"], line["on_time_arrival_rate"]) == ("1.25", "1.0")
    assert float(line["packet_loss_ratio"]) == pytest.approx(MISSING / (FRAMES + MISSING))
    cost = round(Fraction(invoice.total.amount_minor) / Fraction("790.2"))
    assert (line["currency"], line["measured_miles"]) == ("USD", "790.2")
    assert line["measured_cost_per_mile"] == f"{cost // 100}.{cost % 100:02d}"
    assert line["window_start"] == since.replace("+00:00", "Z")

    code, out, err = await haulmesh(mesh, mesh_pki, "report", "--carrier", carrier, *window, "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["carrier"] == f"carriers/{carrier}" and document["total"]["missions"] == 2
    assert document["baselineCostPerMile"] == {"currencyCode": "USD", "amountMinor": "210"}

    code, out, err = await haulmesh(mesh, mesh_pki, "report", "--carrier", carrier, *window)
    assert code == 0, err
    assert f"KPI report carriers/{carrier}" in out and "US-TX-HOU>US-GA-ATL" in out
    assert "success rate" in out and "100.0%" in out and "baseline USD 2.10/mi" in out

    # Without --carrier: every carrier with events in the store, this one among them.
    code, out, err = await haulmesh(mesh, mesh_pki, "report", *window, "--format", "csv")
    assert code == 0, err
    assert (carrier, "ALL") in {(line["carrier"], line["lane"]) for line in csv.DictReader(io.StringIO(out))}

    # A window the service refuses: the field named, exit 2.
    code, _, err = await haulmesh(mesh, mesh_pki, "report", "--carrier", carrier, "--since", "2026-06-01",
                                  "--until", "2026-05-01")
    assert code == 2 and "INVALID_ARGUMENT" in err and "end_time" in err


async def test_the_services_own_events_feed_the_report(mesh: Mesh, mesh_pki: Pki, http) -> None:
    """The real flow: a tender over REST (offered by the tender service), accepted, dispatched by the mission
    service, acknowledged, then cancelled: the report counts what the services themselves announced."""
    carrier = new_carrier()
    scopes = "tender:create tender:read tender:respond tender:cancel report:read"
    headers = bearer(mesh, carrier, scopes)
    vehicle_id = f"KPI-{uuid.uuid4().hex[:10].upper()}"
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops")) as channel:
        missions = mission_service_pb2_grpc.MissionServiceStub(channel)
        await missions.CreateVehicle(mission_service_pb2.CreateVehicleRequest(
            vehicle_id=vehicle_id, vehicle=vehicle_pb2.Vehicle(
                display_name=vehicle_id, home_region="US-TX-HOU", capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))), timeout=10)
        tender = (await http.post("/api/v1/tenders", json=seed_tender(), headers=headers)).json()
        assert tender["state"] == "STATE_OFFERED", tender
        accepted = await http.post(f"/api/v1/{tender['name']}:accept", json={}, headers=headers)
        assert accepted.status_code == 200, accepted.text

        async def dispatched() -> str | None:
            return (await http.get(f"/api/v1/{tender['name']}", headers=headers)).json().get("mission")

        mission_name = await wait_for(dispatched, timeout_seconds=30)
        mission = await missions.GetMission(mission_service_pb2.GetMissionRequest(name=mission_name),
                                            metadata=carrier_metadata(carrier), timeout=10)
        ack_time = ts(mission.dispatch_time.ToDatetime(tzinfo=UTC) + timedelta(seconds=7))
        await missions.AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
            name=mission_name, ack_time=ack_time), metadata=carrier_metadata(carrier), timeout=10)
    cancelled = await http.post(f"/api/v1/{tender['name']}:cancel", json={"reason": "kpi test"}, headers=headers)
    assert cancelled.status_code == 200, cancelled.text

    async def projected() -> dict | None:
        body = (await http.get("/api/v1/kpiReport", headers=headers)).json()
        return body if body["total"]["missionsCancelled"] == 1 else None

    row = (await wait_for(projected, timeout_seconds=30))["rows"][0]
    assert row["lane"] == {"originRegion": tender["lane"]["originRegion"],
                           "destinationRegion": tender["lane"]["destinationRegion"]}
    assert (row["missions"], row["missionsCancelled"], row["missionsInProgress"]) == (1, 1, 0)
    assert row["dispatchAckLatency"]["count"] == 1 and row["dispatchAckLatency"]["p50"] == "7s"
    offer_ms = (datetime.fromisoformat(tender["offer"]["createTime"])
                - datetime.fromisoformat(tender["createTime"])) / timedelta(milliseconds=1)
    latency = row["tenderToOfferLatency"]
    assert latency["count"] == 1
    assert float(latency["p50"].removesuffix("s")) == pytest.approx(offer_ms / 1000, abs=0.001)
    assert "successRate" not in row  # a cancelled mission is neither a success nor a failure
