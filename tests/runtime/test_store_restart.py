"""W-2 (short version): the store killed (kill -9) and restarted on the same port from its AOF while a truck
streams and the consumers run. No service exits; health says NOT_SERVING while a part is stuck and SERVING
after; every frame acknowledged before, during or after the outage is stored, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import redis.asyncio

from services.runtime import LIVENESS_SERVICE, Mesh, check_health, connect_async
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, running_mesh, wait_for
from tests.store_faults import ConnectionsRefused, kill_store, restart_store
from tests.telemetry.helpers import Session, batch
from tests.trucks import Truck


class Truckline:
    """A truck that resends whatever is not acked on a new session after its stream broke (the edge client's
    resume, reduced to what the test needs)."""

    def __init__(self, mesh: Mesh, truck: Truck) -> None:
        self.mesh, self.truck = mesh, truck
        self.sent = 0
        self.acked = 0
        self._channel: grpc.aio.Channel | None = None
        self.session: Session | None = None

    async def connect(self) -> None:
        await self.close()
        self._channel = grpc.aio.secure_channel(self.mesh.address("telemetry"), self.truck.credentials())
        self.session = Session(self._channel)
        self.session.send(self.truck.hello(self.acked))
        if self.sent > self.acked:  # replay what the server never acknowledged
            self.session.send(batch([self.truck.frame(s) for s in range(self.acked + 1, self.sent + 1)]))

    def send_one(self) -> None:
        self.sent += 1
        assert self.session is not None
        self.session.send(batch([self.truck.frame(self.sent)]))

    def observe(self) -> int:
        if self.session is not None:
            self.acked = max(self.acked, self.session.acked_through)
        return self.acked

    async def run(self) -> None:
        """Send a frame every 20 ms; a broken stream is reopened (after a pause) and the unacked resent."""
        await self.connect()
        while True:
            self.observe()
            if self.session is not None and self.session.ended.is_set():
                await asyncio.sleep(0.3)
                await self.connect()
                continue
            self.send_one()
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.session is not None:
            self.observe()
            await self.session.aclose()
        if self._channel is not None:
            await self._channel.close()


@pytest.fixture(scope="module")
async def w2_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("w2")) as mesh:
        yield mesh


async def _through_a_fault(mesh: Mesh, mesh_pki: Pki, fault: Callable[[], Awaitable[None]],
                           heal: Callable[[], Awaitable[None]]) -> None:
    """A truck streams; ``fault`` breaks the store; health must say NOT_SERVING (some service); ``heal`` mends
    it; then every service is SERVING again, no process was replaced, the truck's acks pass everything sent,
    and every acknowledged frame is stored once, in order, without a hole."""
    pids = {name: child.process.pid for name, child in mesh.children.items()}
    truck = Truck.mint(mesh_pki.ca, f"W2-{uuid.uuid4().hex[:8].upper()}")
    line = Truckline(mesh, truck)
    driving = asyncio.ensure_future(line.run())
    seen_not_serving: set[str] = set()
    try:
        await wait_for(lambda: line.observe() >= 20, timeout_seconds=30)
        acked_before = line.observe()
        await fault()

        async def stuck() -> bool:
            statuses = await mesh.status()
            stuck_now = [n for n, s in statuses.items() if s == "NOT_SERVING"]
            seen_not_serving.update(stuck_now)
            # Not ready, yet alive: the liveness probe's answer stays SERVING, so a kubelet restarts nothing.
            alive = [await check_health(mesh.address(n), mesh.operator_credentials(), service=LIVENESS_SERVICE)
                     for n in stuck_now]
            assert set(alive) <= {"SERVING"}, dict(zip(stuck_now, alive, strict=True))
            return bool(seen_not_serving)

        await wait_for(stuck, timeout_seconds=30, interval_seconds=0.2)
        await asyncio.sleep(1)  # an outage of a moment more, with the truck still sending
        await heal()
        await mesh.wait_serving(timeout_seconds=60)
        target = line.sent
        await wait_for(lambda: line.observe() >= target, timeout_seconds=60, interval_seconds=0.1)
    finally:
        driving.cancel()
        await asyncio.gather(driving, return_exceptions=True)
        await line.close()
    assert {name: child.process.pid for name, child in mesh.children.items()} == pids  # nobody exited
    assert all(child.process.returncode is None for child in mesh.children.values())
    assert seen_not_serving and line.acked > acked_before
    client: redis.asyncio.Redis = connect_async(mesh.store.url)
    try:
        entries = await client.xrange(TelemetryStore.frames_key(truck.vehicle_id))
    finally:
        await client.aclose()
    sequences = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
    assert sequences[:line.acked] == list(range(1, line.acked + 1))
    assert len(sequences) == len(set(sequences))


async def test_store_killed_and_restarted_on_its_port(w2_mesh: Mesh, mesh_pki: Pki) -> None:
    async def kill() -> None:
        kill_store(w2_mesh)

    async def restart() -> None:
        await asyncio.to_thread(restart_store, w2_mesh)

    await _through_a_fault(w2_mesh, mesh_pki, kill, restart)


async def test_store_out_of_connections(w2_mesh: Mesh, mesh_pki: Pki) -> None:
    """Every connection of every service dropped while the store takes no new one (maxclients reached):
    every pool is exhausted and cannot refill until the store takes clients again."""
    store = ConnectionsRefused(w2_mesh.store.url)
    try:
        await _through_a_fault(w2_mesh, mesh_pki, store.exhaust, store.heal)
    finally:
        await store.aclose()
