"""The edge client when the telemetry service refuses a batch HIGH_WATER_BEHIND (a real telemetry process).

How the condition arises (services/telemetry/usecases/stream.py, store.py): a stream's batches are committed
while the next ones are read, each carrying ``after``, the high-water mark it needs. When an earlier batch of
the stream fails in the store, a later batch of the same commit group finds the mark behind and is refused
``HIGH_WATER_BEHIND`` (nothing stored, nothing counted): storing it would leave the failed batch's sequences to
pass for duplicates. The server acknowledges none of them and ends the stream UNAVAILABLE. The truck must then
reconnect, resume from the server's high-water mark and deliver every frame once: nothing acknowledged that was
not stored, nothing dropped from its spool.

Forced here for real: a telemetry process of the session mesh's store with a 2 s commit window (so the truck's
first batches ride one group) and 10-frame batches, and a stray entry at ``15-0`` in the vehicle's frame stream
(the XADD of sequence 1 then fails: the first batch fails in the store, the second is refused HIGH_WATER_BEHIND).
The stray entry is removed once the truck has seen its stream end; the truck's next session delivers all.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from edge_client.client import StreamClient
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import MESH_SERVICES, Mesh, connect_async
from services.telemetry.config import TelemetryConfig
from services.telemetry.store import TelemetryStore
from tests.conftest import wait_for
from tests.e2e.processes import ServiceProcess
from tests.trucks import Truck

FRAMES = 30
BATCH = 10
STRAY = 15  # above the high-water (0) and within the second batch's range: the first batch's XADD fails


def _refusal(log: Path, vehicle: str) -> str | None:
    """The telemetry process's log line of a batch of ``vehicle`` the store refused HIGH_WATER_BEHIND, if any."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line for line in lines if "store refused a batch of " + vehicle in line
                 and "HIGH_WATER_BEHIND" in line), None)


async def _stored(address: str, mesh_pki, vehicle: str) -> list[int]:
    """Every stored sequence of ``vehicle``, through ListTelemetryFrames as a fleet operator."""
    async with grpc.aio.secure_channel(address, mesh_pki.credentials("operator", "cli")) as channel:
        page = await telemetry_service_pb2_grpc.TelemetryServiceStub(channel).ListTelemetryFrames(
            telemetry_service_pb2.ListTelemetryFramesRequest(parent=f"vehicles/{vehicle}", page_size=1000), timeout=30)
    return [f.signed_frame.sequence for f in page.telemetry_frames]


async def test_a_batch_refused_high_water_behind_is_resent_after_reconnecting_and_nothing_is_lost(
        mesh: Mesh, mesh_pki, tmp_path: Path) -> None:
    assert mesh.store is not None
    truck = Truck.mint(mesh_pki.ca)
    vehicle = truck.vehicle_id
    spool = Spool(tmp_path / "spool.db")
    recorder = Recorder(spool, KeyFileSigner(truck.issued.private_key_pem, truck.issued.certificate_pem), vehicle)
    for i in range(FRAMES):
        recorder.record(frame_pb2.FramePayload(kind=frame_pb2.FramePayload.KIND_POSITION,
                                               position=frame_pb2.Position(lat=30 + i * 1e-4, lon=-94.0)))
    redis = connect_async(mesh.store.url)
    store = TelemetryStore(redis, TelemetryConfig())
    await redis.xadd(TelemetryStore.frames_key(vehicle), {"stray": "1"}, id=f"{STRAY}-0")
    telemetry = ServiceProcess("telemetry", mesh_pki.directory, mesh.state_dir, mesh.store.url,
                               peers={name: mesh.address(name) for name in MESH_SERVICES},
                               HAULMESH_TELEMETRY_COMMIT_WINDOW_SECONDS="2",
                               HAULMESH_TELEMETRY_MAX_BATCH_FRAMES=str(BATCH))
    client = StreamClient(telemetry.address, truck.credentials(), spool, vehicle_id=vehicle,
                          boot_id=recorder.boot_id, backoff_base=0.05, backoff_cap=0.5, poll_interval=0.2)
    task: asyncio.Task | None = None
    try:
        await telemetry.start(mesh_pki.credentials("operator", "probe"))
        task = asyncio.create_task(client.run())
        # The first session ends: its first batch failed in the store, the next ones were refused behind it.
        await wait_for(lambda: client.stats.failures >= 1, timeout_seconds=60)
        first_error, sent_first = client.stats.last_error, client.stats.frames_sent
        # The reason the second batch was refused, as the server logged it (the truck sees only the first
        # failure: UNAVAILABLE, the XADD's error).
        refusal = await wait_for(lambda: _refusal(telemetry.log_path, vehicle), timeout_seconds=30)
        counters = await store.counters(vehicle)
        held = spool.stats()
        # The stream held nothing but the stray entry; deleted whole (XDEL would keep its last ID, 15-0).
        assert await redis.xlen(TelemetryStore.frames_key(vehicle)) == 1
        await redis.delete(TelemetryStore.frames_key(vehicle))
        await wait_for(lambda: client.stats.acked_through == FRAMES and spool.stats().depth == 0,
                       timeout_seconds=60)
        stored = await _stored(telemetry.address, mesh_pki, vehicle)
        after = await store.counters(vehicle)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await telemetry.stop()
        await redis.aclose()
        spool.close()
    print(f"first session: {first_error!r}, {sent_first} frames sent; store counters then {counters}; "
          f"spool then depth {held.depth}; "
          f"sessions={client.stats.sessions} failures={client.stats.failures} stored={len(stored)} after={after}")
    assert first_error.startswith("UNAVAILABLE"), first_error
    assert f"HIGH_WATER_BEHIND 0 < {BATCH}" in refusal, refusal  # the second batch needs 10, the mark is at 0
    # While it failed: nothing stored, nothing acknowledged, every frame still in the spool. The truck sent at
    # least two batches into the 2 s commit group, and only the first reached the store's counting: the second
    # was refused HIGH_WATER_BEHIND, the script's first check (stored over the failed one, the high-water would
    # be 20 and 1..10 would pass for duplicates on resend: lost).
    assert counters.get("high_water", 0) == 0 and counters.get("stored", 0) == 0, counters
    assert sent_first >= 2 * BATCH and counters.get("received", 0) == BATCH, (sent_first, counters)
    assert held.depth == FRAMES
    # Then: every frame delivered once, in order, the spool drained by the server's acknowledgements.
    assert stored == list(range(1, FRAMES + 1))
    assert after["high_water"] == FRAMES and after["stored"] == FRAMES and after.get("lost", 0) == 0
    assert after.get("duplicates", 0) == 0
    assert client.stats.sessions >= 2
