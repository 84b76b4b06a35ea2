"""The archive through a real telemetry process: RunArchive (operators only), a kill -9 between a part's object
write and its index commit (nothing lost, nothing duplicated after restart), and ListTelemetryFrames reading
archived and hot frames through one page token, each frame saying its tier."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio

from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2 as ts
from services.runtime import EmbeddedStore, free_port
from services.runtime.objectstore import open_object_store
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain.archive import STORE_ID_KEY
from services.telemetry.store import ARCHIVE_STORE_KEY, TelemetryStore
from tests.conftest import Pki, rich_error, wait_for
from tests.objectstore import SeaweedS3
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


# ---- the archive's store identity and its availability at start-up (real processes) ------------------------------

@pytest.fixture
def own_store_url(tmp_path: Path) -> Iterator[str]:
    """A Valkey of this test's own: the store records the first archive it is archived to, for good."""
    store = EmbeddedStore(tmp_path / "own-store")
    yield store.ensure_running().url
    store.stop()


async def archive_metric(process: TelemetryProcess, port: int, name: str) -> float | None:
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics")
    for line in reply.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_a_second_archive_store_on_one_redis_store_refuses_to_archive(
        mesh_pki: Pki, own_store_url: str, truck: Truck, tmp_path: Path) -> None:
    """Two telemetry processes on one Redis store, each with its own archive directory (a trial's two pods with
    their own emptyDirs): the first one's archive is the store's; the second refuses to archive, says why, and
    nothing lands in its directory."""
    first_dir, second_dir = tmp_path / "archive-a", tmp_path / "archive-b"
    for state in ("a", "b"):
        (tmp_path / state).mkdir()
    client = redis.asyncio.Redis.from_url(own_store_url)
    second_metrics = free_port()
    try:
        async with TelemetryProcess.running(mesh_pki, tmp_path / "a", own_store_url,
                                            HAULMESH_ARCHIVE_URL=str(first_dir)) as first:
            await wait_for(lambda: client.get(ARCHIVE_STORE_KEY), timeout_seconds=30)
            first_id = open_object_store(str(first_dir)).get(STORE_ID_KEY).decode()
            assert (await client.get(ARCHIVE_STORE_KEY)).decode() == first_id
            async with TelemetryProcess.running(mesh_pki, tmp_path / "b", own_store_url,
                                                HAULMESH_ARCHIVE_URL=str(second_dir),
                                                HAULMESH_METRICS_PORT=str(second_metrics)) as second:
                await stream(second, truck, [truck.frame(s) for s in range(1, 6)])  # it serves the truck
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await run_archive(second, mesh_pki, truck.vehicle_id)
                assert rich_error(refused.value)[:2] == ("FAILED_PRECONDITION", "ARCHIVE_STORE_MISMATCH")
                assert await archive_metric(second, second_metrics, "haulmesh_telemetry_archive_available") == 0
                assert await archive_metric(second, second_metrics,
                                            "haulmesh_telemetry_archive_store_mismatch") == 1
                assert "refusing to archive or trim" in second.log_path.read_text()
                reply = await run_archive(first, mesh_pki, truck.vehicle_id)  # the store's own archive does
                assert reply.frames_in_archive == 5
            parts = [k for k in open_object_store(str(first_dir)).list("archive/v1/carrier=")
                     if k.endswith(".parquet")]
            assert len(parts) == 1
            assert open_object_store(str(second_dir)).list("archive/v1/carrier=") == []
    finally:
        await client.aclose()


async def test_telemetry_starts_and_serves_while_its_s3_archive_is_down_then_archives(
        mesh_pki: Pki, own_store_url: str, truck: Truck, tmp_path: Path) -> None:
    """The S3 server is down when telemetry starts: telemetry serves trucks anyway, reports the archive unavailable
    (metric 0, RunArchive UNAVAILABLE); once the server is up the archive opens by itself and archives."""
    server = SeaweedS3(tmp_path / "s3")
    metrics_port = free_port()
    env = {**server.env(), "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "HAULMESH_ARCHIVE_URL": server.url("late-archive"),
           "HAULMESH_METRICS_PORT": str(metrics_port)}
    try:
        async with TelemetryProcess.running(mesh_pki, tmp_path, own_store_url, **env) as process:
            await stream(process, truck, [truck.frame(s) for s in range(1, 4)])
            assert await archive_metric(process, metrics_port, "haulmesh_telemetry_archive_available") == 0
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await run_archive(process, mesh_pki, truck.vehicle_id)
            assert rich_error(down.value)[:2] == ("UNAVAILABLE", "ARCHIVE_UNAVAILABLE")
            await asyncio.to_thread(server.start)

            async def available() -> bool:
                return await archive_metric(process, metrics_port, "haulmesh_telemetry_archive_available") == 1

            await wait_for(available, timeout_seconds=120, interval_seconds=0.5)  # capped backoff: <= 30 s apart
            assert (await run_archive(process, mesh_pki, truck.vehicle_id)).frames_in_archive == 3
            assert process.process is not None and process.process.returncode is None
    finally:
        await asyncio.to_thread(server.stop)


@pytest.mark.parametrize("case", ["no credentials", "no object lock"])
async def test_a_misconfigured_s3_archive_stops_start_up(case: str, mesh_pki: Pki, store_url: str,
                                                         s3_server: SeaweedS3, tmp_path: Path) -> None:
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    if case == "no credentials":
        env |= {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HAULMESH_ARCHIVE_URL": s3_server.url("nocreds")}
        expected = "AWS_ACCESS_KEY_ID"
    else:
        bucket = s3_server.create_bucket(f"unlocked-{uuid.uuid4().hex[:12]}", object_lock=False)
        env |= {**s3_server.env(), "HAULMESH_ARCHIVE_URL": s3_server.url(bucket)}
        expected = "no Object Lock"
    process = TelemetryProcess(mesh_pki.directory, tmp_path, store_url, **env)
    with pytest.raises(RuntimeError, match="exited"):
        await process.start(mesh_pki.credentials("operator", "probe"))
    log = process.log_path.read_text()
    assert "HAULMESH_ARCHIVE_URL" in log and expected in log
