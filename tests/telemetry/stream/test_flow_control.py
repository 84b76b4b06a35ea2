"""Flow control end to end (issue 11): a stalled store (``CLIENT PAUSE WRITE`` on the test's own Valkey) or a
truck that reads none of its responses never grows the telemetry process beyond its bound of frames in flight;
the server stops reading, the frames stay with the truck, and once the fault ends every frame arrives once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import EmbeddedStore, connect_async, free_port, new_id, pki
from services.telemetry import metrics
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain import vehicle_key
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import FrameCredits, Streams
from services.telemetry.usecases import stream as stream_usecases
from tests.conftest import Pki, wait_for
from tests.trucks import Truck

from ..helpers import Session, TelemetryProcess, batch

ROOT = Path(__file__).resolve().parents[3]
BATCH, PER_STREAM, PER_PROCESS = 20, 40, 100
TRUCKS, FRAMES = 4, 600
PAUSE_MS = 3500


@pytest.fixture
async def own_store(tmp_path: Path) -> tuple[str, redis.asyncio.Redis]:
    """A Valkey of this test alone: pausing it stalls nothing but this test's telemetry process."""
    store = EmbeddedStore(tmp_path / "store")
    info = store.ensure_running()
    client = connect_async(info.url)
    try:
        yield info.url, client
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()
        store.stop()


async def _metrics(port: int) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("haulmesh_telemetry_")}


def _bounded(metrics_port: int, **env: str) -> dict[str, str]:
    return {"HAULMESH_METRICS_PORT": str(metrics_port), "HAULMESH_TELEMETRY_MAX_BATCH_FRAMES": str(BATCH),
            "HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM": str(PER_STREAM),
            "HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS": str(PER_PROCESS), **env}


async def _stored(client: redis.asyncio.Redis, vehicle_id: str) -> list[int]:
    return [int(i.split(b"-")[0]) for i, _ in await client.xrange(TelemetryStore.frames_key(vehicle_id))]


async def test_a_paused_store_stops_reading_at_the_bound_then_everything_arrives_once(
        mesh_pki: Pki, tmp_path: Path, own_store: tuple[str, redis.asyncio.Redis]) -> None:
    url, client = own_store
    metrics_port = free_port()
    trucks = [Truck.mint(mesh_pki.ca) for _ in range(TRUCKS)]
    spools = {t.vehicle_id: [t.frame(s) for s in range(1, FRAMES + 1)] for t in trucks}
    state = tmp_path / "state"
    state.mkdir()
    async with TelemetryProcess.running(mesh_pki, state, url, **_bounded(metrics_port)) as process:
        channels = [grpc.aio.secure_channel(process.address, t.credentials()) for t in trucks]
        sessions = [Session(c) for c in channels]
        try:
            for truck, session in zip(trucks, sessions, strict=True):
                session.send(truck.hello(last_sequence=FRAMES))
            await wait_for(lambda: all(s.of("welcome") for s in sessions), timeout_seconds=30)
            # The store stops taking writes (reads still answer): no commit completes while it lasts. Shorter than
            # the service's store socket timeout (5 s), past which a stalled store is a failed one (streams end).
            await client.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
            for truck, session in zip(trucks, sessions, strict=True):  # each truck sends its whole spool at once
                spool = spools[truck.vehicle_id]
                for start in range(0, FRAMES, BATCH):
                    session.send(batch(spool[start:start + BATCH]))
            # The process reaches its bound and stops reading: every stream is paused, nothing is acked.
            await wait_for(lambda: _metrics_match(metrics_port, inflight=PER_PROCESS, paused=TRUCKS),
                           timeout_seconds=PAUSE_MS / 1000)
            for _ in range(5):  # and stays there while the store is paused
                seen = await _metrics(metrics_port)
                assert seen["haulmesh_telemetry_inflight_frames"] <= PER_PROCESS
                assert seen["haulmesh_telemetry_inflight_frames_peak"] <= PER_PROCESS
                await asyncio.sleep(0.05)
            assert all(s.acked_through == 0 for s in sessions)
            # Nothing unacknowledged leaves the truck's spool: what the server did not read waits in HTTP/2 flow
            # control (its windows, docs/telemetry.md) and in the truck's send queue.
            await client.execute_command("CLIENT", "UNPAUSE")
            await wait_for(lambda: all(s.acked_through == FRAMES for s in sessions), timeout_seconds=60)
            for truck in trucks:
                assert await _stored(client, truck.vehicle_id) == list(range(1, FRAMES + 1))  # 0 lost, 0 twice
                counters = await TelemetryStore(client).counters(truck.vehicle_id)
                assert counters["stored"] == FRAMES and counters.get("duplicates", 0) == 0
            seen = await _metrics(metrics_port)
            assert seen["haulmesh_telemetry_inflight_frames_peak"] <= PER_PROCESS
            assert seen["haulmesh_telemetry_inflight_frames"] == 0
            assert seen["haulmesh_telemetry_paused_streams"] == 0
        finally:
            for session in sessions:
                await session.aclose()
            for channel in channels:
                await channel.close()


