"""AT-09, keepalive both ends: a blackholed truck stream is found by both ends within keepalive time + timeout,
the truck reconnects through the proxy once it passes again and every frame arrives once; idle streams never
earn GOAWAY too_many_pings.

Real parts: the edge client (StreamClient, SQLite spool, signed frames), a telemetry process of the test on the
session's Valkey, the fault proxy between them (tests/faultproxy.py). Times are scaled: the production policy
(server: ping after 20 s, timeout 10 s, client pings accepted every 5 s; truck: ping after 10 s, timeout 5 s)
multiplied by ``SCALE`` (the ping timeouts by twice that), the ratios of intervals kept. The short version runs
in ``make test``; the full ones (several seeds, and an idle hour at 1/20: 180 truck pings) in ``make chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from edge_client.client import Keepalive, StreamClient
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import free_port
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, wait_for
from tests.faultproxy import FaultProxy
from tests.trucks import Truck

from ..helpers import TelemetryProcess

#: The production policy (services/runtime/_config.py and edge_client/client.py defaults), in seconds.
SERVER_TIME, SERVER_TIMEOUT, SERVER_MIN_PING_INTERVAL = 20.0, 10.0, 5.0
TRUCK_TIME, TRUCK_TIMEOUT = 10.0, 5.0
#: Added to each bound for what the test itself costs: polling, a scrape, a loaded 2-core machine.
SLACK_SECONDS = 1.0
#: The time scale of the tests: a tenth. Not less: gRPC sends no two pings less than a second apart whatever the
#: keepalive time (seen in its http_keepalive trace), so a truck at 1/20 would ping every second, not every
#: 0.5 s, and the idle check would no longer test the production ratio (truck pings 2x the permitted interval).
SCALE = 0.1
#: The idle hour's time scale: 1/20, 3 minutes. The intervals cannot follow (the truck's pings are at gRPC's 1 s
#: floor already), so at 1/20 they stand for twice the production ones: the truck pings every 20 scaled seconds
#: and the server permits a ping every 10, its own keepalive every 40 — every ratio between intervals is the
#: production one (the ping policing sees exactly the 2x margin it has in production), only the hour holds half
#: as many pings (180 instead of 360). A strike needs two pings closer than the permitted interval, which no
#: number of well-spaced pings brings nearer; 180 still covers timer drift over minutes and gRPC's per-connection
#: ping budget (``max_pings_without_data``, 2 by default), which the truck must lift for a parked truck.
IDLE_HOUR_SCALE = 1 / 20


@dataclass(frozen=True)
class Policy:
    """The production keepalive policy, its intervals scaled by ``scale`` and its ping timeouts by twice that: a
    scheduling stall of a loaded 2-core machine (a few hundred ms) must not pass for a dead link."""

    scale: float

    @property
    def timeout_scale(self) -> float:
        return 2 * self.scale

    @property
    def truck(self) -> Keepalive:
        return Keepalive(time_seconds=TRUCK_TIME * self.scale, timeout_seconds=TRUCK_TIMEOUT * self.timeout_scale)

    def server_env(self, *, min_ping_interval_seconds: float | None = None) -> dict[str, str]:
        return {"HAULMESH_KEEPALIVE_TIME_SECONDS": str(SERVER_TIME * self.scale),
                "HAULMESH_KEEPALIVE_TIMEOUT_SECONDS": str(SERVER_TIMEOUT * self.timeout_scale),
                "HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS":
                    str(min_ping_interval_seconds or SERVER_MIN_PING_INTERVAL * self.scale)}

    @property
    def truck_bound(self) -> float:
        """keepalive time + timeout of the truck."""
        return TRUCK_TIME * self.scale + TRUCK_TIMEOUT * self.timeout_scale

    @property
    def server_bound(self) -> float:
        """keepalive time + timeout of the server."""
        return SERVER_TIME * self.scale + SERVER_TIMEOUT * self.timeout_scale


def open_streams(metrics_port: int) -> float:
    """The telemetry process's ``haulmesh_telemetry_open_streams`` gauge, scraped."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "haulmesh_telemetry_open_streams")


