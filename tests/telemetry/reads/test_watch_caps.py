"""W-1 (short version): more watches than the caps, over SSE as one carrier and over gRPC as operators, while a
truck streams. Those beyond a cap are refused with a retry hint (429 + Retry-After; RESOURCE_EXHAUSTED with
google.rpc.RetryInfo), the telemetry process stays up and SERVING, the truck's acks go on, and a slot freed by
a closed watch is taken again. Real mesh (processes, mTLS, Valkey), caps made small through the environment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import httpx
import pytest

from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import Mesh, ResourceExhausted, retry_delay_seconds, status_of
from services.runtime.tokens import mint
from services.telemetry.config import TelemetryConfig
from services.telemetry.usecases.reads import WatchSlots
from tests.conftest import Pki, rich_error, running_mesh, wait_for
from tests.gateway.rest.conftest import bearer, error_info
from tests.telemetry.helpers import Session, batch, dispatch_to
from tests.trucks import Truck

PER_TENANT, PER_PROCESS, RETRY_AFTER_SECONDS = 2, 4, 7
ENV = {
    "HAULMESH_TELEMETRY_MAX_WATCHES_PER_TENANT": str(PER_TENANT),
    "HAULMESH_TELEMETRY_MAX_WATCHES_PER_PROCESS": str(PER_PROCESS),
    "HAULMESH_TELEMETRY_WATCH_POOL_CONNECTIONS": str(PER_PROCESS),
    "HAULMESH_TELEMETRY_WATCH_RETRY_AFTER_SECONDS": str(RETRY_AFTER_SECONDS),
    # Above telemetry's per-tenant cap, so the service's refusal is what the third stream meets.
    "HAULMESH_SSE_MAX_STREAMS_PER_CARRIER": str(PER_TENANT + 1),
    "HAULMESH_RATE_LIMIT": "off",
}


@pytest.fixture(scope="module")
async def capped(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("watch-caps"), env=ENV) as mesh:
        yield mesh


class Streaming:
    """A truck streaming one frame every few milliseconds, counting what is acked."""

    def __init__(self, truck: Truck, session: Session) -> None:
        self.truck, self.session, self.sent = truck, session, 0

    async def run(self) -> None:
        while True:
            self.sent += 1
            self.session.send(batch([self.truck.frame(self.sent)]))
            await asyncio.sleep(0.02)

    async def acks_advance(self) -> None:
        """The truck's acks pass what was sent now (ingest goes on)."""
        target = self.sent
        await wait_for(lambda: self.session.acked_through >= target, timeout_seconds=20)


async def _first_frame(call: object) -> None:
    reply = await asyncio.wait_for(call.read(), 20)  # type: ignore[attr-defined]
    assert reply is not grpc.aio.EOF and reply.telemetry_frame.signed_frame.sequence > 0


def _refusal(error: grpc.aio.AioRpcError, scope: str) -> None:
    rich = rich_error(error)
    assert (rich.code, rich.reason, rich.metadata["scope"]) == ("RESOURCE_EXHAUSTED", "TOO_MANY_WATCHES", scope)
    assert retry_delay_seconds(status_of(error)) == RETRY_AFTER_SECONDS


