"""AT-02, AT-03, AT-04 (issue 11): the truck's spool under faults, with the real edge client and a real telemetry
process (mTLS, the session's Valkey), faults injected for real (kill -9, the fault proxy's blackhole and reset).

* AT-02: 30 minutes of link loss at 1 Hz through a blackhole (not a reset), time scaled (the simulator's
  ``--speedup``), and kill -9 of the edge process half way through the outage; restarted on the same spool: every
  frame stored once, in order, no gap; the spool survives the kill.
* AT-03: kill -9 of the edge process (recording and streaming) at seeded random points during thousands of
  enqueues: every enqueue that returned is delivered or still spooled after each kill and delivered at the end;
  ``PRAGMA integrity_check`` ok after each kill.
* AT-04: the spool full while offline: exactly the policy of edge_client/spool.py (routine frames dropped oldest
  first, alarms, faults and health frames never); the drops reported to the server on reconnect (the Heartbeat's
  ``dropped_frames``, and the gaps the server counts); the edge process's memory flat while the spool overflows.

Each has a short version (one seed, smaller counts) for ``make test`` and a full one for ``make chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import pki
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, wait_for
from tests.faultproxy import FaultProxy
from tests.telemetry.helpers import TelemetryProcess
from tests.trucks import Truck

from .chaos_edge import KIND, EdgeSetup, edge_context, edge_process, last_sequence, look, rss_kib

ROOT = Path(__file__).resolve().parents[2]
#: 30 minutes at 1 Hz: the frames an AT-02 outage lasts, whatever the time scale.
OUTAGE_FRAMES = 1800
CRITICAL = (KIND.KIND_ALARM, KIND.KIND_FAULT, KIND.KIND_HEALTH)
ROUTINE = (KIND.KIND_POSITION, KIND.KIND_EVENT)
#: AT-04's bound on the edge process's memory: what it may grow by while the full spool keeps overflowing
#: (allocator noise; a leak per frame or per reconnect attempt would pass it within a few thousand), and its
#: resident size at most (docs/edge.md, "Memory").
RSS_GROWTH_BOUND_KIB = 8 * 1024
RSS_BOUND_KIB = 128 * 1024


@pytest.fixture(scope="module")
async def telemetry(mesh_pki: Pki, store_url: str, tmp_path_factory: pytest.TempPathFactory) -> TelemetryProcess:
    """A telemetry process of these tests on the session's store (each test streams as a vehicle of its own)."""
    # Pings permitted every second, so that AT-02's full truck may find a dead link within 3 s (2 s + 1 s) instead
    # of 15 s: its outage shrinks to 12 s and still outlasts the truck's keepalive bound before the kill.
    async with TelemetryProcess.running(mesh_pki, tmp_path_factory.mktemp("chaos-edge-telemetry"), store_url,
                                        HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS="1") as process:
        yield process


async def stored_frames(store: redis.asyncio.Redis, vehicle_id: str) -> list[tuple[int, int, frame_pb2.FramePayload]]:
    """(sequence, receive ms, payload) of every frame the store holds for the vehicle, by sequence."""
    entries = await store.xrange(TelemetryStore.frames_key(vehicle_id))
    return [(int(i.split(b"-")[0]), int(f[b"t"]), frame_pb2.FramePayload.FromString(f[b"p"])) for i, f in entries]


async def high_water(store: redis.asyncio.Redis, vehicle_id: str) -> int:
    return int(await store.hget(f"telemetry:{{{vehicle_id}}}:counters", "high_water") or 0)


# ---- AT-02 ------------------------------------------------------------------------------------------------


