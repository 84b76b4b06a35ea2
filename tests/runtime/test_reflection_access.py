"""gRPC reflection is closed to vehicles (issue 12, least privilege) and open to services and operators.

A real runtime server over real mTLS on a real store, serving only what every server serves (health and
reflection), asked by a real reflection client (v1alpha, the protocol the pinned grpcio-reflection serves;
the policy closes v1 alike).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime import Policy, Service, status_of

from ..conftest import Pki
from .conftest import tender_server_config


@pytest.fixture
async def bare_server(tmp_path: Path, store_url: str):
    """A server with no API of its own: only the builtin rules (health, reflection) apply."""
    p, config = tender_server_config(tmp_path, store_url)
    service = Service(config, Policy({}))
    await service.start()
    yield service, p
    await service.stop()


async def _list_services(port: int, credentials: grpc.ChannelCredentials) -> set[str]:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        try:
            reply = await call.read()
        finally:
            call.cancel()
    return {s.name for s in reply.list_services_response.service}


async def test_a_vehicle_is_denied_reflection(bare_server: tuple[Service, Pki]) -> None:
    service, p = bare_server
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list_services(service.bound_port, p.credentials("vehicle", "AU-TRK-1001"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = status_of(caught.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("kind,name", [("operator", "cli"), ("service", "gateway")])
async def test_operators_and_services_may_reflect(bare_server: tuple[Service, Pki], kind: str,
                                                  name: str) -> None:
    service, p = bare_server
    listed = await _list_services(service.bound_port, p.credentials(kind, name))
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed


async def test_a_vehicle_may_still_check_health(bare_server: tuple[Service, Pki]) -> None:
    """``edge_client check`` asks the telemetry service's health as the truck: that stays open."""
    service, p = bare_server
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}",
                                       p.credentials("vehicle", "AU-TRK-1001")) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