@contextlib.asynccontextmanager
async def telemetry_behind_proxy(mesh_pki: Pki, store_url: str, state_dir: Path, fault_proxy, env: dict[str, str]):
    metrics_port = free_port()
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    # A heartbeat interval of an hour: the truck's stream is then truly quiet (no frames, no heartbeats, no
    # acks), the case in which gRPC's ping policing bites; and no application-level silence can end a session,
    # only keepalive.
    async with TelemetryProcess.running(mesh_pki, state_dir, store_url, HAULMESH_METRICS_PORT=str(metrics_port),
                                        HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS="3600", **env) as process:
        proxy: FaultProxy = await fault_proxy(process.address)
        yield proxy, metrics_port


@contextlib.asynccontextmanager
async def edge_client(truck: Truck, spool_path: Path, address: str, keepalive: Keepalive):
    """The real edge client of ``truck`` streaming its spool to ``address``; yields (client, recorder)."""
    spool = Spool(spool_path)
    recorder = Recorder(spool, KeyFileSigner(truck.issued.private_key_pem, truck.issued.certificate_pem),
                        truck.vehicle_id)
    client = StreamClient(address, truck.credentials(), spool, vehicle_id=truck.vehicle_id,
                          boot_id=recorder.boot_id, backoff_base=0.05, backoff_cap=0.5, poll_interval=0.2,
                          keepalive=keepalive)
    task = asyncio.create_task(client.run())
    try:
        yield client, recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        spool.close()


async def record(client: StreamClient, recorder: Recorder, count: int = 1) -> None:
    for _ in range(count):
        await asyncio.to_thread(recorder.record, frame_pb2.FramePayload(
            kind=frame_pb2.FramePayload.KIND_POSITION, position=frame_pb2.Position(lat=30.2, lon=-97.7)))
    client.notify()


async def blackhole_and_idle(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                             fault_proxy, seed: int, *, scale: float, idle_pings: int) -> dict[str, float]:
    """The whole AT-09 run; returns its figures (asserting as it goes)."""
    rng = random.Random(seed)
    policy = Policy(scale)
    truck = Truck.mint(mesh_pki.ca)
    loop = asyncio.get_running_loop()
    async with telemetry_behind_proxy(mesh_pki, store_url, tmp_path / "state", fault_proxy,
                                      policy.server_env()) as (proxy, metrics_port), \
            edge_client(truck, tmp_path / "spool.db", proxy.address, policy.truck) as (client, recorder):
        spool = client.spool
        await record(client, recorder, 5)
        await wait_for(lambda: spool.stats().depth == 0, timeout_seconds=30)

        # 1. An idle stream for many truck keepalive intervals: the server sends nothing (no frames to ack), so
        # every truck ping counts against the ping policy, and none may earn GOAWAY too_many_pings.
        idle_seconds = idle_pings * policy.truck.time_seconds
        await asyncio.sleep(idle_seconds)  # the scenario's duration, not a wait for something to happen
        # gRPC reports it to the client as UNAVAILABLE "Too many pings" (the GOAWAY's debug data: too_many_pings).
        too_many_pings = client.stats.failures if "too many pings" in client.stats.last_error.lower() else 0
        assert too_many_pings == 0
        assert (client.stats.sessions, client.stats.failures) == (1, 0), client.stats.last_error
        assert await asyncio.to_thread(open_streams, metrics_port) == 1
        await record(client, recorder)  # the same session still carries frames
        await wait_for(lambda: spool.stats().depth == 0, timeout_seconds=10)
        assert client.stats.sessions == 1

        # 2. Live traffic (10 Hz), then the blackhole at a seeded random phase of the keepalive timers.
        async def drive() -> None:
            while True:
                await record(client, recorder)
                await asyncio.sleep(0.1)

        driver = asyncio.create_task(drive())
        try:
            await asyncio.sleep(rng.uniform(0.5, 0.5 + policy.server_bound))
            proxy.blackhole()
            cut = loop.time()
            detected: dict[str, float] = {}

            async def truck_detects() -> None:
                await wait_for(lambda: not client.connected.is_set(), timeout_seconds=policy.truck_bound + 30,
                               interval_seconds=0.01)
                detected["truck"] = loop.time() - cut

            async def server_gone() -> bool:
                return await asyncio.to_thread(open_streams, metrics_port) == 0

            async def server_detects() -> None:
                await wait_for(server_gone, timeout_seconds=policy.server_bound + 30, interval_seconds=0.02)
                detected["server"] = loop.time() - cut

            await asyncio.gather(truck_detects(), server_detects())
            # 3. The link passes again: the truck's pending connection goes through and it resumes.
            proxy.pass_through()
            healed = loop.time()
            await wait_for(lambda: client.stats.sessions >= 2, timeout_seconds=30)
            reconnect_seconds = loop.time() - healed
            await asyncio.sleep(0.5)  # a little live traffic on the new session
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
        await wait_for(lambda: spool.stats().depth == 0, timeout_seconds=30)
        total = spool.stats().last_sequence
    stored = [int(i.split(b"-")[0]) for i, _ in await store_client.xrange(TelemetryStore.frames_key(truck.vehicle_id))]
    counters = await TelemetryStore(store_client).counters(truck.vehicle_id)
    figures = {"truck_detect_seconds": round(detected["truck"], 3), "truck_bound_seconds": policy.truck_bound,
               "server_detect_seconds": round(detected["server"], 3), "server_bound_seconds": policy.server_bound,
               "reconnect_seconds": round(reconnect_seconds, 3), "idle_pings": idle_pings,
               "idle_seconds": idle_seconds, "frames": total, "stored": len(stored),
               "duplicates": counters.get("duplicates", 0), "too_many_pings": too_many_pings, "scale": scale}
    print(figures)
    return figures


