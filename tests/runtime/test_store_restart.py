"""W-2 (short version): the store killed (kill -9) and restarted on the same port from its AOF while a truck
streams and the consumers run. No service exits; health says NOT_SERVING while a part is stuck and SERVING
after; every frame acknowledged before, during or after the outage is stored, once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import redis.asyncio

from services.runtime import EmbeddedStore, Mesh, connect_async
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, running_mesh, wait_for
from tests.telemetry.helpers import Session, batch
from tests.trucks import Truck


def _restart_store(mesh: Mesh) -> int:
    """Start the mesh's embedded Valkey again from its own config (same port, password, AOF directory) and
    record its new pid where EmbeddedStore (and so the mesh's stop) finds it. Returns the pid."""
    directory = mesh.state_dir / "store"
    pidfile = directory / "valkey.pid"
    pidfile.unlink(missing_ok=True)
    subprocess.run([EmbeddedStore.executable(), str(directory / "valkey.conf")], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True, timeout=30)
    record = json.loads((directory / "store.json").read_text())
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text().strip():
            record["pid"] = int(pidfile.read_text().strip())
            (directory / "store.json").write_text(json.dumps(record))
            return record["pid"]
        time.sleep(0.05)
    raise AssertionError("the restarted store wrote no pid file")


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


async def test_store_killed_and_restarted_nothing_exits_health_follows_no_acked_frame_lost(
        mesh_pki: Pki, tmp_path: Path) -> None:
    async with running_mesh(mesh_pki, tmp_path) as mesh:
        pids = {name: child.process.pid for name, child in mesh.children.items()}
        truck = Truck.mint(mesh_pki.ca, f"W2-{uuid.uuid4().hex[:8].upper()}")
        line = Truckline(mesh, truck)
        driving = asyncio.ensure_future(line.run())
        try:
            await wait_for(lambda: line.observe() >= 20, timeout_seconds=30)
            acked_before = line.observe()
            os.kill(mesh.store.pid, signal.SIGKILL)
            # While the store is gone the consumers cannot make progress: health says so (some service).
            seen_not_serving: set[str] = set()

            async def stuck() -> bool:
                statuses = await mesh.status()
                seen_not_serving.update(n for n, s in statuses.items() if s == "NOT_SERVING")
                return bool(seen_not_serving)

            await wait_for(stuck, timeout_seconds=30, interval_seconds=0.2)
            await asyncio.sleep(1)  # an outage of a moment more, with the truck still sending
            _restart_store(mesh)
            # Back: every service SERVING again, and the truck's acks go past everything sent before.
            await mesh.wait_serving(timeout_seconds=60)
            target = line.sent
            await wait_for(lambda: line.observe() >= target, timeout_seconds=60, interval_seconds=0.1)
        finally:
            driving.cancel()
            await asyncio.gather(driving, return_exceptions=True)
            await line.close()
        # No service exited (same processes throughout).
        assert {name: child.process.pid for name, child in mesh.children.items()} == pids
        assert all(child.process.returncode is None for child in mesh.children.values())
        assert seen_not_serving and line.acked > acked_before
        # Every acknowledged frame is stored, once, in order: 1..acked with no gap.
        client: redis.asyncio.Redis = connect_async(mesh.store.url)
        try:
            entries = await client.xrange(TelemetryStore.frames_key(truck.vehicle_id))
        finally:
            await client.aclose()
        sequences = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
        assert sequences[:line.acked] == list(range(1, line.acked + 1))
        assert len(sequences) == len(set(sequences))
