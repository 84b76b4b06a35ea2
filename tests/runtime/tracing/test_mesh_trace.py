"""One trace across the real mesh: REST → gateway → services → Redis → events → consumers.

Every service exports over real OTLP/HTTP (``HAULMESH_TRACES_EXPORTER=otlp``) to :class:`OtlpReceiver`, which
the test runs. The test's HTTP client starts each trace itself (a W3C ``traceparent`` header, as a traced TMS
would send), so the spans of one request are known by their trace id.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import grpc
import httpx
import pytest

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import telemetry_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2
from services.billing.workers import ACCEPTANCE_GROUP
from services.runtime import Mesh
from services.runtime.tokens import mint
from tests.conftest import Pki, running_mesh, wait_for
from tests.gateway.rest.test_rest import seed_tender
from tests.telemetry.helpers import Truck, batch

from .receiver import OtlpReceiver, ReceivedSpan

SCOPES = "tender:create tender:read tender:respond"


@pytest.fixture(scope="module")
def receiver() -> OtlpReceiver:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
async def traced_mesh(mesh_pki: Pki, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    env = {"HAULMESH_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_BSP_SCHEDULE_DELAY": "100", "HAULMESH_LOG_LEVEL": "DEBUG", "NO_PROXY": no_proxy, "no_proxy": no_proxy}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("traced-mesh"), env=env) as mesh:
        async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "tracing")) as ch:
            await mission_service_pb2_grpc.MissionServiceStub(ch).CreateVehicle(
                mission_service_pb2.CreateVehicleRequest(vehicle_id=f"TRC-{uuid.uuid4().hex[:8].upper()}",
                                                         vehicle=vehicle_pb2.Vehicle(
                    display_name="Traced truck", home_region="US-TX-HOU",
                    capabilities=vehicle_pb2.VehicleCapabilities(equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT],
                                                                 max_cargo_weight_lb=45_000, night_operations=True))),
                timeout=10)
        yield mesh


def _traceparent() -> tuple[str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, f"00-{trace_id}-{span_id}-01"


@pytest.fixture(scope="module")
async def traces(traced_mesh: Mesh) -> dict[str, str]:
    """A REST tender create and accept, each in a trace of its own; returns their trace ids."""
    token = mint(carrier="traceco", scopes=SCOPES, state_dir=traced_mesh.state_dir)
    create_trace, create_parent = _traceparent()
    accept_trace, accept_parent = _traceparent()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{traced_mesh.http_port}", timeout=15) as http:
        created = await http.post("/api/v1/tenders", json=seed_tender(),
                                  headers={"Authorization": f"Bearer {token}", "traceparent": create_parent})
        assert created.status_code == 200, created.text
        tender = created.json()
        assert tender["state"] == "STATE_OFFERED", tender
        accepted = await http.post(f"/api/v1/{tender['name']}:accept", json={},
                                   headers={"Authorization": f"Bearer {token}", "traceparent": accept_parent})
        assert accepted.status_code == 200, accepted.text
    return {"create": create_trace, "accept": accept_trace}


def _services(spans: list[ReceivedSpan]) -> set[str]:
    return {s.service for s in spans}


def _is_redis(span: ReceivedSpan) -> bool:
    return span.attributes.get("db.system") == "redis" or span.attributes.get("db.system.name") == "redis"


def _assert_connected(spans: list[ReceivedSpan], root_parent: str) -> None:
    """Every span's parent is a span of the same trace, except the root's (the test client's span)."""
    ids = {s.span_id for s in spans}
    orphans = [s for s in spans if s.parent_span_id not in ids and s.parent_span_id != root_parent]
    assert not orphans, orphans


async def test_rest_create_is_one_trace_through_gateway_tender_billing_mission_and_redis(
        receiver: OtlpReceiver, traces: dict[str, str]) -> None:
    trace_id = traces["create"]
    # The gateway's span is named after the route template; tender asked billing for a price and mission for
    # capacity: client spans in tender, server spans in billing and mission.
    wanted = {("haulmesh-gateway", "SPAN_KIND_SERVER", "POST /api/v1/tenders"),
              ("haulmesh-gateway", "SPAN_KIND_CLIENT", "/haulmesh.tender.v1.TenderService/CreateTender"),
              ("haulmesh-tender", "SPAN_KIND_SERVER", "/haulmesh.tender.v1.TenderService/CreateTender"),
              ("haulmesh-tender", "SPAN_KIND_CLIENT", "/haulmesh.billing.v1.BillingService/CreateQuote"),
              ("haulmesh-billing", "SPAN_KIND_SERVER", "/haulmesh.billing.v1.BillingService/CreateQuote"),
              ("haulmesh-mission", "SPAN_KIND_SERVER", "/haulmesh.mission.v1.MissionService/GetFleetCapacity")}

    def complete() -> list[ReceivedSpan] | None:
        spans = receiver.trace(trace_id)
        return spans if wanted <= {(s.service, s.kind, s.name) for s in spans} else None

    try:
        spans = await wait_for(complete, timeout_seconds=20)
    except TimeoutError:
        pytest.fail(f"spans missing: {sorted((s.service, s.kind, s.name) for s in receiver.trace(trace_id))}")
    http_spans = [s for s in spans if s.service == "haulmesh-gateway" and s.kind == "SPAN_KIND_SERVER"]
    assert len(http_spans) == 1
    tender_server = [s for s in spans if s.service == "haulmesh-tender" and s.kind == "SPAN_KIND_SERVER"]
    assert tender_server and all(s.attributes.get("rpc.system") == "grpc" for s in tender_server)
    redis = [s for s in spans if _is_redis(s)]
    assert {"haulmesh-tender", "haulmesh-billing"} <= _services(redis)
    _assert_connected(spans, root_parent=http_spans[0].parent_span_id)
    # Neither the mesh's health checks nor the consumers' background store polls make traces of their own.
    assert not any("grpc.health" in s.name for s in receiver.spans)
    assert not [s for s in receiver.spans if _is_redis(s) and not s.parent_span_id]


async def test_accept_continues_across_the_event_streams_to_consumers(
        receiver: OtlpReceiver, traces: dict[str, str]) -> None:
    trace_id = traces["accept"]

    # Tender called mission to dispatch; billing took tender.accepted; telemetry and the webhooks dispatcher
    # (in the gateway) took mission.dispatched.
    needed = {("haulmesh-gateway", "SPAN_KIND_SERVER", "POST /api/v1/{name=tenders/*}:accept"),
              ("haulmesh-tender", "SPAN_KIND_SERVER", "/haulmesh.tender.v1.TenderService/AcceptTender"),
              ("haulmesh-mission", "SPAN_KIND_SERVER", "/haulmesh.mission.v1.MissionService/CreateMission"),
              ("haulmesh-billing", "SPAN_KIND_CONSUMER", "haulmesh.tender.v1.accepted"),
              ("haulmesh-telemetry", "SPAN_KIND_CONSUMER", "haulmesh.mission.v1.dispatched"),
              ("haulmesh-gateway", "SPAN_KIND_CONSUMER", "haulmesh.mission.v1.dispatched")}

    def consumed() -> list[ReceivedSpan] | None:
        spans = receiver.trace(trace_id)
        return spans if needed <= {(s.service, s.kind, s.name) for s in spans} else None

    try:
        spans = await wait_for(consumed, timeout_seconds=30)
    except TimeoutError:
        pytest.fail(f"spans missing: {sorted((s.service, s.kind, s.name) for s in receiver.trace(trace_id))}")
    root = next(s for s in spans if s.service == "haulmesh-gateway" and s.kind == "SPAN_KIND_SERVER")
    _assert_connected(spans, root_parent=root.parent_span_id)
    by_id = {s.span_id: s for s in spans}
    # The consumer's span is the parent of the Redis commands its handler makes, and its own parent is the
    # span that committed the event, in another process.
    billing = next(s for s in spans if s.kind == "SPAN_KIND_CONSUMER" and s.service == "haulmesh-billing")
    assert billing.attributes["messaging.consumer.group.name"] == ACCEPTANCE_GROUP
    assert any(_is_redis(s) for s in spans if s.parent_span_id == billing.span_id)
    assert by_id[billing.parent_span_id].service == "haulmesh-tender"
    telemetry = next(s for s in spans if s.kind == "SPAN_KIND_CONSUMER" and s.service == "haulmesh-telemetry")
    assert by_id[telemetry.parent_span_id].service == "haulmesh-mission"


async def test_log_lines_carry_the_trace_id(traced_mesh: Mesh, receiver: OtlpReceiver,
                                            traces: dict[str, str]) -> None:
    trace_id = traces["accept"]

    def logged() -> list[dict] | None:
        lines = []
        for name in ("mission", "billing"):
            for raw in traced_mesh.children[name].log_path.read_text().splitlines():
                if raw.startswith("{") and trace_id in raw:
                    lines.append(json.loads(raw))
        return lines or None

    lines = await wait_for(logged, timeout_seconds=20)
    assert all(line["trace_id"] == trace_id and len(line["span_id"]) == 16 for line in lines)
    assert any("handling event" in line["message"] for line in lines)
    span_ids = {s.span_id for s in receiver.trace(trace_id)}
    assert {line["span_id"] for line in lines} <= span_ids


async def test_a_truck_stream_is_one_span_without_per_frame_store_spans(traced_mesh: Mesh, mesh_pki: Pki,
                                                                        receiver: OtlpReceiver) -> None:
    truck = Truck.mint(mesh_pki.ca)
    trace_id, parent = _traceparent()
    acked = asyncio.Event()

    async def requests():
        yield truck.hello()
        for sequence in range(1, 6):  # live traffic: one frame per message
            yield batch([truck.frame(sequence)])
        await acked.wait()

    async with grpc.aio.secure_channel(traced_mesh.address("telemetry"), truck.credentials()) as channel:
        call = telemetry_service_pb2_grpc.TelemetryServiceStub(channel).StreamTelemetry(
            requests(), metadata=(("traceparent", parent),), timeout=60)
        async for response in call:
            if response.WhichOneof("message") == "ack" and response.ack.through_sequence == 5:
                acked.set()
        assert await call.code() == grpc.StatusCode.OK

    name = "/haulmesh.telemetry.v1.TelemetryService/StreamTelemetry"

    def stream_spans() -> list[ReceivedSpan] | None:
        return [s for s in receiver.trace(trace_id) if s.name == name and s.kind == "SPAN_KIND_SERVER"] or None

    (span,) = await wait_for(stream_spans, timeout_seconds=20)
    assert span.service == "haulmesh-telemetry" and span.attributes["haulmesh.rpc.streaming"] is True
    await asyncio.sleep(0.5)  # a later export batch would hold per-frame spans
    assert not [s for s in receiver.trace(trace_id) if _is_redis(s) and s.service == "haulmesh-telemetry"]
