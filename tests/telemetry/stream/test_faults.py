"""Crash faults injected by the tests: kill -9 of the telemetry process, kill -9 of the store."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import redis.asyncio

from services.runtime import EmbeddedStore
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, wait_for

from ..helpers import Session, TelemetryProcess, Truck, batch

TOTAL, BATCH, WINDOW = 4000, 50, 400


async def feed(session: Session, spool: list, start: int, *, stop_at: int = TOTAL) -> None:
    """Send spooled frames from ``start`` (index) ascending, keeping at most WINDOW frames unacknowledged,
    like the edge client; returns when everything up to ``stop_at`` is sent or the stream ended."""
    index, floor = start, spool[start - 1].sequence if start else 0
    while index < stop_at and not session.ended.is_set():
        if spool[index].sequence - max(floor, session.acked_through) > WINDOW:
            await asyncio.sleep(0.005)
            continue
        session.send(batch(spool[index:index + BATCH]))
        index += BATCH


async def stored(client: redis.asyncio.Redis, vehicle_id: str) -> list[int]:
    return [int(i.split(b"-")[0]) for i, _ in await client.xrange(TelemetryStore.frames_key(vehicle_id))]


async def test_kill_9_of_telemetry_mid_stream_loses_and_duplicates_nothing(
        mesh_pki: Pki, store_url: str, tmp_path: Path, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    spool = [truck.frame(s) for s in range(1, TOTAL + 1)]
    probe = mesh_pki.credentials("operator", "probe")
    first = TelemetryProcess(mesh_pki.directory, tmp_path, store_url)
    second = TelemetryProcess(mesh_pki.directory, tmp_path, store_url)
    try:
        await first.start(probe)
        async with grpc.aio.secure_channel(first.address, truck.credentials()) as channel:
            session = Session(channel)
            session.send(truck.hello(last_sequence=TOTAL))
            feeder = asyncio.create_task(feed(session, spool, 0))
            await wait_for(lambda: session.acked_through >= TOTAL // 4, timeout_seconds=30)
            await first.kill()
            await wait_for(session.ended.is_set, timeout_seconds=30)
            await feeder
        acked_before = session.acked_through
        await second.start(probe)
        async with grpc.aio.secure_channel(second.address, truck.credentials()) as channel:
            resumed = Session(channel)
            resumed.send(truck.hello(last_sequence=TOTAL))
            await wait_for(lambda: resumed.of("welcome"), timeout_seconds=30)
            high_water = resumed.of("welcome")[0].high_water_sequence
            assert high_water >= acked_before  # everything acknowledged survived the crash
            # The truck drops its spool up to the mark and resends the rest (index high_water = next sequence).
            await feed(resumed, spool, high_water)
            await wait_for(lambda: resumed.acked_through == TOTAL, timeout_seconds=60)
            await resumed.aclose()
    finally:
        await first.kill()
        await second.stop()
    frames = await stored(store_client, truck.vehicle_id)
    counters = await TelemetryStore(store_client).counters(truck.vehicle_id)
    print(f"sent {TOTAL}, acked before kill {acked_before}, server high-water after restart {high_water}, "
          f"stored {len(frames)}, duplicates {counters.get('duplicates', 0)}, lost {counters.get('lost', 0)}, "
          f"rejected {len(session.of('reject')) + len(resumed.of('reject'))}")
    assert TOTAL // 4 <= acked_before < TOTAL, "the kill must land mid-stream"
    assert frames == list(range(1, TOTAL + 1))
    assert counters.get("duplicates", 0) == 0 and counters.get("lost", 0) == 0
    assert counters["stored"] == TOTAL


async def test_kill_9_of_the_store_keeps_every_acknowledged_frame(mesh_pki: Pki, tmp_path: Path,
                                                                 truck: Truck) -> None:
    embedded = EmbeddedStore(tmp_path / "store")
    info = embedded.ensure_running()
    telemetry = TelemetryProcess(mesh_pki.directory, tmp_path, info.url)
    spool = [truck.frame(s) for s in range(1, TOTAL + 1)]
    try:
        await telemetry.start(mesh_pki.credentials("operator", "probe"))
        async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
            session = Session(channel)
            session.send(truck.hello(last_sequence=TOTAL))
            feeder = asyncio.create_task(feed(session, spool, 0))
            await wait_for(lambda: session.acked_through >= TOTAL // 4, timeout_seconds=30)
            os.kill(info.pid, signal.SIGKILL)
            await wait_for(session.ended.is_set, timeout_seconds=60)
            await feeder
        acked = session.acked_through
        restarted = embedded.ensure_running()  # same data directory, new process
        assert restarted.pid != info.pid
        client = redis.asyncio.Redis.from_url(restarted.url)
        try:
            frames = await stored(client, truck.vehicle_id)
        finally:
            await client.aclose()
    finally:
        await telemetry.kill()
        embedded.stop()
    print(f"sent up to {TOTAL}, acked before the store died {acked}, stored after restart {len(frames)} "
          f"(highest {frames[-1] if frames else 0}), stream ended with "
          f"{session.error.code().name if session.error else 'OK'}")
    assert TOTAL // 4 <= acked < TOTAL, "the kill must land mid-stream"
    assert frames == list(range(1, len(frames) + 1)), "stored frames are contiguous"
    assert set(range(1, acked + 1)) <= set(frames), "every acknowledged frame survived"
