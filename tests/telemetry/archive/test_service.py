"""The archive through a real telemetry process: RunArchive (operators only), a kill -9 between a part's object
write and its index commit (nothing lost, nothing duplicated after restart), and ListTelemetryFrames reading
archived and hot frames through one page token, each frame saying its tier."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio

from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2 as ts
from services.runtime.objectstore import open_object_store
from services.telemetry.config import TelemetryConfig
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, wait_for
from tests.telemetry.helpers import Session, TelemetryProcess, batch, session_archive
from tests.trucks import Truck

from .test_archive import verify_part_offline

DAY = 86400.0


async def stream(process: TelemetryProcess, truck: Truck, frames: list[frame_pb2.SignedFrame]) -> None:
    async with grpc.aio.secure_channel(process.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch(frames))
        await wait_for(lambda: session.acked_through >= frames[-1].sequence, timeout_seconds=30)
        await session.aclose()


async def run_archive(process: TelemetryProcess, pki_: Pki, vehicle: str,
                      who: tuple[str, str] = ("operator", "ops")) -> ts.RunArchiveResponse:
    async with grpc.aio.secure_channel(process.address, pki_.credentials(*who)) as channel:
        return await telemetry_service_pb2_grpc.TelemetryServiceStub(channel).RunArchive(
            ts.RunArchiveRequest(vehicle=f"vehicles/{vehicle}"), timeout=30)


async def list_all(process: TelemetryProcess, pki_: Pki, vehicle: str, page_size: int) -> list[tuple[int, int]]:
    out, token = [], ""
    async with grpc.aio.secure_channel(process.address, pki_.credentials("operator", "ops")) as channel:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        while True:
            reply = await stub.ListTelemetryFrames(ts.ListTelemetryFramesRequest(
                parent=f"vehicles/{vehicle}", page_size=page_size, page_token=token), timeout=30)
            out += [(f.signed_frame.sequence, f.tier) for f in reply.telemetry_frames]
            token = reply.next_page_token
            if not token:
                return out


async def test_kill_between_write_and_index_loses_and_duplicates_nothing(
        mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, truck: Truck, tmp_path: Path) -> None:
    archive = session_archive(store_url)  # the store's one archive (its STORE-ID), shared with other tests
    now = time.time()
    # Yesterday's frames and today's: two parts; the process dies right after the first part's object is written.
    frames = [truck.frame(s, device_time=now - DAY if s <= 4 else now) for s in range(1, 9)]
    env = {"HAULMESH_ARCHIVE_URL": str(archive)}
    for state in ("one", "two"):
        (tmp_path / state).mkdir()
    async with TelemetryProcess.running(mesh_pki, tmp_path / "one", store_url,
                                        HAULMESH_ARCHIVE_TEST_KILL_AFTER_WRITE="1", **env) as doomed:
        await stream(doomed, truck, frames)
        with pytest.raises(grpc.aio.AioRpcError):
            await run_archive(doomed, mesh_pki, truck.vehicle_id)
        assert doomed.process is not None
        await asyncio.wait_for(doomed.process.wait(), 30)
        assert doomed.process.returncode == -9
    objects = open_object_store(str(archive))
    mine = f"/vehicle={truck.vehicle_id}/"
    written = [k for k in objects.list("archive/v1/carrier=") if k.endswith(".parquet") and mine in k]
    assert len(written) == 1  # the object is there ...
    store = TelemetryStore(store_client, TelemetryConfig())
    upto, pending, _, _ = await store.archive_state(truck.vehicle_id)
    assert upto == 0 and pending  # ... the index never heard of it, the plan is still pending
    async with TelemetryProcess.running(mesh_pki, tmp_path / "two", store_url, **env) as process:
        reply = await run_archive(process, mesh_pki, truck.vehicle_id)
        # (The periodic job may have finished the pending part first: the totals are what must agree.)
        assert reply.frames_in_archive == 8
        parts = await store.archive_parts(truck.vehicle_id, 0)
        assert [(p.first, p.last) for p in parts] == [(1, 4), (5, 8)]
        assert sorted(k for k in objects.list("archive/v1/carrier=") if k.endswith(".parquet") and mine in k) == \
            [p.key for p in parts]  # the first object adopted, not written twice
        for part in parts:  # P2 on what the real stream stored: every signature checks from the part alone
            assert verify_part_offline(objects.get(part.key)) == list(range(part.first, part.last + 1))
        # Trim what is archived (as the retention sweep does past the hot window), then read across the tiers.
        await store.trim_expired(truck.vehicle_id, int(time.time() * 1000) + 60_000)
        await stream(process, truck, [truck.frame(9), truck.frame(10)])
        listed = await list_all(process, mesh_pki, truck.vehicle_id, page_size=3)
        assert [s for s, _ in listed] == list(range(1, 11))
        assert {t for s, t in listed if s <= 8} == {frame_pb2.TIER_ARCHIVE}
        assert {t for s, t in listed if s > 8} == {frame_pb2.TIER_HOT}
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await run_archive(process, mesh_pki, truck.vehicle_id, who=("service", "mission"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_haulmesh_archive_run_calls_the_rpc(telemetry: TelemetryProcess, mesh_pki: Pki, truck: Truck) -> None:
    await stream(telemetry, truck, [truck.frame(1), truck.frame(2)])
    env = {**os.environ, "HAULMESH_TELEMETRY_ADDR": telemetry.address, "HAULMESH_CERT_DIR": str(mesh_pki.directory)}
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runtime.cli", "archive", "run", "--vehicle", truck.vehicle_id,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    assert out.decode().startswith("archived 2 frames in 1 new parts from 1 vehicles; 2 frames in the archive")
