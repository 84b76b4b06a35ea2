"""A carrier's whole fleet on one watch (WatchFleetTelemetry; over REST ``GET /api/v1/vehicles:watchTelemetry`` as
Server-Sent Events): every vehicle running one of its missions, none of another carrier's, and a vehicle whose
mission starts after the watch opened joins it. The session mesh (real processes, mTLS, Valkey, signed truck
streams)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import httpx

from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import Mesh, carrier_metadata
from services.telemetry.usecases.reads import FLEET_REFRESH_SECONDS
from tests.conftest import Pki, wait_for
from tests.gateway.rest.conftest import bearer
from tests.telemetry.helpers import Session, Truck, batch, dispatch_to

from .test_mission_reads import EventStream, truck_stream

READ = "telemetry:read"


class Driving:
    """Trucks each sending a position frame every 200 ms (sequences from 1) while the block runs."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[Truck, Session, list[int]]] = {}
        self._stack = AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def add(self, mesh: Mesh, truck: Truck) -> None:
        session = await self._stack.enter_async_context(truck_stream(mesh, truck))
        self.sessions[truck.vehicle_id] = (truck, session, [0])

    async def _run(self) -> None:
        while True:
            for truck, session, sent in list(self.sessions.values()):
                sent[0] += 1
                session.send(batch([truck.frame(sent[0])]))
            await asyncio.sleep(0.2)

    async def __aenter__(self) -> Driving:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stack.aclose()


@asynccontextmanager
async def fleet_watch(mesh: Mesh, mesh_pki: Pki, carrier: str,
                      kinds: tuple[int, ...] = ()) -> AsyncIterator[list[frame_pb2.TelemetryFrame]]:
    """The gateway's view of ``carrier``'s fleet over gRPC: the frames received so far, appended as they come."""
    received: list[frame_pb2.TelemetryFrame] = []
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("service", "gateway")) as ch:
        call = telemetry_service_pb2_grpc.TelemetryServiceStub(ch).WatchFleetTelemetry(
            telemetry_service_pb2.WatchFleetTelemetryRequest(kinds=kinds), metadata=carrier_metadata(carrier))
        await call.initial_metadata()

        async def read() -> None:
            async for reply in call:
                received.append(reply.telemetry_frame)

        reader = asyncio.create_task(read())
        try:
            yield received
        finally:
            call.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader


def _vehicles(frames: list[frame_pb2.TelemetryFrame]) -> set[str]:
    return {f.payload.vehicle_id for f in frames}


async def test_one_watch_follows_the_carriers_fleet_and_only_it(mesh: Mesh, mesh_pki: Pki) -> None:
    carrier, other = f"fleet-{uuid.uuid4().hex[:8]}", f"fleet-other-{uuid.uuid4().hex[:8]}"
    first, second, foreign, late = (Truck.mint(mesh_pki.ca, f"FL-{uuid.uuid4().hex[:8].upper()}") for _ in range(4))
    missions = {truck.vehicle_id: await dispatch_to(mesh, mesh_pki, truck, carrier) for truck in (first, second)}
    await dispatch_to(mesh, mesh_pki, foreign, other)
    async with Driving() as driving:
        for truck in (first, second, foreign):
            await driving.add(mesh, truck)
        async with fleet_watch(mesh, mesh_pki, carrier, (frame_pb2.FramePayload.KIND_POSITION,)) as frames:
            # Both of the carrier's trucks on the one stream (a mission just dispatched may take a refresh to join).
            await wait_for(lambda: _vehicles(frames) >= {first.vehicle_id, second.vehicle_id},
                           timeout_seconds=4 * FLEET_REFRESH_SECONDS + 10)
            # A mission dispatched while the watch is open: its truck joins at a refresh.
            missions[late.vehicle_id] = await dispatch_to(mesh, mesh_pki, late, carrier)
            await driving.add(mesh, late)
            await wait_for(lambda: late.vehicle_id in _vehicles(frames), timeout_seconds=4 * FLEET_REFRESH_SECONDS + 10)
            seen = list(frames)
    assert foreign.vehicle_id not in _vehicles(seen)  # another carrier's truck, streaming all along
    for frame in seen:  # each frame named under its own mission, as a mission watch names it
        mission = missions[frame.payload.vehicle_id]
        assert frame.name == f"{mission.name}/telemetryFrames/{frame.signed_frame.sequence}"
        assert frame.payload.kind == frame_pb2.FramePayload.KIND_POSITION
    by_vehicle: dict[str, list[int]] = {}
    for frame in seen:
        by_vehicle.setdefault(frame.payload.vehicle_id, []).append(frame.signed_frame.sequence)
    for sequences in by_vehicle.values():  # per vehicle ascending, never twice
        assert sequences == sorted(set(sequences))
    print(f"fleet watch: {len(seen)} frames of {sorted(by_vehicle)}; none of the other carrier's truck")


async def test_the_fleet_stream_over_server_sent_events(mesh: Mesh, mesh_pki: Pki, base_url: str, token) -> None:
    carrier = f"fleet-sse-{uuid.uuid4().hex[:8]}"
    truck = Truck.mint(mesh_pki.ca, f"FS-{uuid.uuid4().hex[:8].upper()}")
    mission = await dispatch_to(mesh, mesh_pki, truck, carrier)
    headers = {**bearer(token(carrier, READ)), "Accept": "text/event-stream"}
    async with Driving() as driving:
        await driving.add(mesh, truck)
        async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=60)) as client, \
                client.stream("GET", "/api/v1/vehicles:watchTelemetry", params={"kinds": "KIND_POSITION"},
                              headers=headers) as response:
            assert response.status_code == 200, (await response.aread()).decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            events = EventStream(response)
            event = await events.next(timeout_seconds=4 * FLEET_REFRESH_SECONDS + 15)
    assert event is not None and event.event == "telemetryFrame"
    assert event.id == ""  # sequences are per vehicle: a fleet stream has nothing to resume from
    frame = event.json["telemetryFrame"]
    assert frame["payload"]["vehicleId"] == truck.vehicle_id
    assert frame["payload"]["kind"] == "KIND_POSITION"
    assert frame["name"].startswith(f"{mission.name}/telemetryFrames/")
    # Without the scope: refused before any stream.
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        refused = await client.get("/api/v1/vehicles:watchTelemetry",
                                   headers={**bearer(token(carrier, "mission:read")), "Accept": "text/event-stream"})
    assert refused.status_code == 403