async def _metrics_match(port: int, *, inflight: int, paused: int) -> bool:
    seen = await _metrics(port)
    assert seen["haulmesh_telemetry_inflight_frames_peak"] <= PER_PROCESS
    return (seen["haulmesh_telemetry_inflight_frames"] == inflight
            and seen["haulmesh_telemetry_paused_streams"] >= paused)


async def test_a_truck_that_reads_no_responses_stops_being_read(store_client: redis.asyncio.Redis) -> None:
    """Rejects pile up for a truck that never reads its responses: once its outbound bound is reached the stream
    engine reads nothing more from it, and reads again once responses are taken. In process, on the real store:
    over a real link the first megabytes of responses would vanish into HTTP/2 and socket buffers first (bounded
    by their windows, not by us). Batches are in descending order: all but the first frame of each are refused
    as OUT_OF_ORDER before any signature check."""
    config = TelemetryConfig(max_batch_frames=BATCH, max_inflight_frames_per_stream=PER_STREAM,
                             max_inflight_frames_per_process=PER_PROCESS, max_outbound_messages_per_stream=64)
    store = TelemetryStore(store_client, config)
    streams = Streams(store, config)
    taken = 0

    async def truck_sends():
        nonlocal taken
        for start in range(10_000, 0, -BATCH):
            taken += 1
            yield batch([frame_pb2.SignedFrame(sequence=s) for s in range(start, start - BATCH, -1)])

    session = streams.open(f"AU-TRK-{new_id()}")
    try:
        streams.serve(session, truck_sends(), {})

        async def stopped() -> bool:
            before = taken
            await asyncio.sleep(0.2)  # a stretch of time in which nothing more is read
            return taken == before and session.outbound.qsize() >= 64

        await wait_for(stopped, timeout_seconds=30)
        assert taken <= 64 // BATCH + 2  # stopped within one batch of the bound
        assert metrics.PAUSED_STREAMS._value.get() >= 1
        read_before = taken
        for _ in range(40):  # the truck reads its responses: reading resumes
            session.outbound.get_nowait()
            session.drained.set()
        await wait_for(lambda: taken > read_before, timeout_seconds=30)
    finally:
        await streams.close(session)
        await streams.shutdown()
        await store.close()


