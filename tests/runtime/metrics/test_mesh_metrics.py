"""Every service of a real mesh serves its metrics, and every exposition passes ``promtool check metrics``.

The mesh runs on its own store with ``metrics_ports`` (one port per service); a tender is created,
accepted, its mission acknowledged and cancelled through the real services, so the RED, tender, dispatch-ack,
mission and consumer series carry real observations before they are checked.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2
from services.runtime import MESH_SERVICES, Mesh, carrier_metadata, new_id
from tests.conftest import Pki, running_mesh, wait_for
from tests.tender.helpers import seed_tender

from .conftest import Samples, parse, value

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
ACME = carrier_metadata("acme")
#: Every label name a Haulmesh exposition may use: none of them can hold a vehicle, carrier or tender id.
ALLOWED_LABELS = {"service", "method", "code", "direction", "route", "status", "outcome", "reason", "group", "kind",
                  "le", "implementation", "major", "minor", "patchlevel", "version", "generation",
                  "connectivity", "availability"}  # the fleet gauge's: Vehicle enum names


@pytest.fixture(scope="module")
async def metered_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("metered-mesh"), metrics=True) as mesh:
        yield mesh


async def scrape_text(mesh: Mesh, name: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(f"http://127.0.0.1:{mesh.metrics_ports[name]}/metrics")
    reply.raise_for_status()
    return reply.text


async def scrape(mesh: Mesh, name: str) -> Samples:
    return parse(await scrape_text(mesh, name))


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, items), v in samples.items() if n == name and set(labels.items()) <= set(items))


@pytest.fixture(scope="module")
async def traffic(metered_mesh: Mesh, mesh_pki: Pki) -> str:
    """One tender through offer, accept, dispatch ack and cancel; returns the mission's name."""
    mesh = metered_mesh
    truck = f"MTR-TRK-{new_id()[-6:].upper()}"
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "dispatch")) as ch:
        missions = mission_service_pb2_grpc.MissionServiceStub(ch)
        vehicle = vehicle_pb2.Vehicle(
            display_name="Metrics truck", home_region="US-TX-HOU",
            availability=vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE,
            capabilities=vehicle_pb2.VehicleCapabilities(equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT],
                                                         max_cargo_weight_lb=45_000, night_operations=True,
                                                         hazmat_certified=True))
        await missions.CreateVehicle(mission_service_pb2.CreateVehicleRequest(vehicle_id=truck, vehicle=vehicle),
                                     timeout=10)
    async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
        tenders = tender_service_pb2_grpc.TenderServiceStub(ch)
        tender = await tenders.CreateTender(tender_service_pb2.CreateTenderRequest(
            tender=seed_tender(tms_load_id=f"MTR-{new_id()[-8:]}")), metadata=ACME, timeout=15)
        assert tender.state == tender_pb2.Tender.STATE_OFFERED, tender.state_reason
        accepted = await tenders.AcceptTender(tender_service_pb2.AcceptTenderRequest(name=tender.name),
                                              metadata=ACME, timeout=15)
        assert accepted.mission, accepted.state_reason
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "dispatch")) as ch:
        missions = mission_service_pb2_grpc.MissionServiceStub(ch)
        ack_time = timestamp_pb2.Timestamp()
        ack_time.FromDatetime(datetime.now(UTC))
        request = mission_service_pb2.AcknowledgeMissionDispatchRequest(name=accepted.mission, ack_time=ack_time)
        await missions.AcknowledgeMissionDispatch(request, metadata=ACME, timeout=10)
        await missions.AcknowledgeMissionDispatch(request, metadata=ACME, timeout=10)  # a repeat: observed once
        await missions.CancelMission(mission_service_pb2.CancelMissionRequest(name=accepted.mission,
                                                                              reason="metrics test"),
                                     metadata=ACME, timeout=10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get(f"/api/v1/{accepted.name}")).status_code == 401  # no token
        assert (await http.get("/no/such/route")).status_code == 404
    return accepted.mission


@needs_promtool
@pytest.mark.parametrize("service", MESH_SERVICES)
async def test_every_exposition_passes_promtool(metered_mesh: Mesh, traffic: str, service: str) -> None:
    text = await scrape_text(metered_mesh, service)
    process = await asyncio.create_subprocess_exec(PROMTOOL, "check", "metrics", stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(text.encode()), 30)
    assert process.returncode == 0, output.decode()


