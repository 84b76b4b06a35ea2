"""The device listener's bound (issue 11): at most HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS truck requests at
once per gateway process, 503 with Retry-After beyond, refused before the body is read; a service's retry hint
(telemetry's TELEMETRY_BUSY) reaches the truck as Retry-After. The gateway's handler runs in process here, its
relay a real gRPC call to a telemetry stand-in whose answers the test holds back."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from limits.aio.storage import MemoryStorage
from starlette.requests import Request

from haulmesh.telemetry.v1 import telemetry_service_pb2
from services.gateway.config import GatewayConfig
from services.gateway.rest.descriptors import load_api
from services.gateway.rest.device import DeviceGateway, device_api
from services.gateway.rest.ratelimit import TenantRateLimiter
from services.runtime import ConfigError, ResourceExhausted, abort, free_port, pki
from tests.conftest import Pki, wait_for


class _Telemetry:
    """IngestTelemetry that answers only when released (or refuses as busy)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.busy = False

    async def ingest(self, request: telemetry_service_pb2.IngestTelemetryRequest,
                     context: grpc.aio.ServicerContext) -> telemetry_service_pb2.IngestTelemetryResponse:
        self.calls += 1
        if self.busy:
            await abort(context, ResourceExhausted("busy", reason="TELEMETRY_BUSY",
                                                   metadata={"retry_after_seconds": "1"}))
        await self.release.wait()
        return telemetry_service_pb2.IngestTelemetryResponse(sequence=request.sequence)


def _request(certificate_pem: bytes, body: dict) -> Request:
    raw = json.dumps(body).encode()
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/api/v1/telemetry/ingest", "query_string": b"",
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
                    "extensions": {"tls": {"client_cert_chain": [certificate_pem.decode()]}}}, receive)


@pytest.fixture
async def stand_in() -> tuple[_Telemetry, str]:
    telemetry = _Telemetry()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("haulmesh.telemetry.v1.TelemetryService", {
        "IngestTelemetry": grpc.unary_unary_rpc_method_handler(
            telemetry.ingest, request_deserializer=telemetry_service_pb2.IngestTelemetryRequest.FromString,
            response_serializer=telemetry_service_pb2.IngestTelemetryResponse.SerializeToString)})])
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    yield telemetry, address
    telemetry.release.set()
    await server.stop(0)


async def test_requests_beyond_the_bound_get_503_with_retry_after(mesh_pki: Pki, stand_in) -> None:
    telemetry, address = stand_in
    vehicle = pki.issue(mesh_pki.ca, pki.identity_for("vehicle", "AU-TRK-BOUND"), valid_days=1)
    body = {"vehicleId": "AU-TRK-BOUND", "sequence": 1, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "position": {"lat": 30.2, "lon": -97.7}, "signature": "AAAA"}
    async with grpc.aio.insecure_channel(address) as channel:
        gateway = DeviceGateway(api=device_api(load_api()), authenticator=None,  # not consulted on this listener
                                limiter=TenantRateLimiter(None, MemoryStorage()), channel=lambda _peer: channel,
                                max_inflight_requests=2)
        held = [asyncio.create_task(gateway.handle(_request(vehicle.certificate_pem, body))) for _ in range(2)]
        await wait_for(lambda: telemetry.calls == 2, timeout_seconds=30)
        refused = await gateway.handle(_request(vehicle.certificate_pem, body))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert json.loads(refused.body)["details"][0]["reason"] == "GATEWAY_BUSY"
        assert telemetry.calls == 2  # refused before anything was relayed
        telemetry.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert gateway.inflight == 0
        assert (await gateway.handle(_request(vehicle.certificate_pem, body))).status_code == 200
        telemetry.busy = True  # the telemetry process at its own bound: 429 with its retry hint
        busy = await gateway.handle(_request(vehicle.certificate_pem, body))
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"


def test_the_bound_is_configured() -> None:
    assert GatewayConfig.from_env({}).device_max_inflight_requests == 256
    assert GatewayConfig.from_env(
        {"HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS": "8"}).device_max_inflight_requests == 8
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({"HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS": "0"})