async def test_a_stream_cancelled_while_its_batch_is_verified_gives_its_credits_back(
        store_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A truck that disconnects while a large batch of its is being verified (on the verifier threads) must not
    keep that batch's credits: otherwise reconnects in a replay fill the process's bound and every stream waits."""
    config = TelemetryConfig()
    store = TelemetryStore(store_client, config)
    streams = Streams(store, config)
    if streams._verifiers is None:  # one core: the test needs verification on a thread to cancel it there
        streams._verifiers = ThreadPoolExecutor(2, "verify")
    started, release = threading.Event(), threading.Event()
    real = stream_usecases.verify_frame

    def held_up(*args: object, **kwargs: object) -> object:
        started.set()
        release.wait(30)  # a thread cannot be cancelled: it finishes after the stream is gone
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_usecases, "verify_frame", held_up)

    async def truck_sends():
        yield batch([frame_pb2.SignedFrame(sequence=s) for s in range(1, config.max_batch_frames + 1)])
        await asyncio.Event().wait()  # the truck sends nothing more; it disconnects instead

    session = streams.open(f"AU-TRK-{new_id()}")
    try:
        streams.serve(session, truck_sends(), {})
        await wait_for(started.is_set, timeout_seconds=30)
        assert streams.credits.inflight == config.max_batch_frames  # the batch holds its credits while verified
        await streams.close(session)  # the stream ends mid-verification
        await wait_for(lambda: streams.credits.inflight == 0, timeout_seconds=10)
        assert session.credits.inflight == 0
    finally:
        release.set()
        if not session.closed.is_set():
            await streams.close(session)
        await streams.shutdown()
        await store.close()


def test_bounds_must_hold_a_batch_and_a_stream() -> None:
    with pytest.raises(ValueError, match="MAX_INFLIGHT_FRAMES_PER_STREAM"):
        TelemetryConfig.from_env({"HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM": "10"})
    with pytest.raises(ValueError, match="MAX_INFLIGHT_FRAMES_PER_PROCESS"):
        TelemetryConfig.from_env({"HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS": "1000"})
    with pytest.raises(ValueError, match="whole number"):
        TelemetryConfig.from_env({"HAULMESH_TELEMETRY_MAX_OUTBOUND_MESSAGES_PER_STREAM": "lots"})


async def test_frame_credits_are_first_come_first_served_within_both_bounds() -> None:
    process = FrameCredits(10)
    first, second = FrameCredits(8, process), FrameCredits(8, process)
    await first.take(8)
    big = asyncio.create_task(second.take(5))  # 8 + 5 > 10: waits for the process
    await asyncio.sleep(0)
    small = asyncio.create_task(second.take(1))  # would fit, but comes after the big one: no overtaking
    await asyncio.sleep(0)
    assert not big.done() and not small.done() and process.inflight == 8
    first.give(3)
    await asyncio.wait_for(big, 5)
    await asyncio.sleep(0)
    assert not small.done()  # 10 in flight: the process is at its bound
    first.give(1)
    await asyncio.wait_for(small, 5)
    assert (first.inflight, second.inflight, process.inflight, process.peak) == (4, 6, 10, 10)
    cancelled = asyncio.create_task(first.take(3))  # 4 + 3 <= 8 here, but the process is full: waits
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert first.inflight == 4  # nothing held by a cancelled wait
    first.give(4)
    second.give(6)
    assert process.inflight == 0


def _spool_depth(path: Path) -> int:
    with Spool(path) as spool:
        return spool.stats().depth


async def _edge(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "edge_client", *args, cwd=cwd,
                                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_the_real_edge_client_keeps_its_frames_while_the_server_holds_back(
        mesh_pki: Pki, tmp_path: Path, own_store: tuple[str, redis.asyncio.Redis]) -> None:
    """The edge client replays an hour's spool into a telemetry process whose store stalls: the process stays
    at its bound and stops reading, the truck's spool keeps every unacknowledged frame, then drains to 0 with
    every frame stored once."""
    url, client = own_store
    truck = Truck.mint(mesh_pki.ca)
    certs, spool = tmp_path / "certs", tmp_path / "spool.db"
    pki.write_pem_files(certs, f"vehicle-{truck.vehicle_id}", truck.issued, mesh_pki.ca.certificate_pem)
    offline = await _edge("--cert-dir", str(certs), "simulate", "--vehicle", truck.vehicle_id, "--spool", str(spool),
                          "--offline", "--quiet", "--speedup", "100000", "--max-sim-minutes", "60", cwd=tmp_path)
    out, err = await asyncio.wait_for(offline.communicate(), timeout=120)
    assert offline.returncode == 0, err.decode()[-2000:]
    frames = json.loads(out.decode().strip().splitlines()[-1])["frames"]
    metrics_port, per_stream = free_port(), 100
    state = tmp_path / "state"
    state.mkdir()
    env = _bounded(metrics_port, HAULMESH_TELEMETRY_MAX_BATCH_FRAMES="50",
                   HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM=str(per_stream),
                   HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS="1000")
    async with TelemetryProcess.running(mesh_pki, state, url, **env) as process:
        # The store stalls for writes as soon as the truck's stream is open, while it replays its spool.
        edge = await _edge("--cert-dir", str(certs), "--target", process.address, "run", "--vehicle",
                           truck.vehicle_id, "--spool", str(spool), "--exit-when-drained", "--backoff-cap", "0.5",
                           cwd=tmp_path)
        try:
            await wait_for(lambda: _metrics_open(metrics_port), timeout_seconds=60)
            await client.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "WRITE")
            await wait_for(lambda: _metrics_at(metrics_port, per_stream), timeout_seconds=PAUSE_MS / 1000)
            held = await asyncio.to_thread(_spool_depth, spool)
            assert held > 0  # what is not acknowledged is still in the truck's spool
            print(f"spool held {held} of {frames} frames while the store stalled")
            await client.execute_command("CLIENT", "UNPAUSE")
            out, err = await asyncio.wait_for(edge.communicate(), timeout=120)
        finally:
            if edge.returncode is None:
                edge.kill()
                await edge.wait()
        assert edge.returncode == 0, err.decode()[-2000:]
        assert await asyncio.to_thread(_spool_depth, spool) == 0
        assert await _stored(client, truck.vehicle_id) == list(range(1, frames + 1))  # 0 lost, 0 twice
        seen = await _metrics(metrics_port)
        assert seen["haulmesh_telemetry_inflight_frames_peak"] <= per_stream


async def _metrics_open(port: int) -> bool:
    try:
        return (await _metrics(port))["haulmesh_telemetry_open_streams"] >= 1
    except httpx.HTTPError:
        return False


async def _metrics_at(port: int, bound: int) -> bool:
    seen = await _metrics(port)
    assert seen["haulmesh_telemetry_inflight_frames_peak"] <= bound
    return seen["haulmesh_telemetry_inflight_frames"] == bound and seen["haulmesh_telemetry_paused_streams"] >= 1


async def test_after_a_failed_commit_the_streams_next_batch_is_refused_not_acked(
        store_client: redis.asyncio.Redis, truck: Truck, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches of a stream in one commit group; the first fails in the store (a stray entry 15 above the
    high-water of 0 makes its XADD of 1 fail), the second (16..25) would land over it and leave 1..10 to pass for
    duplicates. It carries ``after=10`` and is refused (HIGH_WATER_BEHIND): nothing acknowledged, nothing stored."""
    config = TelemetryConfig(commit_window_seconds=2.0)  # both batches ride one group (read within ms)
    store = TelemetryStore(store_client, config)
    streams = Streams(store, config)
    await store_client.xadd(TelemetryStore.frames_key(truck.vehicle_id), {"stray": "1"}, id="15-0")
    commits: list[asyncio.Future] = []
    submit = store.submit

    def recorded(*args: object, **kwargs: object) -> asyncio.Future:
        commits.append(submit(*args, **kwargs))
        return commits[-1]

    monkeypatch.setattr(store, "submit", recorded)

    async def truck_sends():
        yield batch([truck.frame(s) for s in range(1, 11)])
        yield batch([truck.frame(s) for s in range(16, 26)])
        await asyncio.Event().wait()

    key = vehicle_key(truck.issued.certificate_pem)
    session = streams.open(truck.vehicle_id)
    try:
        streams.serve(session, truck_sends(), {key.key_id: key})
        await wait_for(lambda: len(commits) == 2 and all(c.done() for c in commits), timeout_seconds=30)
        assert commits[0].exception() is not None
        assert "HIGH_WATER_BEHIND" in str(commits[1].exception())
        responses = []
        while not session.outbound.empty():
            responses.append(session.outbound.get_nowait())
        assert not any(getattr(r, "HasField", None) and r.HasField("ack") for r in responses)
        assert any(isinstance(r, Exception) for r in responses)  # the stream ends: the truck resumes from the mark
        assert [i for i, _ in await store_client.xrange(TelemetryStore.frames_key(truck.vehicle_id))] == [b"15-0"]
    finally:
        await streams.close(session)
        await streams.shutdown()
        await store.close()
