"""The TMS reads a mission's telemetry through the REST gateway: a page-by-page list and a live Server-Sent
Events watch, tenant-scoped, on the real mesh (real processes, mTLS, Valkey, a real signed truck stream)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
import redis.asyncio

from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.gateway.rest.sse import HEARTBEAT_SECONDS
from services.runtime import Mesh, carrier_metadata
from tests.conftest import Pki, rich_error, wait_for
from tests.gateway.rest.conftest import bearer, error_info
from tests.telemetry.helpers import Session, Truck, batch

from .conftest import Dispatched, cancel_mission

READ = "telemetry:read"


@asynccontextmanager
async def truck_stream(mesh: Mesh, truck: Truck) -> AsyncIterator[Session]:
    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        try:
            yield session
        finally:
            await session.aclose()


async def send(session: Session, frames: list) -> None:
    """Send frames and wait until the telemetry service acknowledged them as durable."""
    session.send(batch(frames))
    last = max(f.sequence for f in frames)
    await wait_for(lambda: session.acked_through >= last, timeout_seconds=30)


@dataclass
class Event:
    event: str = ""
    id: str = ""
    data: str = ""

    @property
    def json(self) -> dict:
        return json.loads(self.data)


@dataclass
class EventStream:
    """An open text/event-stream response, parsed as the SSE spec says (comments kept apart)."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lines = self.response.aiter_lines()

    async def next(self, timeout_seconds: float = 20) -> Event | None:
        """The next event with data; None when the server ended the stream."""
        return await asyncio.wait_for(self._next(), timeout_seconds)

    async def _next(self) -> Event | None:
        current = Event()
        async for line in self._lines:
            if line == "":
                if current.data:
                    return current
                current = Event()
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    current.data = f"{current.data}\n{value}" if current.data else value
                elif name in {"event", "id"}:
                    setattr(current, name, value)
        return None


