"""AT-01 and AT-08 (issue 11): the telemetry process crashes (kill -9) or is rolled (SIGTERM) under live trucks,
and nothing is lost, nothing is stored twice, and the trucks are back within the bound.

Real parts: the edge client in process (StreamClient, its SQLite spool, frames signed by the Recorder with the
vehicle's key), telemetry processes of the test (``python -m services.telemetry``) on the session's Valkey, and
for AT-08 the fault proxy standing for the load balancer in front of two telemetry processes (the address the
trucks know). The trucks keep the edge client's production backoff (base 0.5 s, cap 8 s), so the reconnect
figures are the ones a fleet would see.

* AT-01: one truck streams 10,000 frames (short: 2,000) while they are recorded; telemetry is killed -9 when
  the truck has sent a seeded random number of them (3,000-7,000; short: 600-1,400), and started again on the
  same address. The truck is back streaming within 10 s of telemetry serving again, its spool drains to 0, and
  the store holds every frame it recorded exactly once: 1..N, no gap.
* AT-08: 200 trucks (short: 20) stream through the proxy to telemetry A while B already serves on the same
  store. A gets SIGTERM at a seeded moment: its health (watched) turns NOT_SERVING before any stream ends, the
  load balancer (the test, on that signal) sends new connections to B, A exits within its termination bound,
  every truck is streaming to B within 15 s of the SIGTERM, and every frame of every truck is stored once.

The short versions run in ``make test``; the full ones (three seeds) in ``make chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis.asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_client.client import StreamClient
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, wait_for
from tests.faultproxy import FaultProxy
from tests.trucks import Truck

from ..helpers import TelemetryProcess

#: AT-01's bound: the truck streams again within this long after telemetry is serving again.
AT01_BACK_SECONDS = 10.0
#: AT-08's bound: every truck streams again within this long after the SIGTERM.
AT08_BACK_SECONDS = 15.0
#: AT-08's telemetry A: the chart's shutdown at a fifth (HAULMESH_SHUTDOWN_DRAIN_SECONDS 5,
#: HAULMESH_GRACE_PERIOD_SECONDS 10, terminationGracePeriodSeconds 30 = twice their sum): drain 1 s, grace 2 s, and
#: the pod's bound, after which Kubernetes would SIGKILL it, twice their sum: 6 s.
DRAIN_SECONDS, GRACE_SECONDS = 1.0, 2.0
TERMINATION_BOUND_SECONDS = 2 * (DRAIN_SECONDS + GRACE_SECONDS)


@dataclass
class EdgeTruck:
    """A truck's edge software in this process: spool, recorder (signing), stream client and its task."""

    truck: Truck
    spool: Spool
    recorder: Recorder
    client: StreamClient
    task: asyncio.Task[None] | None = None
    #: AT-08: sessions before the SIGTERM; loop times at which the stream then ended, and a new one began.
    sessions_before: int = 0
    dropped_at: float | None = None
    back_at: float | None = None

    @classmethod
    def open(cls, truck: Truck, spool_path: Path, address: str) -> EdgeTruck:
        spool = Spool(spool_path)
        recorder = Recorder(spool, KeyFileSigner(truck.issued.private_key_pem, truck.issued.certificate_pem),
                            truck.vehicle_id)
        # The production backoff (StreamClient's defaults); only the spool poll is the tests' usual 0.2 s.
        client = StreamClient(address, truck.credentials(), spool, vehicle_id=truck.vehicle_id,
                              boot_id=recorder.boot_id, poll_interval=0.2)
        return cls(truck, spool, recorder, client)

    def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())

    def record(self, count: int) -> None:
        """Record ``count`` position frames (blocking: call in a thread)."""
        for _ in range(count):
            self.recorder.record(frame_pb2.FramePayload(
                kind=frame_pb2.FramePayload.KIND_POSITION, vehicle_state="enroute",
                position=frame_pb2.Position(lat=30.2, lon=-97.7, speed_kph=88.5)))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.spool.close()