def _edge_cli(certs: Path, target: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge_client", "--cert-dir", str(certs), "--target", target, *args]


async def _stop(process: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    if process.returncode is None:
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def outage_and_kill(mesh_pki: Pki, telemetry: TelemetryProcess, store: redis.asyncio.Redis, fault_proxy,
                          tmp_path: Path, seed: int, record: Callable[..., None], *, speedup: int,
                          keepalive: tuple[float, float] = (10.0, 5.0)) -> None:
    """The whole AT-02 run with the real CLI (``haulmesh-edge simulate``), asserting the spool after the kill as
    it goes; its figures go to ``record`` (chaos_record) before the final assertions."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    truck = Truck.mint(mesh_pki.ca)
    vehicle = truck.vehicle_id
    certs, spool = tmp_path / "certs", tmp_path / "spool.db"
    pki.write_pem_files(certs, f"vehicle-{vehicle}", truck.issued, truck.ca_pem)
    proxy: FaultProxy = await fault_proxy(telemetry.address)
    simulate = _edge_cli(certs, proxy.address, "simulate", "--vehicle", vehicle, "--spool", str(spool), "--quiet",
                         "--speedup", str(speedup), "--backoff-base", "0.05", "--backoff-cap", "0.5",
                         "--keepalive-time-seconds", str(keepalive[0]),
                         "--keepalive-timeout-seconds", str(keepalive[1]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes: list[asyncio.subprocess.Process] = []

    async def start(*argv: str, **extra: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(*argv, cwd=tmp_path, env={**env, **extra},
                                                       stdout=asyncio.subprocess.PIPE)
        processes.append(process)
        return process

    async def server_holds(sequence: int) -> bool:
        return await high_water(store, vehicle) >= sequence

    try:
        first = await start(*simulate)
        # Streaming for a while (a seeded amount), then the link goes silent: no FIN, no RST, ever.
        online_frames = rng.randint(60, 240)
        await wait_for(lambda: server_holds(online_frames), timeout_seconds=60)
        proxy.blackhole()
        cut_at, cut_time = last_sequence(spool), loop.time()
        # Half way (a seeded point between 40 % and 60 % of the outage's frames): kill -9.
        kill_after = round(OUTAGE_FRAMES * rng.uniform(0.4, 0.6))
        await wait_for(lambda: last_sequence(spool) >= cut_at + kill_after, timeout_seconds=120)
        await _stop(first)
        killed = await asyncio.to_thread(look, spool)
        server_at_kill = await high_water(store, vehicle)
        # The spool survived: intact, and it holds every frame the server does not (none lost to the kill).
        assert killed.integrity == "ok", killed.integrity
        assert set(range(server_at_kill + 1, killed.last_sequence + 1)) <= set(killed.sequences)
        # Restarted on the same spool (resuming the drive, as the CLI's supervisor does), still offline.
        second = await start(*simulate, HAULMESH_EDGE_SUPERVISED="1")
        await wait_for(lambda: last_sequence(spool) >= cut_at + OUTAGE_FRAMES, timeout_seconds=120)
        proxy.pass_through()
        healed = loop.time()
        outage_seconds = healed - cut_time
        # The backlog goes through (the restarted truck's pending connection, or its next one)...
        await wait_for(lambda: server_holds(cut_at + OUTAGE_FRAMES + 30), timeout_seconds=90)
        catch_up_seconds = loop.time() - healed
        # ... then the drive stops (SIGINT, the operator's stop) and the stream client alone drains the rest.
        await _stop(second, signal.SIGINT)
        drain = await start(*_edge_cli(certs, proxy.address, "run", "--vehicle", vehicle, "--spool", str(spool),
                                       "--exit-when-drained", "--backoff-base", "0.05", "--backoff-cap", "0.5"))
        await asyncio.wait_for(drain.communicate(), timeout=90)
        assert drain.returncode == 0
    finally:
        for process in processes:
            await _stop(process)
    final = await asyncio.to_thread(look, spool)
    stored = await stored_frames(store, vehicle)
    counters = await TelemetryStore(store).counters(vehicle)
    sequences = [s for s, _, _ in stored]
    boots = [p.boot_id for _, _, p in stored]
    boot_changes = sum(1 for a, b in itertools.pairwise(boots) if a != b)
    figures: dict[str, object] = {
        "speedup": speedup, "keepalive_bound_seconds": sum(keepalive), "outage_frames": OUTAGE_FRAMES,
        "outage_seconds": round(outage_seconds, 2),
        "offline_from": cut_at, "killed_at": killed.last_sequence, "spooled_at_kill": len(killed.sequences),
        "frames": final.last_sequence, "stored": len(stored), "missing": final.last_sequence - len(set(sequences)),
        "duplicates": counters.get("duplicates", 0), "gaps": counters.get("lost", 0),
        "out_of_order": sum(1 for a, b in itertools.pairwise(stored) if b[1] < a[1]),
        "boots": len(set(boots)), "catch_up_seconds": round(catch_up_seconds, 2), "spool_depth": len(final.sequences),
        "integrity": final.integrity, "seed": seed}
    print(figures)
    record("AT-02", **figures)
    # The promise, with numbers: every frame once (the stream keys them by sequence), in arrival order, no gap,
    # nothing sent twice; the spool empty; two boots, one unbroken sequence.
    assert sequences == list(range(1, final.last_sequence + 1)), figures
    assert figures["out_of_order"] == 0 and figures["gaps"] == 0 and figures["duplicates"] == 0, figures
    assert final.last_sequence >= cut_at + OUTAGE_FRAMES and final.integrity == "ok" and not final.sequences
    assert figures["boots"] == 2 and boot_changes == 1, figures


async def test_at02_blackholed_outage_and_kill_9_half_way(mesh_pki: Pki, telemetry: TelemetryProcess,
                                                          store_client: redis.asyncio.Redis, fault_proxy,
                                                          tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    """The short version: the 30-minute outage at speedup 600 (3 s)."""
    await outage_and_kill(mesh_pki, telemetry, store_client, fault_proxy, tmp_path, chaos_seed, chaos_record,
                          speedup=600)


@pytest.mark.chaos
@pytest.mark.chaos_id("AT-02")
async def test_at02_full(mesh_pki: Pki, telemetry: TelemetryProcess, store_client: redis.asyncio.Redis,
                         fault_proxy, tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    """Per seed: the outage at speedup 150 (12 s), the truck's keepalive scaled to 2 s + 1 s (the CLI's
    --keepalive-time-seconds / --keepalive-timeout-seconds): the kill (4.8-7.2 s into the outage) comes after its
    3 s bound, so the truck finds the dead link before the kill and the restarted one reconnects into the
    blackhole, as with the production 15 s bound and a 30 s outage, in 18 s less a seed."""
    await outage_and_kill(mesh_pki, telemetry, store_client, fault_proxy, tmp_path, chaos_seed, chaos_record,
                          speedup=150, keepalive=(2.0, 1.0))


# ---- AT-03 ------------------------------------------------------------------------------------------------


def _round(context, setup: EdgeSetup, kill_at: int, delay_seconds: float,
           stop_at: int = 0) -> tuple[list[int], dict[str, int] | None]:
    """One life of the edge process: started (a fork), recording and streaming until a sequence it reports
    reaches ``kill_at`` (at least one more than the spool held), then kill -9 after ``delay_seconds`` (it goes on
    enqueueing meanwhile, so the kill lands anywhere in an enqueue, an ack's delete or a send). With
    ``stop_at`` it runs to that sequence and drains instead. Returns the sequences it reported and, if it
    drained, its final stats."""
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=edge_process, args=(setup, writer), kwargs={"stop_at": stop_at}, daemon=True)
    process.start()
    writer.close()  # the child holds the only write end: its death is our EOF
    returned: list[int] = []
    drained = None
    try:
        if not reader.poll(60):
            raise TimeoutError("the edge process did not start")
        _, spooled_before = reader.recv()
        target = max(kill_at, spooled_before + 1) if kill_at else 0
        while True:
            if not reader.poll(120):
                raise TimeoutError(f"the edge process stalled after {returned[-1:]}")
            message = reader.recv()
            if isinstance(message, tuple):
                drained = message[1]
                break
            returned.append(message)
            if target and message >= target:
                time.sleep(delay_seconds)  # the kill's seeded moment after the mark, not a wait for anything
                process.kill()
                break
        # What it reported before it died is still in the pipe.
        with contextlib.suppress(EOFError):
            while reader.poll(30):
                message = reader.recv()
                if isinstance(message, int):
                    returned.append(message)
    finally:
        process.join(30)
        if process.exitcode is None:
            process.kill()
            process.join(10)
        reader.close()
    return returned, drained


async def kills_during_enqueues(mesh_pki: Pki, telemetry: TelemetryProcess, store: redis.asyncio.Redis,
                                tmp_path: Path, seed: int, record: Callable[..., None], *, enqueues: int,
                                kills: int) -> None:
    """The whole AT-03 run (asserting after every kill); its figures go to ``record``."""
    rng = random.Random(seed)
    truck = Truck.mint(mesh_pki.ca)
    setup = EdgeSetup.write(truck, tmp_path / "edge", telemetry.address)
    context = edge_context()
    marks = sorted(rng.sample(range(2, enqueues), kills))
    returned: list[int] = []
    started = time.monotonic()
    checked = 0
    for mark in marks:
        reported, _ = await asyncio.to_thread(_round, context, setup, mark, rng.uniform(0.0, 0.003))
        assert reported, "a life of the edge process enqueued nothing"
        returned += reported
        spool = await asyncio.to_thread(look, setup.spool)
        assert spool.integrity == "ok", (mark, spool.integrity)
        # Every enqueue that ever returned is stored (at or below the server's mark: the store holds a vehicle's
        # sequences without gaps, counted below) or still spooled.
        held, spooled = await high_water(store, truck.vehicle_id), set(spool.sequences)
        missing = [s for s in returned if s > held and s not in spooled]
        assert not missing, (mark, missing[:10])
        checked += 1
    reported, drained = await asyncio.to_thread(_round, context, setup, 0, 0.0, enqueues)
    returned += reported
    elapsed = time.monotonic() - started
    assert drained is not None
    final = await asyncio.to_thread(look, setup.spool)
    stored = await stored_frames(store, truck.vehicle_id)
    counters = await TelemetryStore(store).counters(truck.vehicle_id)
    sequences = [s for s, _, _ in stored]
    not_delivered = sorted(set(returned) - set(sequences))
    figures: dict[str, object] = {
        "kills": kills, "integrity_checks_ok": checked, "enqueues": final.last_sequence,
        "returned": len(returned), "committed_unreported": final.last_sequence - len(set(returned)),
        "stored": len(sequences), "not_delivered": len(not_delivered), "gaps": counters.get("lost", 0),
        "resent_duplicates": counters.get("duplicates", 0), "spool_depth": len(final.sequences),
        "lives": kills + 1, "seconds": round(elapsed, 1), "seed": seed}
    print(figures)
    record("AT-03", **figures)
    # Every returned enqueue delivered, each sequence stored once and none skipped (a commit the kill cut short
    # never took a sequence); sequences never reused across the lives (strictly increasing as reported).
    assert not not_delivered, (figures, not_delivered[:10])
    assert sequences == list(range(1, final.last_sequence + 1)), figures
    assert returned == sorted(set(returned)), "a sequence was handed out twice"
    assert figures["gaps"] == 0 and final.integrity == "ok" and not final.sequences, figures


async def test_at03_kill_9_during_enqueues(mesh_pki: Pki, telemetry: TelemetryProcess,
                                           store_client: redis.asyncio.Redis, tmp_path: Path, chaos_seed: int,
                                           chaos_record) -> None:
    """The short version: 10 kills during 1,000 enqueues."""
    await kills_during_enqueues(mesh_pki, telemetry, store_client, tmp_path, chaos_seed, chaos_record,
                                enqueues=1000, kills=10)


@pytest.mark.chaos(seeds=1)  # one seed is already 100 seeded kill points (and delays) in 5,000 enqueues
@pytest.mark.chaos_id("AT-03")
async def test_at03_full(mesh_pki: Pki, telemetry: TelemetryProcess, store_client: redis.asyncio.Redis,
                         tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    """Per seed: 100 kills during 5,000 enqueues."""
    await kills_during_enqueues(mesh_pki, telemetry, store_client, tmp_path, chaos_seed, chaos_record,
                                enqueues=5000, kills=100)


# ---- AT-04 ------------------------------------------------------------------------------------------------


class SpoolModel:
    """The eviction policy of edge_client/spool.py, written again from its docstring: at most ``bound`` frames;
    past it the oldest routine frames go, one per excess frame; critical ones never (beyond the bound if they
    must), so a routine frame arriving in a spool of critical frames goes at once."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.routine: deque[int] = deque()
        self.critical: list[int] = []
        self.kinds: dict[int, int] = {}
        self.dropped = 0

    def add(self, sequence: int, kind: int) -> None:
        self.kinds[sequence] = kind
        (self.routine if kind in ROUTINE else self.critical).append(sequence)
        while len(self.routine) + len(self.critical) > self.bound and self.routine:
            del self.kinds[self.routine.popleft()]
            self.dropped += 1


async def full_while_offline(mesh_pki: Pki, telemetry: TelemetryProcess, store: redis.asyncio.Redis, fault_proxy,
                             tmp_path: Path, seed: int, record: Callable[..., None], *, bound: int) -> None:
    """The whole AT-04 run; its figures go to ``record`` before the final assertions."""
    rng = random.Random(seed)
    truck = Truck.mint(mesh_pki.ca)
    vehicle = truck.vehicle_id
    proxy: FaultProxy = await fault_proxy(telemetry.address)
    setup = EdgeSetup.write(truck, tmp_path / "edge", proxy.address, max_frames=bound)
    context = edge_context()
    out, child_out = context.Pipe(duplex=False)
    child_orders, orders = context.Pipe(duplex=False)
    process = context.Process(target=edge_process, args=(setup, child_out, child_orders), daemon=True)
    process.start()
    child_out.close()
    child_orders.close()

    def answer(*order: object) -> object:
        if order:
            orders.send(order)
        if not out.poll(120):
            raise TimeoutError(f"the edge process did not answer {order[:1]}")
        return out.recv()

    async def ask(*order: object):
        return await asyncio.to_thread(answer, *order)

    async def stats() -> dict[str, int]:
        return await ask("stats")

    try:
        await ask()  # ready
        online = await ask("record", [KIND.KIND_POSITION] * 50)
        await wait_for(lambda: _drained(stats), timeout_seconds=60)
        # Offline: every connection attempt refused (the truck out of coverage); it keeps trying (backoff ≤ 0.5 s).
        proxy.reset(refuse_new=True)
        await wait_for(lambda: _offline(stats), timeout_seconds=30)
        rss_offline, _ = rss_kib(process.pid)
        # Five times the bound: four of a seeded mix (an eighth critical), so the spool fills and evicts routine
        # frames oldest first around the critical ones; then an alarm storm that takes the critical frames past
        # the bound, and positions, each evicted at once (nothing routine is left to go before it).
        kinds = [*rng.choices([KIND.KIND_POSITION, KIND.KIND_EVENT, KIND.KIND_ALARM, KIND.KIND_FAULT,
                               KIND.KIND_HEALTH], weights=[80, 8, 4, 4, 4], k=4 * bound),
                 *rng.choices([KIND.KIND_ALARM, KIND.KIND_FAULT], k=bound * 7 // 10),
                 *[KIND.KIND_POSITION] * (bound * 3 // 10)]
        model = SpoolModel(bound)
        samples: list[int] = []
        rss_full = 0
        chunk = max(1, bound // 5)
        for start in range(0, len(kinds), chunk):
            sequences = await ask("record", kinds[start:start + chunk])
            for sequence, kind in zip(sequences, kinds[start:start + chunk], strict=True):
                model.add(sequence, kind)
            rss, _ = rss_kib(process.pid)
            if not rss_full and start + chunk >= bound:
                rss_full = rss  # the spool has just filled: from here on every frame evicts one
            elif rss_full:
                samples.append(rss)
            # The configured policy exactly, after every chunk: the same frames as the model, as many dropped.
            spooled = await ask("kinds")
            assert spooled == model.kinds, (f"after {start + chunk} frames offline the spool differs from the "
                                            f"policy: {sorted(set(spooled) ^ set(model.kinds))[:10]}")
            assert (await stats())["dropped"] == model.dropped
        _, rss_peak = rss_kib(process.pid)
        critical = [s for s, k in model.kinds.items() if k in CRITICAL]
        # No alarm, fault or health frame lost, though they outgrew the bound.
        assert sum(1 for k in kinds if k in CRITICAL) == len(critical) > bound
        # Back online: the backlog goes, and the first heartbeat tells the server what was dropped.
        proxy.pass_through()
        await wait_for(lambda: _drained(stats), timeout_seconds=90)
        liveness = f"telemetry:{{{vehicle}}}:liveness"

        async def reported() -> int:
            return int(await store.hget(liveness, "dropped_frames") or -1)

        await wait_for(lambda: _equals(reported, model.dropped), timeout_seconds=30)
        back = await stats()
        orders.send(("stop",))  # not answered: the process ends
    finally:
        process.join(30)
        if process.exitcode is None:
            process.kill()
            process.join(10)
        out.close()
        orders.close()
    stored = await stored_frames(store, vehicle)
    counters = await TelemetryStore(store).counters(vehicle)
    sequences = [s for s, _, _ in stored]
    growth = max(samples, default=rss_full) - rss_full
    figures: dict[str, object] = {
        "bound": bound, "recorded_offline": len(kinds), "dropped": model.dropped, "kept": len(model.kinds),
        "critical_kept": len(critical), "critical_recorded": sum(1 for k in kinds if k in CRITICAL),
        "reported_dropped": await reported(), "server_gaps": counters.get("lost", 0),
        "tail_dropped": int(await store.hget(liveness, "last_sequence") or 0) - counters.get("high_water", 0),
        "stored": len(stored),
        "sessions": back["sessions"], "rss_offline_kib": rss_offline, "rss_full_kib": rss_full,
        "rss_growth_kib": growth, "rss_peak_kib": rss_peak, "rss_growth_bound_kib": RSS_GROWTH_BOUND_KIB,
        "rss_bound_kib": RSS_BOUND_KIB, "seed": seed}
    print(figures)
    record("AT-04", **figures)
    # Delivered: the frames before the outage, then exactly what the policy kept; the server counts the
    # dropped ones as gaps and heard the truck's count in its heartbeat.
    assert sequences == online + sorted(model.kinds), figures
    assert figures["reported_dropped"] == model.dropped, figures
    # The server sees the drops on its own too: as gaps below its high-water mark, and above it as the distance
    # to the truck's last sequence (heartbeat): the frames evicted at the tail (the storm's positions).
    assert figures["server_gaps"] + figures["tail_dropped"] == model.dropped, figures
    assert {s for s, _, p in stored if p.kind in CRITICAL} == set(critical), figures
    # Bounded: the process does not grow while the full spool overflows, and stays under the stated size.
    assert growth <= RSS_GROWTH_BOUND_KIB and rss_peak <= RSS_BOUND_KIB, figures


async def _drained(stats) -> bool:
    now = await stats()
    return bool(now["connected"]) and now["depth"] == 0


async def _offline(stats) -> bool:
    return not (await stats())["connected"]


async def _equals(read, expected: int) -> bool:
    return await read() == expected


async def test_at04_spool_full_while_offline(mesh_pki: Pki, telemetry: TelemetryProcess,
                                             store_client: redis.asyncio.Redis, fault_proxy, tmp_path: Path,
                                             chaos_seed: int, chaos_record) -> None:
    """The short version: a bound of 300 frames, 1,500 recorded offline."""
    await full_while_offline(mesh_pki, telemetry, store_client, fault_proxy, tmp_path, chaos_seed, chaos_record,
                             bound=300)


@pytest.mark.chaos(seeds=1)  # the seed draws only the kinds' mix; filling and dropping follow the bound
@pytest.mark.chaos_id("AT-04")
async def test_at04_full(mesh_pki: Pki, telemetry: TelemetryProcess, store_client: redis.asyncio.Redis,
                         fault_proxy, tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    """Per seed: a bound of 5,000 frames, 25,000 recorded offline."""
    await full_while_offline(mesh_pki, telemetry, store_client, fault_proxy, tmp_path, chaos_seed, chaos_record,
                             bound=5000)