@asynccontextmanager
async def watch(base_url: str, dispatched: Dispatched, credential: str,
                last_event_id: str | None = None) -> AsyncIterator[EventStream]:
    headers = {**bearer(credential), "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=60)) as client, \
            client.stream("GET", f"/api/v1/{dispatched.mission.name}:watchTelemetry", headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


async def list_all(http: httpx.AsyncClient, dispatched: Dispatched, credential: str,
                   page_size: int) -> tuple[list[dict], int]:
    frames, pages, token_ = [], 0, ""
    while True:
        params = {"pageSize": str(page_size), **({"pageToken": token_} if token_ else {})}
        response = await http.get(f"/api/v1/{dispatched.mission.name}/telemetryFrames", params=params,
                                  headers=bearer(credential))
        assert response.status_code == 200, response.text
        body = response.json()
        frames += body["telemetryFrames"]
        pages += 1
        token_ = body["nextPageToken"]
        if not token_:
            return frames, pages


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        yield client


async def test_list_a_missions_frames_page_by_page(mesh: Mesh, http, token, dispatched: Dispatched) -> None:
    truck, mission_id = dispatched.truck, dispatched.mission_id
    before_dispatch = dispatched.mission.dispatch_time.ToMilliseconds() / 1000 - 600
    async with truck_stream(mesh, truck) as session:
        await send(session, [
            # Recorded before the mission was dispatched (a replayed backlog): not the mission's.
            truck.frame(1, device_time=before_dispatch), truck.frame(2, device_time=before_dispatch + 1),
            # During the mission, without a trip id or with this mission's: the mission's.
            truck.frame(3), truck.frame(4), truck.frame(5, mission_id=mission_id), truck.frame(6),
            # During the mission but naming another trip: not this mission's.
            truck.frame(7, mission_id="01jother0mission0id0000000"),
            truck.frame(8, mission_id=mission_id), truck.frame(9),
        ])
    frames, pages = await list_all(http, dispatched, token(dispatched.carrier, READ), page_size=2)
    assert [int(f["signedFrame"]["sequence"]) for f in frames] == [3, 4, 5, 6, 8, 9]
    assert pages == 3
    assert frames[0]["name"] == f"{dispatched.mission.name}/telemetryFrames/3"
    assert frames[2]["payload"]["missionId"] == mission_id
    assert {f["payload"]["vehicleId"] for f in frames} == {truck.vehicle_id}
    # The signed bytes come back untouched: a TMS can verify them against the truck's certificate.
    assert frames[0]["signedFrame"]["payload"]
    # Filters of the request apply inside the mission.
    response = await http.get(f"/api/v1/{dispatched.mission.name}/telemetryFrames",
                              params={"minSequence": "5", "maxSequence": "8"},
                              headers=bearer(token(dispatched.carrier, READ)))
    assert [int(f["signedFrame"]["sequence"]) for f in response.json()["telemetryFrames"]] == [5, 6, 8]


async def test_the_list_ends_at_the_missions_end(mesh: Mesh, mesh_pki: Pki, http, token,
                                                 dispatched: Dispatched) -> None:
    truck = dispatched.truck
    async with truck_stream(mesh, truck) as session:
        await send(session, [truck.frame(1), truck.frame(2)])
        await cancel_mission(mesh, mesh_pki, dispatched)
        # Taken more than the clock-skew margin (300 s, the most a device clock may run ahead) after the end:
        # never the mission's, and no later frame can be, so the list stops scanning there.
        await asyncio.sleep(1)
        await send(session, [truck.frame(s, device_time=time.time() + 299.5) for s in range(3, 8)])
    frames, pages = await list_all(http, dispatched, token(dispatched.carrier, READ), page_size=2)
    assert [int(f["signedFrame"]["sequence"]) for f in frames] == [1, 2]
    assert pages == 1  # the page knew there was nothing further of the mission: no empty trailing page


async def test_watch_over_server_sent_events_then_resume(mesh: Mesh, mesh_pki: Pki, base_url: str, token,
                                                          dispatched: Dispatched) -> None:
    truck, credential = dispatched.truck, token(dispatched.carrier, READ)
    async with truck_stream(mesh, truck) as session:
        await send(session, [truck.frame(1)])  # before the watch: not sent on a live-only watch
        async with watch(base_url, dispatched, credential) as events:
            await send(session, [truck.frame(2), truck.frame(3, mission_id="01jother0mission0id0000000"),
                                 truck.frame(4)])
            first, second = await events.next(), await events.next()
        assert [(e.event, e.id) for e in (first, second)] == [("telemetryFrame", "2"), ("telemetryFrame", "4")]
        frame = first.json["telemetryFrame"]
        assert frame["name"] == f"{dispatched.mission.name}/telemetryFrames/2"
        assert frame["payload"]["vehicleId"] == truck.vehicle_id and frame["signedFrame"]["sequence"] == "2"
        # Disconnected, the truck goes on; the client reconnects with the last id it saw: nothing lost,
        # nothing twice.
        await send(session, [truck.frame(5), truck.frame(6)])
        async with watch(base_url, dispatched, credential, last_event_id="4") as events:
            replayed = [await events.next(), await events.next()]
            await send(session, [truck.frame(7)])
            live = await events.next()
            assert [e.id for e in [*replayed, live]] == ["5", "6", "7"]
            # The mission ends: the stream ends by itself, cleanly (no error event).
            await cancel_mission(mesh, mesh_pki, dispatched)
            assert await events.next(timeout_seconds=30) is None


async def test_disconnecting_cancels_the_watch_at_the_service(mesh: Mesh, base_url: str, token,
                                                              dispatched: Dispatched) -> None:
    """A client gone means the gateway's gRPC call is cancelled and the telemetry service stops reading the
    store for it (its XREAD BLOCK loop is the only blocking XREAD on the store)."""
    client = redis.asyncio.Redis.from_url(mesh.store.url)

    async def blocked_reads() -> int:
        return sum(1 for c in await client.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", ""))

    try:
        async with watch(base_url, dispatched, token(dispatched.carrier, READ)):
            await wait_for(blocked_reads, timeout_seconds=10)
        await wait_for(lambda: _zero(blocked_reads()), timeout_seconds=10)
        for _ in range(25):  # and it stays gone (not a sample between two reads of a live loop)
            assert await blocked_reads() == 0
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_an_idle_watch_gets_heartbeats(mesh: Mesh, base_url: str, token, dispatched: Dispatched) -> None:
    async with watch(base_url, dispatched, token(dispatched.carrier, READ)) as events:
        with pytest.raises(TimeoutError):
            await events.next(timeout_seconds=HEARTBEAT_SECONDS + 3)
        assert "heartbeat" in events.comments


async def test_another_carrier_gets_404_and_never_a_frame(mesh: Mesh, http, token, dispatched: Dispatched) -> None:
    truck = dispatched.truck
    async with truck_stream(mesh, truck) as session:
        await send(session, [truck.frame(1)])
    intruder = token("reads-intruder", READ)
    listed = await http.get(f"/api/v1/{dispatched.mission.name}/telemetryFrames", headers=bearer(intruder))
    watched = await http.get(f"/api/v1/{dispatched.mission.name}:watchTelemetry",
                             headers={**bearer(intruder), "Accept": "text/event-stream"})
    for response in (listed, watched):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert error_info(response.json())["reason"] == "MISSION_NOT_FOUND"
        assert "telemetryFrames" not in response.json()


async def test_missing_scope_is_403(http, token, dispatched: Dispatched) -> None:
    credential = token(dispatched.carrier, "mission:read tender:read")
    for path in (f"/api/v1/{dispatched.mission.name}/telemetryFrames",
                 f"/api/v1/{dispatched.mission.name}:watchTelemetry"):
        response = await http.get(path, headers=bearer(credential))
        assert response.status_code == 403, response.text
        assert error_info(response.json())["reason"] == "MISSING_SCOPE"


async def test_bad_last_event_id_is_400_before_the_stream(http, token, dispatched: Dispatched) -> None:
    response = await http.get(f"/api/v1/{dispatched.mission.name}:watchTelemetry",
                              headers={**bearer(token(dispatched.carrier, READ)), "Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert error_info(response.json())["reason"] == "INVALID_LAST_EVENT_ID"


async def test_vehicle_frames_stay_internal(mesh: Mesh, mesh_pki: Pki, http, token, dispatched: Dispatched) -> None:
    vehicle = dispatched.mission.vehicle
    response = await http.get(f"/api/v1/{vehicle}/telemetryFrames", headers=bearer(token(dispatched.carrier, READ)))
    assert response.status_code == 404
    assert error_info(response.json())["reason"] == "ROUTE_NOT_FOUND"
    # And the gateway's own identity cannot name a vehicle at the telemetry service either.
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("service", "gateway")) as ch:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ListTelemetryFrames(telemetry_service_pb2.ListTelemetryFramesRequest(parent=vehicle),
                                           metadata=carrier_metadata(dispatched.carrier), timeout=10)
        assert rich_error(denied.value)[:2] == ("PERMISSION_DENIED", "METHOD_NOT_ALLOWED")
        watch_call = stub.WatchVehicleTelemetry(telemetry_service_pb2.WatchVehicleTelemetryRequest(vehicle=vehicle),
                                                timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await watch_call.read()
        assert rich_error(denied.value)[:2] == ("PERMISSION_DENIED", "METHOD_NOT_ALLOWED")


async def test_openapi_documents_the_watch_as_an_event_stream(http) -> None:
    doc = (await http.get("/openapi.json")).json()
    operation = doc["paths"]["/api/v1/missions/{mission}:watchTelemetry"]["get"]
    assert operation["security"] == [{"oauth2": [READ]}]
    ok = operation["responses"]["200"]["content"]
    assert list(ok) == ["text/event-stream"]
    assert ok["text/event-stream"]["x-event-schema"] == {
        "$ref": "#/components/schemas/haulmesh.telemetry.v1.WatchMissionTelemetryResponse"}
    assert "Last-Event-ID" in {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert operation["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/google.rpc.Status"}
    assert "/api/v1/missions/{mission}/telemetryFrames" in doc["paths"]