def check(figures: dict[str, float]) -> None:
    assert figures["truck_detect_seconds"] <= figures["truck_bound_seconds"] + SLACK_SECONDS, figures
    assert figures["server_detect_seconds"] <= figures["server_bound_seconds"] + SLACK_SECONDS, figures
    assert figures["stored"] == figures["frames"] and figures["duplicates"] == 0, figures


async def test_at09_blackholed_stream_found_by_both_ends_and_idle_streams_keep(
        mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path, fault_proxy,
        chaos_seed: int, chaos_record) -> None:
    """The short version: 12 idle truck pings, one blackhole."""
    figures = await blackhole_and_idle(mesh_pki, store_url, store_client, tmp_path, fault_proxy, chaos_seed,
                                       scale=SCALE, idle_pings=12)
    chaos_record("AT-09", **figures)
    check(figures)


@pytest.mark.chaos
async def test_at09_full(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                         fault_proxy, chaos_seed: int, chaos_record) -> None:
    """Per seed: the blackhole at the seed's moment, after 4 idle truck pings (a quiet stream; the idle check
    itself is the idle hour's, below, once)."""
    figures = await blackhole_and_idle(mesh_pki, store_url, store_client, tmp_path, fault_proxy, chaos_seed,
                                       scale=SCALE, idle_pings=4)
    chaos_record("AT-09", **figures)
    check(figures)


@pytest.mark.chaos(seeds=1)
@pytest.mark.timeout(400)
async def test_at09_idle_hour(mesh_pki: Pki, store_url: str, store_client: redis.asyncio.Redis, tmp_path: Path,
                              fault_proxy, chaos_seed: int, chaos_record) -> None:
    """An idle hour at 1/20 (3 minutes; IDLE_HOUR_SCALE says why the pings are then 180, not 360), then the
    blackhole; once (the first seed), as it is long."""
    policy = Policy(SCALE)
    idle_pings = round(3600 * IDLE_HOUR_SCALE / policy.truck.time_seconds)
    figures = await blackhole_and_idle(mesh_pki, store_url, store_client, tmp_path, fault_proxy, chaos_seed,
                                       scale=SCALE, idle_pings=idle_pings)
    chaos_record("AT-09", **figures)
    check(figures)


async def test_a_client_pinging_faster_than_the_server_permits_is_told_too_many_pings(
        mesh_pki: Pki, store_url: str, tmp_path: Path, fault_proxy) -> None:
    """The control of the idle check above: the same quiet stream, with the server permitting pings only every
    2 s while the truck pings every second, earns GOAWAY too_many_pings (so its absence above means something)."""
    policy = Policy(SCALE)
    env = policy.server_env(min_ping_interval_seconds=2.0)
    async with telemetry_behind_proxy(mesh_pki, store_url, tmp_path / "state", fault_proxy, env) as (proxy, _), \
            edge_client(Truck.mint(mesh_pki.ca), tmp_path / "spool.db", proxy.address, policy.truck) as (client, _):
        await wait_for(lambda: client.stats.failures >= 1, timeout_seconds=30)
    assert "too many pings" in client.stats.last_error.lower(), client.stats.last_error