@pytest.mark.parametrize("service", MESH_SERVICES)
async def test_every_service_exports_red_metrics_and_certificate_expiry(metered_mesh: Mesh, traffic: str,
                                                                       service: str) -> None:
    # The mesh's own health checks are RPCs like any other: every service has answered some.
    samples = await wait_for(lambda: _with_health_checks(metered_mesh, service), timeout_seconds=15)
    assert total(samples, "haulmesh_rpc_duration_seconds_count", service="grpc.health.v1.Health",
                 method="Check") >= 1
    leaf = value(samples, "haulmesh_certificate_expiry_timestamp_seconds", kind="leaf")
    ca = value(samples, "haulmesh_certificate_expiry_timestamp_seconds", kind="ca")
    now = datetime.now(UTC).timestamp()
    assert now < leaf <= ca + 1
    labels = {k for _, items in samples for k, _ in items}
    assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
    assert not any(traffic.split("/")[-1] in v for _, items in samples for _, v in items)


async def _with_health_checks(mesh: Mesh, service: str) -> Samples | None:
    samples = await scrape(mesh, service)
    ok = total(samples, "haulmesh_rpc_requests_total", service="grpc.health.v1.Health", method="Check", code="OK")
    return samples if ok >= 1 else None


async def test_a_denied_call_is_counted_with_its_code(metered_mesh: Mesh, mesh_pki: Pki) -> None:
    before = await scrape(metered_mesh, "tender")
    async with grpc.aio.secure_channel(metered_mesh.address("tender"), mesh_pki.credentials("operator", "x")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tender_service_pb2_grpc.TenderServiceStub(ch).GetTender(
                tender_service_pb2.GetTenderRequest(name="tenders/nope"), metadata=ACME, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    after = await scrape(metered_mesh, "tender")
    labels = {"service": "haulmesh.tender.v1.TenderService", "method": "GetTender", "code": "PERMISSION_DENIED"}
    assert total(after, "haulmesh_rpc_requests_total", **labels) == total(
        before, "haulmesh_rpc_requests_total", **labels) + 1


async def test_tender_processing_time_is_observed(metered_mesh: Mesh, traffic: str) -> None:
    samples = await scrape(metered_mesh, "tender")
    assert value(samples, "tms_tender_processing_time_seconds_count", outcome="offered") >= 1
    assert value(samples, "tms_tender_processing_time_seconds_count", outcome="failed") >= 0
    ok = total(samples, "haulmesh_rpc_requests_total", service="haulmesh.tender.v1.TenderService",
               method="CreateTender", code="OK")
    assert ok >= 1


async def test_dispatch_ack_and_mission_outcome_are_observed(metered_mesh: Mesh, traffic: str) -> None:
    samples = await scrape(metered_mesh, "mission")
    # One observation for two acks: the repeat changed nothing.
    assert value(samples, "aurora_mission_latency_seconds_count") == 1
    assert value(samples, "haulmesh_mission_dispatch_ack_seconds_count") == 1
    assert value(samples, "haulmesh_mission_dispatch_ack_seconds_bucket", le="30.0") == 1
    assert value(samples, "haulmesh_missions_finished_total", outcome="cancelled") == 1
    assert value(samples, "haulmesh_missions_finished_total", outcome="completed") == 0


async def test_gateway_http_routes_are_templates(metered_mesh: Mesh, traffic: str) -> None:
    samples = await scrape(metered_mesh, "gateway")
    assert value(samples, "haulmesh_http_requests_total", route="/healthz", method="GET", status="200") >= 1
    assert value(samples, "haulmesh_http_requests_total", route="/api/v1/{name=tenders/*}", method="GET",
                 status="401") == 1
    assert value(samples, "haulmesh_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(samples, "haulmesh_http_request_duration_seconds_count", route="/healthz", method="GET") >= 1
    routes = {dict(items).get("route") for name, items in samples if name == "haulmesh_http_requests_total"}
    assert not any("tenders/" in r and "*" not in r for r in routes if r), routes
    for outcome in ("succeeded", "retrying", "failed", "skipped"):
        assert value(samples, "haulmesh_webhook_deliveries_total", outcome=outcome) >= 0


async def test_consumer_groups_export_lag_pending_and_dlq(metered_mesh: Mesh, traffic: str) -> None:
    samples = await scrape(metered_mesh, "gateway")
    assert value(samples, "haulmesh_events_dlq_depth", group="webhooks") == 0
    assert value(samples, "haulmesh_events_consumer_lag", group="webhooks") >= 0
    assert value(samples, "haulmesh_events_consumer_pending", group="webhooks") >= 0