async def test_watches_beyond_the_caps_are_refused_with_a_retry_hint_while_ingest_goes_on(
        capped: Mesh, mesh_pki: Pki) -> None:
    mesh = capped
    truck = Truck.mint(mesh_pki.ca, f"WC-{uuid.uuid4().hex[:8].upper()}")
    carrier = f"caps-{uuid.uuid4().hex[:8]}"
    mission = await dispatch_to(mesh, mesh_pki, truck, carrier)
    token = mint(carrier=carrier, scopes="telemetry:read", state_dir=mesh.state_dir)
    headers = {**bearer(token), "Accept": "text/event-stream"}
    url = f"/api/v1/{mission.name}:watchTelemetry"
    vehicle = telemetry_service_pb2.WatchVehicleTelemetryRequest(vehicle=f"vehicles/{truck.vehicle_id}")
    async with AsyncExitStack() as stack:
        channel = await stack.enter_async_context(grpc.aio.secure_channel(mesh.address("telemetry"),
                                                                          truck.credentials()))
        session = Session(channel)
        stack.push_async_callback(session.aclose)
        session.send(truck.hello())
        streaming = Streaming(truck, session)
        pump = asyncio.ensure_future(streaming.run())
        stack.callback(pump.cancel)
        await streaming.acks_advance()
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}",
                                                                 timeout=httpx.Timeout(10, read=60)))
        # SSE as one carrier: its cap's worth of streams open (each sees a frame), the next is refused 429.
        sse = []
        for _ in range(PER_TENANT):
            response = await stack.enter_async_context(http.stream("GET", url, headers=headers))
            assert response.status_code == 200, (await response.aread()).decode()
            seen = asyncio.Event()
            drain = asyncio.ensure_future(_drain(response.aiter_lines(), seen))
            stack.callback(drain.cancel)
            await asyncio.wait_for(seen.wait(), 20)
            sse.append((response, drain))
        async with http.stream("GET", url, headers=headers) as refused:
            body = await asyncio.wait_for(refused.aread(), 10)
        assert refused.status_code == 429, body
        assert refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert error_info(refused.json())["reason"] == "TOO_MANY_WATCHES"

        # gRPC as an operator: its cap's worth open, the next refused with RetryInfo (tenant scope) ...
        ops = await stack.enter_async_context(grpc.aio.secure_channel(
            mesh.address("telemetry"), mesh_pki.credentials("operator", "ops")))
        watches = [telemetry_service_pb2_grpc.TelemetryServiceStub(ops).WatchVehicleTelemetry(vehicle, timeout=120)
                   for _ in range(PER_TENANT)]
        for call in watches:
            stack.callback(call.cancel)
            await _first_frame(call)
        with pytest.raises(grpc.aio.AioRpcError) as tenant_refusal:
            await _first_frame(telemetry_service_pb2_grpc.TelemetryServiceStub(ops).WatchVehicleTelemetry(
                vehicle, timeout=30))
        _refusal(tenant_refusal.value, "tenant")
        # ... and now the process is full: another operator is refused too (process scope).
        other = await stack.enter_async_context(grpc.aio.secure_channel(
            mesh.address("telemetry"), mesh_pki.credentials("operator", "other")))
        other_stub = telemetry_service_pb2_grpc.TelemetryServiceStub(other)
        with pytest.raises(grpc.aio.AioRpcError) as process_refusal:
            await _first_frame(other_stub.WatchVehicleTelemetry(vehicle, timeout=30))
        _refusal(process_refusal.value, "process")

        # Through all of it: the truck's acks go on, telemetry is up and SERVING.
        await streaming.acks_advance()
        assert mesh.children["telemetry"].process.returncode is None
        assert (await mesh.status())["telemetry"] == "SERVING"

        # A watch closed frees its slot: the other operator gets in (the release travels gateway → service).
        sse[0][1].cancel()
        await sse[0][0].aclose()

        async def admitted() -> bool:
            call = other_stub.WatchVehicleTelemetry(vehicle, timeout=60)
            try:
                await _first_frame(call)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                return False
            stack.callback(call.cancel)
            return True

        await wait_for(admitted, timeout_seconds=20, interval_seconds=0.2)
        await streaming.acks_advance()


async def _drain(lines: AsyncIterator[str], seen: asyncio.Event) -> None:
    """Read an event stream (as a client does, so nothing backs up), setting ``seen`` at the first frame."""
    async for line in lines:
        if line.startswith("data:"):
            seen.set()


def test_watch_caps_from_the_environment_never_exceed_the_pool() -> None:
    config = TelemetryConfig.from_env({"HAULMESH_TELEMETRY_WATCH_POOL_CONNECTIONS": "8",
                                       "HAULMESH_TELEMETRY_MAX_WATCHES_PER_PROCESS": "100",
                                       "HAULMESH_TELEMETRY_MAX_WATCHES_PER_TENANT": "3",
                                       "HAULMESH_TELEMETRY_WATCH_RETRY_AFTER_SECONDS": "2.5"})
    # Each watch holds one connection: more watches than connections would queue on the pool and time out.
    assert (config.watch_pool_connections, config.max_watches_per_process, config.max_watches_per_tenant,
            config.watch_retry_after_seconds) == (8, 8, 3, 2.5)
    defaults = TelemetryConfig.from_env({})
    assert (defaults.watch_pool_connections, defaults.max_watches_per_process,
            defaults.max_watches_per_tenant) == (256, 256, 32)


def test_a_watch_slot_is_released_however_the_watch_ends() -> None:
    slots = WatchSlots(per_process=2, per_tenant=1, retry_after_seconds=1)
    with pytest.raises(RuntimeError), slots.hold("carriers/a"):
        raise RuntimeError("the client went away")
    assert slots.total == 0 and slots.open("carriers/a") == 0
    with slots.hold("carriers/a"), pytest.raises(ResourceExhausted) as refused:
        with slots.hold("carriers/a"):
            pass
    assert refused.value.retry_after_seconds == 1 and refused.value.metadata["scope"] == "tenant"