@contextlib.contextmanager
def spool_directory(fallback: Path):
    """Where the trucks' spools live: tmpfs when there is one. The spool fsyncs every commit (synchronous=FULL),
    which tests the truck's disk, not these faults: 200 trucks' fsyncs on a shared disk would make the test
    measure the machine. AT-01's one truck keeps its spool on disk (``fallback``)."""
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        directory = Path(tempfile.mkdtemp(prefix="haulmesh-spools-", dir="/dev/shm"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    else:
        fallback.mkdir(parents=True, exist_ok=True)
        yield fallback


async def stored_sequences(client: redis.asyncio.Redis, vehicle_id: str) -> list[int]:
    return [int(i.split(b"-")[0]) for i, _ in await client.xrange(TelemetryStore.frames_key(vehicle_id))]


async def check_delivery(store_client: redis.asyncio.Redis, edge: EdgeTruck) -> dict[str, int]:
    """What the store holds for ``edge``'s truck against what the truck recorded: lost, stored twice, gaps."""
    recorded = (await asyncio.to_thread(edge.spool.stats)).last_sequence
    sequences = await stored_sequences(store_client, edge.truck.vehicle_id)
    counters = await TelemetryStore(store_client).counters(edge.truck.vehicle_id)
    unique = set(sequences)
    return {"recorded": recorded, "stored": len(sequences),
            "lost": len(set(range(1, recorded + 1)) - unique),
            "stored_twice": len(sequences) - len(unique),
            # A gap: the store's order is not 1..N (a frame missing, or one beyond what was recorded).
            "gaps": int(sequences != list(range(1, recorded + 1))),
            "resent_deduplicated": counters.get("duplicates", 0),
            "rejected": sum(edge.client.stats.rejected.values())}


# ---- AT-01: kill -9 of telemetry mid-stream ----------------------------------------------------------------


async def crash_and_restart(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                            seed: int, *, frames: int, kill_between: tuple[int, int],
                            frames_per_second: float) -> dict[str, float]:
    """The whole AT-01 run; returns its figures."""
    rng = random.Random(seed)
    kill_at = rng.randint(*kill_between)
    loop = asyncio.get_running_loop()
    state = tmp_path / "state"
    state.mkdir()
    probe = mesh_pki.credentials("operator", "probe")
    process = TelemetryProcess(mesh_pki.directory, state, store_url)
    edge = EdgeTruck.open(Truck.mint(mesh_pki.ca), tmp_path / "spool.db", process.address)
    chunk = 10  # frames recorded per step (one thread hop), at ``frames_per_second`` overall

    async def produce() -> None:
        started = loop.time()
        for done in range(0, frames, chunk):
            await asyncio.to_thread(edge.record, min(chunk, frames - done))
            edge.client.notify()
            if (ahead := started + (done + chunk) / frames_per_second - loop.time()) > 0:
                await asyncio.sleep(ahead)  # the truck's recording rate, not a wait for a condition

    producer: asyncio.Task[None] | None = None
    try:
        await process.start(probe)
        edge.start()
        producer = asyncio.create_task(produce())
        await wait_for(lambda: edge.client.stats.frames_sent >= kill_at, timeout_seconds=120,
                       interval_seconds=0.002)
        await process.kill()
        killed_at_frame, acked_at_kill = edge.client.stats.frames_sent, edge.client.stats.acked_through
        await wait_for(lambda: not edge.client.connected.is_set(), timeout_seconds=30, interval_seconds=0.01)
        # Started again on the same address (the same port): the truck's target never changes.
        await process.start(probe)
        serving_at = loop.time()

        await wait_for(lambda: edge.client.stats.sessions >= 2, timeout_seconds=60, interval_seconds=0.01)
        welcomed_at = loop.time()
        high_water = edge.client.stats.acked_through  # the Welcome's mark (set before `sessions` counts it)

        async def streaming() -> bool:  # a frame acknowledged on the new session (or nothing left to send)
            return (edge.client.stats.acked_through > high_water
                    or (await asyncio.to_thread(edge.spool.stats)).depth == 0)

        await wait_for(streaming, timeout_seconds=60, interval_seconds=0.01)
        streaming_at = loop.time()
        await producer
        await wait_for(lambda: edge.spool.stats().depth == 0, timeout_seconds=120)
        delivery = await check_delivery(store_client, edge)
    finally:
        if producer is not None and not producer.done():
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        await edge.close()
        await process.stop()
    figures = {"frames": frames, "kill_at_frame": killed_at_frame, "acked_at_kill": acked_at_kill,
               "welcome_after_serving_seconds": round(max(0.0, welcomed_at - serving_at), 3),
               "back_streaming_seconds": round(max(0.0, streaming_at - serving_at), 3),
               "back_bound_seconds": AT01_BACK_SECONDS, "sessions": edge.client.stats.sessions,
               "spool_depth": 0, **delivery}
    print(figures)
    return figures


def check_at01(figures: dict[str, float], kill_between: tuple[int, int]) -> None:
    assert kill_between[0] <= figures["kill_at_frame"] < figures["frames"], figures  # mid-stream
    assert figures["acked_at_kill"] < figures["frames"], figures
    assert figures["recorded"] == figures["frames"] == figures["stored"], figures
    assert (figures["lost"], figures["stored_twice"], figures["gaps"]) == (0, 0, 0), figures
    assert figures["resent_deduplicated"] == 0 and figures["rejected"] == 0, figures
    assert figures["back_streaming_seconds"] <= AT01_BACK_SECONDS, figures


async def test_at01_kill_9_of_telemetry_under_the_real_edge_client(
        mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path, chaos_seed: int,
        chaos_record) -> None:
    """The short version: 2,000 frames, the kill between frames 600 and 1,400."""
    between = (600, 1_400)
    figures = await crash_and_restart(mesh_pki, store_url, store_client, tmp_path, chaos_seed, frames=2_000,
                                      kill_between=between, frames_per_second=400)
    chaos_record("AT-01", **figures)
    check_at01(figures, between)


@pytest.mark.chaos
@pytest.mark.chaos_id("AT-01")
async def test_at01_full(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                         chaos_seed: int, chaos_record) -> None:
    """10,000 frames, the kill between frames 3,000 and 7,000."""
    between = (3_000, 7_000)
    figures = await crash_and_restart(mesh_pki, store_url, store_client, tmp_path, chaos_seed, frames=10_000,
                                      kill_between=between, frames_per_second=500)
    chaos_record("AT-01", **figures)
    check_at01(figures, between)


# ---- AT-08: SIGTERM of telemetry under many streams (a rolling restart) ---------------------------------------


@dataclass
class HealthWatch:
    """Health.Watch on one telemetry process (its own address, not the balancer's): the time of the first
    NOT_SERVING after ``armed``, and a callback then (the balancer taking the process out)."""

    statuses: list[tuple[float, int]] = field(default_factory=list)
    not_serving_at: float | None = None
    armed: bool = False


@contextlib.asynccontextmanager
async def watching(address: str, credentials: grpc.ChannelCredentials, on_not_serving) -> AsyncIterator[HealthWatch]:
    watch = HealthWatch()
    loop = asyncio.get_running_loop()
    first = asyncio.Event()

    async def run() -> None:
        async with grpc.aio.secure_channel(address, credentials) as channel:
            try:
                async for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                    watch.statuses.append((loop.time(), reply.status))
                    first.set()
                    if (watch.armed and watch.not_serving_at is None
                            and reply.status != health_pb2.HealthCheckResponse.SERVING):
                        watch.not_serving_at = loop.time()
                        on_not_serving()
            except grpc.aio.AioRpcError:
                pass  # the process went away: its watch ends with it

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(first.wait(), 30)
        yield watch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def rolling_restart(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                          fault_proxy, seed: int, *, trucks: int, frames_per_second: float) -> dict[str, float]:
    """The whole AT-08 run; returns its figures."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    probe = mesh_pki.credentials("operator", "probe")
    for name in ("a", "b"):
        await asyncio.to_thread((tmp_path / name).mkdir)
    a = TelemetryProcess(mesh_pki.directory, tmp_path / "a", store_url,
                         HAULMESH_SHUTDOWN_DRAIN_SECONDS=str(DRAIN_SECONDS),
                         HAULMESH_GRACE_PERIOD_SECONDS=str(GRACE_SECONDS))
    b = TelemetryProcess(mesh_pki.directory, tmp_path / "b", store_url)
    edges: list[EdgeTruck] = []
    recording = asyncio.Event()
    recording.set()

    async def produce() -> None:
        """Every truck records a frame every 1 / frames_per_second s (one thread hop for all of them)."""
        while recording.is_set():
            tick = loop.time()
            await asyncio.to_thread(lambda: [edge.record(1) for edge in edges])
            for edge in edges:
                edge.client.notify()
            await asyncio.sleep(max(0.0, tick + 1 / frames_per_second - loop.time()))  # the recording rate

    def observe() -> None:
        now = loop.time()
        for edge in edges:
            if edge.dropped_at is None and not edge.client.connected.is_set():
                edge.dropped_at = now
            if edge.back_at is None and edge.client.stats.sessions > edge.sessions_before:
                edge.back_at = now
                if edge.dropped_at is None:  # ended and resumed within one poll (10 ms)
                    edge.dropped_at = now

    producer: asyncio.Task[None] | None = None
    with spool_directory(tmp_path / "spools") as spools:
        try:
            await asyncio.gather(a.start(probe), b.start(probe))
            balancer: FaultProxy = await fault_proxy(a.address)
            for _ in range(trucks):
                edges.append(EdgeTruck.open(Truck.mint(mesh_pki.ca), spools / f"{len(edges)}.db", balancer.address))
            for edge in edges:
                edge.start()
            producer = asyncio.create_task(produce())
            # Every truck streaming to A: a session, and frames acknowledged on it.
            await wait_for(lambda: all(e.client.connected.is_set() and e.client.stats.acked_through >= 2
                                       for e in edges), timeout_seconds=120)

            def take_out_of_rotation() -> None:  # the balancer's readiness check failed: new connections go to B
                balancer.upstream = ("127.0.0.1", b.port)

            async with watching(a.address, probe, take_out_of_rotation) as health:
                await asyncio.sleep(rng.uniform(0.2, 2.0))  # the seeded moment of the SIGTERM, under live traffic
                for edge in edges:
                    edge.sessions_before = edge.client.stats.sessions
                health.armed = True
                assert a.process is not None
                a.process.send_signal(signal.SIGTERM)
                terminated_at = loop.time()

                async def all_back() -> bool:
                    observe()
                    return all(e.back_at is not None for e in edges)

                exit_time: list[float] = []
                exited = asyncio.create_task(a.process.wait())
                exited.add_done_callback(lambda _: exit_time.append(loop.time()))
                await wait_for(all_back, timeout_seconds=60, interval_seconds=0.01)
                await asyncio.wait_for(exited, 30)
            exit_code = a.process.returncode
            # A little live traffic on B, then the trucks stop recording and drain.
            acked = [e.client.stats.acked_through for e in edges]
            await wait_for(lambda: all(e.client.stats.acked_through > n for e, n in zip(edges, acked, strict=True)),
                           timeout_seconds=60)
            recording.clear()
            await producer
            await wait_for(lambda: all(e.spool.stats().depth == 0 for e in edges), timeout_seconds=120)
            deliveries = [await check_delivery(store_client, e) for e in edges]
        finally:
            recording.clear()
            if producer is not None:
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
            for edge in edges:
                await edge.close()
            await a.stop()
            await b.stop()
    drops = [e.dropped_at for e in edges if e.dropped_at is not None]
    figures = {
        "trucks": trucks, "frames": sum(d["recorded"] for d in deliveries),
        "stored": sum(d["stored"] for d in deliveries), "lost": sum(d["lost"] for d in deliveries),
        "stored_twice": sum(d["stored_twice"] for d in deliveries), "gaps": sum(d["gaps"] for d in deliveries),
        "resent_deduplicated": sum(d["resent_deduplicated"] for d in deliveries),
        "rejected": sum(d["rejected"] for d in deliveries),
        "not_serving_after_sigterm_seconds": round(health.not_serving_at - terminated_at, 3)
        if health.not_serving_at is not None else None,
        "first_stream_end_after_sigterm_seconds": round(min(drops) - terminated_at, 3) if drops else None,
        "exit_seconds": round(exit_time[0] - terminated_at, 3), "exit_code": exit_code,
        "exit_bound_seconds": TERMINATION_BOUND_SECONDS,
        "all_back_seconds": round(max(e.back_at for e in edges) - terminated_at, 3),
        "back_bound_seconds": AT08_BACK_SECONDS,
        "sessions_max": max(e.client.stats.sessions for e in edges),
    }
    print(figures)
    return figures


def check_at08(figures: dict[str, float]) -> None:
    # NOT_SERVING was seen before any truck's stream ended, and so before the process stopped.
    assert figures["not_serving_after_sigterm_seconds"] is not None, figures
    assert figures["first_stream_end_after_sigterm_seconds"] is not None, figures
    assert figures["not_serving_after_sigterm_seconds"] < figures["first_stream_end_after_sigterm_seconds"], figures
    assert figures["not_serving_after_sigterm_seconds"] < figures["exit_seconds"], figures
    assert figures["exit_code"] == 0 and figures["exit_seconds"] <= figures["exit_bound_seconds"], figures
    assert figures["all_back_seconds"] <= AT08_BACK_SECONDS, figures
    assert figures["frames"] == figures["stored"], figures
    assert (figures["lost"], figures["stored_twice"], figures["gaps"]) == (0, 0, 0), figures
    assert figures["resent_deduplicated"] == 0 and figures["rejected"] == 0, figures


async def test_at08_rolling_restart_of_telemetry_under_streams(
        mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path, fault_proxy,
        chaos_seed: int, chaos_record) -> None:
    """The short version: 20 trucks at 5 Hz."""
    figures = await rolling_restart(mesh_pki, store_url, store_client, tmp_path, fault_proxy, chaos_seed,
                                    trucks=20, frames_per_second=5)
    chaos_record("AT-08", **figures)
    check_at08(figures)


@pytest.mark.chaos(seeds=2)  # two seeded SIGTERM moments under live traffic
@pytest.mark.chaos_id("AT-08")
async def test_at08_full(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                         fault_proxy, chaos_seed: int, chaos_record) -> None:
    """200 trucks at 2 Hz."""
    figures = await rolling_restart(mesh_pki, store_url, store_client, tmp_path, fault_proxy, chaos_seed,
                                    trucks=200, frames_per_second=2)
    chaos_record("AT-08", **figures)
    check_at08(figures)
