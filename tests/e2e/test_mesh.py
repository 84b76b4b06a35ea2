"""The whole mesh as real processes on a real embedded store, every call over real mTLS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import MESH_SERVICES, Mesh, free_port

from ..conftest import Pki, rich_error

ROOT = Path(__file__).resolve().parents[2]

#: The gRPC services each process must serve, besides health and reflection.
SERVED = {
    "tender": "haulmesh.tender.v1.TenderService",
    "mission": "haulmesh.mission.v1.MissionService",
    "telemetry": "haulmesh.telemetry.v1.TelemetryService",
    "billing": "haulmesh.billing.v1.BillingService",
    "gateway": "haulmesh.gateway.v1.WebhookService",
}


async def test_every_service_reports_serving(mesh: Mesh, mesh_pki: Pki) -> None:
    assert await mesh.status() == {name: "SERVING" for name in MESH_SERVICES}
    credentials = mesh_pki.credentials("operator", "probe")
    for name, service in SERVED.items():
        async with grpc.aio.secure_channel(mesh.address(name), credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_reflection_lists_each_servers_services(mesh: Mesh, mesh_pki: Pki) -> None:
    # As an operator: reflection is closed to vehicles (tests/runtime/test_reflection_access.py).
    credentials = mesh_pki.credentials("operator", "cli")
    for name, service in SERVED.items():
        async with grpc.aio.secure_channel(mesh.address(name), credentials) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5)
            reply = await call.read()
            call.cancel()
        listed = {s.name for s in reply.list_services_response.service}
        assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed, name


async def test_truck_is_denied_on_tenders_and_gateway_is_allowed(mesh: Mesh, mesh_pki: Pki) -> None:
    request = tender_service_pb2.ListTendersRequest()
    metadata = (("haulmesh-carrier", "carriers/carrier-1"),)
    async with grpc.aio.secure_channel(mesh.address("tender"),
                                       mesh_pki.credentials("vehicle", "AU-TRK-1001")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tender_service_pb2_grpc.TenderServiceStub(channel).ListTenders(request, metadata=metadata,
                                                                                 timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(mesh.address("tender"),
                                       mesh_pki.credentials("service", "gateway")) as channel:
        reply = await tender_service_pb2_grpc.TenderServiceStub(channel).ListTenders(request, metadata=metadata,
                                                                                     timeout=5)
    assert list(reply.tenders) == [] and reply.next_page_token == ""


def _error(error: grpc.aio.AioRpcError) -> tuple[str, str, list[str]]:
    """(code, ErrorInfo reason, BadRequest fields) of a rich error."""
    e = rich_error(error)
    return e.code, e.reason, e.fields


@pytest.mark.parametrize("name,metadata,expected", [
    ("tenders/does-not-exist", (("haulmesh-carrier", "carriers/carrier-1"),),
     ("NOT_FOUND", "TENDER_NOT_FOUND", [])),
    ("trucks/x", (("haulmesh-carrier", "carriers/carrier-1"),),
     ("INVALID_ARGUMENT", "INVALID_RESOURCE_NAME", ["name"])),
    ("tenders/x", (), ("INVALID_ARGUMENT", "TENANT_REQUIRED", [])),
    ("tenders/x", (("haulmesh-carrier", "Carrier One"),), ("INVALID_ARGUMENT", "TENANT_REQUIRED", [])),
])
async def test_errors_are_rich_statuses(mesh: Mesh, mesh_pki: Pki, name: str, metadata: tuple,
                                        expected: tuple) -> None:
    async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tender_service_pb2_grpc.TenderServiceStub(ch).GetTender(
                tender_service_pb2.GetTenderRequest(name=name), metadata=metadata, timeout=5)
    assert _error(caught.value) == expected


async def test_page_tokens_are_checked(mesh: Mesh, mesh_pki: Pki) -> None:
    metadata = (("haulmesh-carrier", "carriers/carrier-1"),)
    async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
        stub = tender_service_pb2_grpc.TenderServiceStub(ch)
        for request, reason in [
            (tender_service_pb2.ListTendersRequest(page_token="garbage"), "INVALID_PAGE_TOKEN"),
            (tender_service_pb2.ListTendersRequest(page_size=-1), "INVALID_PAGE_SIZE"),
            (tender_service_pb2.ListTendersRequest(filter="colour = 'red'"), "INVALID_FILTER"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListTenders(request, metadata=metadata, timeout=5)
            assert _error(caught.value)[:2] == ("INVALID_ARGUMENT", reason)


def _buf() -> str:
    buf = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.skip("buf is not installed (`make tools` installs it; `make test` does so first)")
    return str(buf)


async def test_buf_curl_through_reflection(mesh: Mesh, mesh_pki: Pki) -> None:
    """A real reflection-driven client: the truck's certificate is denied (reflection is closed to vehicles, so
    buf never gets the schema; the method itself is denied to trucks too, see the test above), the gateway's
    allowed."""
    certs = mesh_pki.directory
    url = f"https://{mesh.address('tender')}/haulmesh.tender.v1.TenderService/ListTenders"

    def curl(stem: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_buf(), "curl", "--protocol", "grpc", "--reflect", "--cacert", str(certs / "ca.pem"),
             "--cert", str(certs / f"{stem}.pem"), "--key", str(certs / f"{stem}-key.pem"),
             "-H", "haulmesh-carrier: carriers/carrier-1", "-d", "{}", url],
            capture_output=True, text=True, timeout=60)

    denied = await asyncio.to_thread(curl, "vehicle-AU-TRK-1001")
    assert denied.returncode != 0
    assert "failed to find service" in denied.stderr, denied.stderr
    allowed = await asyncio.to_thread(curl, "gateway")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout or "{}") == {}


def _cli_env(mesh: Mesh, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAULMESH_")}
    env.update({f"HAULMESH_{n.upper()}_ADDR": mesh.address(n) for n in MESH_SERVICES})
    env["HAULMESH_CERT_DIR"] = str(mesh.cert_dir)
    env["HAULMESH_STATE_DIR"] = str(mesh.state_dir)
    env.update(overrides)
    return env


async def test_status_command_exit_codes(mesh: Mesh) -> None:
    haulmesh = [sys.executable, "-m", "services.runtime.cli", "status"]
    ok = await asyncio.to_thread(subprocess.run, haulmesh, env=_cli_env(mesh), capture_output=True, text=True,
                                 timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("SERVING") >= len(MESH_SERVICES)
    down = await asyncio.to_thread(subprocess.run, haulmesh,
                                   env=_cli_env(mesh, HAULMESH_BILLING_ADDR=f"127.0.0.1:{free_port()}"),
                                   capture_output=True, text=True, timeout=60)
    assert down.returncode == 1
    assert "NOT all services are SERVING" in down.stdout


async def test_gateway_http_probes(mesh: Mesh) -> None:
    def get(path: str) -> tuple[int, dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{mesh.http_port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())

    assert await asyncio.to_thread(get, "/healthz") == (200, {"status": "ok"})
    assert await asyncio.to_thread(get, "/readyz") == (200, {"status": "ready"})


async def test_edge_client_connects_as_its_truck(mesh: Mesh) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edge_client", "--cert-dir", str(mesh.cert_dir), "--target", mesh.address("telemetry"),
         "check", "--vehicle", "AU-TRK-1001"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SERVING (as vehicle AU-TRK-1001)" in result.stdout


async def test_sigterm_turns_health_not_serving_before_the_server_stops(mesh: Mesh, mesh_pki: Pki) -> None:
    port = free_port()
    env = _cli_env(mesh, HAULMESH_PORT=str(port), HAULMESH_GRACE_PERIOD_SECONDS="2",
                   HAULMESH_SHUTDOWN_DRAIN_SECONDS="0.5",
                   REDIS_URL=mesh.store.url if mesh.store else mesh.redis_url or "")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.tender", env=env,
                                                   stderr=asyncio.subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.secure_channel(address, mesh_pki.credentials("operator", "probe")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(200):
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # While draining, the server still answers: NOT_SERVING came before the stop.
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await asyncio.wait_for(process.wait(), 15) == 0
        log = (await process.stderr.read()).decode()
        assert "health NOT_SERVING" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
