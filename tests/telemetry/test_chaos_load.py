"""AT-10 (a slow store under many trucks), and W-1 / W-2 at full strength.

AT-10: a telemetry process of the test reaches its Valkey through the fault proxy; light in-process trucks (one
mTLS channel and one StreamTelemetry call each, frames signed with their own keys before the run, as each truck's
own CPU would, not on the cores the test measures; the unacknowledged resent on a new session if a stream breaks,
as the edge client's spool does) stream at 10 Hz; the proxy then adds 500 ms of
latency each way for a while. The process's RSS (``/proc/<pid>/status`` VmRSS, sampled every 100 ms) must stay
under the memory bound docs/capacity.md states ("Memory bound per telemetry process"), the process must live,
and the trucks' ack latency p99 must be back to its baseline within 60 s of the latency ending. Every
acknowledged frame is stored (0 lost).

The short AT-10 (50 trucks, 5 s of latency, one worker) runs in ``make test``; the full one (500 trucks, a seeded
latency of 15-25 s, on two telemetry workers as docs/capacity.md sizes that load: the bounds then hold per worker)
and W-1 / W-2 at full size run in ``make chaos`` (tests/chaos.py). W-1 and W-2 full reuse the short
versions' scenarios (tests/telemetry/reads/test_watch_caps.py, tests/runtime/test_store_restart.py) at the
issue's counts: 1,000 watches while 100 trucks stream; the store killed and restarted, and its connections
exhausted, while 100 trucks stream and the consumers run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import multiprocessing
import os
import random
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import EmbeddedStore, Mesh, connect_async, retry_delay_seconds, status_of
from services.runtime.tokens import mint
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, measuring_from_this_process, running_mesh, wait_for
from tests.faultproxy import FaultProxy
from tests.gateway.rest.conftest import bearer
from tests.store_faults import ConnectionsRefused, kill_store, restart_store
from tests.trucks import Truck, signed_frames

from .helpers import TelemetryProcess, batch, dispatch_to, free_metrics_port

#: docs/capacity.md, "Memory bound per telemetry process": the process's base, 0.12 MiB per open stream plus gRPC's
#: receive buffers of a stream not being read (≤ 80 KiB), and frames in flight or waiting for mission tracking
#: (together ≤ 50,000 + 10,000, x 2.5 KB ≈ 150 MB) whatever the store does; 600 MiB for this test's 500 trucks. The
#: test takes the base as measured (the process SERVING, no stream yet), the rest as the doc states it.
PER_STREAM_MIB, FRAMES_MIB, PROCESS_BOUND_MIB = 0.12 + 80 / 1024, 60_000 * 2500 / 2**20, 600.0
#: The counted parts' bounds (the process's defaults): frames in flight, and frames waiting for tracking (its
#: bound, passed only by what was in flight when it was reached).
INFLIGHT_BOUND, TRACKING_BOUND = 50_000, 10_000 + 50_000
#: The latency the proxy adds each way (AT-10: "store latency of 500 ms").
STORE_LATENCY_SECONDS = 0.5
#: Ack p99 counts as back to baseline when a window's p99 is at most this factor of the baseline's, plus a
#: margin for the scheduling noise of a loaded 2-core machine.
BASELINE_FACTOR, BASELINE_MARGIN_SECONDS = 1.5, 0.05
#: Windows of ack times over which the p99 is taken, and how many good ones in a row make a recovery.
WINDOW_SECONDS, GOOD_WINDOWS = 1.0, 3
RECOVERY_BOUND_SECONDS = 60.0
#: Telemetry workers (HAULMESH_WORKERS) for the full AT-10: 500 trucks at 10 Hz is two workers' load on a 2-core
#: machine as docs/capacity.md sizes them (docs/decisions.md, "AT-10 runs the service as sized").
AT10_FULL_WORKERS = 2


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def gauge(metrics_port: int, name: str) -> float:
    """A gauge of the process's Prometheus endpoint, scraped."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def via_proxy(store_url: str, proxy_address: str) -> str:
    """``store_url`` with its host and port replaced by the proxy's (credentials kept)."""
    parts = urlsplit(store_url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{proxy_address}"))


@dataclass
class LightTruck:
    """A truck of the test: spools ``frames_per_message`` frames every ``period_seconds`` and streams what it has
    spooled whenever its stream takes another message, as the edge client does (edge_client/client.py): live, one
    period's frames per message; behind a server that has stopped reading (flow control), the spool grows and goes
    out in batches of up to MAX_BATCH_FRAMES once it reads again. Notes when each frame was spooled and when an Ack
    covered it; on a broken stream it opens a new session (Hello with what was acked) and resends what was not
    acknowledged."""

    truck: Truck
    address: str
    period_seconds: float
    frames_per_message: int = 1
    #: Frames spooled (sequence of the last).
    sent: int = 0
    acked: int = 0
    sessions: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)
    #: The spool: frames signed when recorded (or before the run), as the edge client's Recorder signs them (not
    #: when sent: a backlog's signing would land on the cores the server drains it with), until an Ack covers them.
    spool: dict[int, frame_pb2.SignedFrame] = field(default_factory=dict)
    #: Frames signed before the run (serialized, sequence 1 first: :func:`presign`); later ones are signed as
    #: they are recorded.
    presigned: list[bytes] = field(default_factory=list)
    #: (monotonic time the Ack arrived, seconds since the frame was spooled), one per frame.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: Set when a frame is spooled: the stream's request iterator waits on it.
    _spooled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by the test once every truck of the fleet is connected: the trucks then start their rate together
    #: (before, each has sent one frame), so the fleet's connecting is not a backlog the baseline inherits.
    go: asyncio.Event = field(default_factory=asyncio.Event)

    #: The largest batch the truck sends (the telemetry service's Welcome.max_batch_frames default).
    MAX_BATCH_FRAMES: ClassVar[int] = 500

    def __post_init__(self) -> None:
        self._key_id = self.truck.key_id  # derived from the certificate: once, not per frame

    def _frame(self, sequence: int) -> frame_pb2.SignedFrame:
        payload = self.truck.payload(sequence)
        return frame_pb2.SignedFrame(sequence=sequence, payload=payload, signature=self.truck.sign(payload),
                                     key_id=self._key_id)

    def _acknowledged(self, through: int) -> None:
        now = time.monotonic()
        for sequence in range(self.acked + 1, through + 1):
            started = self.sent_at.pop(sequence, None)
            if started is not None:
                self.latencies.append((now, now - started))
            self.spool.pop(sequence, None)
        self.acked = max(self.acked, through)

    async def _requests(self) -> AsyncIterator[stream_pb2.StreamTelemetryRequest]:
        """The session's messages: its Hello, then the spool above what was acked, taken when gRPC asks for the
        next message (that is, once the previous one was written: flow control holds the frames in the spool).

        What was written is this session's own: a broken session's iterator may still be woken by a frame spooled
        after the next session began (gRPC leaves it suspended when the call ends with an error), and a count kept
        on the truck would then skip that session's frames (W-2 counted them as acknowledged and lost)."""
        written = self.acked
        yield self.truck.hello(written)
        while True:
            if written >= self.sent:
                self._spooled.clear()
                await self._spooled.wait()
                continue
            last = min(written + self.MAX_BATCH_FRAMES, self.sent)
            message = batch([self.spool[s] for s in range(written + 1, last + 1)])
            written = last
            yield message

    async def _session(self, channel: grpc.aio.Channel) -> None:
        """One StreamTelemetry call until it breaks."""
        call = telemetry_service_pb2_grpc.TelemetryServiceStub(channel).StreamTelemetry(self._requests(),
                                                                                        timeout=900)
        self.sessions += 1
        try:
            async for response in call:
                if response.WhichOneof("message") == "ack":
                    self._acknowledged(response.ack.through_sequence)
        except grpc.aio.AioRpcError:
            pass
        finally:
            call.cancel()

    async def _send(self) -> None:
        self._spool(1)  # the first frame, before the fleet's rate starts
        await self.go.wait()
        next_at = time.monotonic()
        while True:
            self._spool(self.frames_per_message)
            next_at += self.period_seconds
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _spool(self, count: int) -> None:
        now = time.monotonic()
        first = self.sent + 1
        self.sent += count
        for sequence in range(first, self.sent + 1):
            self.sent_at[sequence] = now
            self.spool[sequence] = (frame_pb2.SignedFrame.FromString(self.presigned[sequence - 1])
                                    if sequence <= len(self.presigned) else self._frame(sequence))
        self._spooled.set()

    async def run(self) -> None:
        sender = asyncio.ensure_future(self._send())
        try:
            while True:
                async with grpc.aio.secure_channel(self.address, self.truck.credentials()) as channel:
                    await self._session(channel)
                await asyncio.sleep(0.3)  # the edge client's reconnect backoff, reduced
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


async def presign(fleet: list[LightTruck], frames_each: int) -> None:
    """Sign each truck's first ``frames_each`` frames up front, on every core, as the bench does: a real fleet signs
    on its trucks' own CPUs, and here the 500 trucks' 5,000 signatures a second (28 % of the test process's samples,
    py-spy) were taken from the two cores the telemetry workers drain their backlog with."""
    loop = asyncio.get_running_loop()
    # spawn: a fork of this process would copy its gRPC state, which gRPC does not support.
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as pool:
        signed = await asyncio.gather(*(
            loop.run_in_executor(pool, signed_frames, t.truck.vehicle_id, t.truck.boot_id,
                                 t.truck.issued.private_key_pem, t.truck.key_id, frames_each) for t in fleet))
    for truck, frames in zip(fleet, signed, strict=True):
        truck.presigned = frames


class RssSampler:
    """Samples processes' RSS every ``interval_seconds`` in a thread; ``peak`` is the most any one was seen at."""

    def __init__(self, pids: list[int], interval_seconds: float = 0.1) -> None:
        self.pids, self.interval_seconds = pids, interval_seconds
        self.peak = self.first = max(rss_mib(pid) for pid in pids)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, await asyncio.to_thread(lambda: max(rss_mib(pid) for pid in self.pids)))
            await asyncio.sleep(self.interval_seconds)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class AckWindows:
    """The fleet's ack latencies by WINDOW_SECONDS window of their ack time from ``since``, taken in increments:
    the check every half second must not sort the whole run's samples (half a million) on the event loop that the
    trucks and the fault proxy share; that stalled the store's path for the workers it was measuring."""

    def __init__(self, fleet: list[LightTruck], since: float) -> None:
        self.since = since
        self._fleet = fleet
        # Each truck's latencies are appended in ack-time order: start at its first one from ``since``.
        self._cursors = [bisect.bisect_left(t.latencies, since, key=lambda x: x[0]) for t in fleet]
        self._windows: list[list[float]] = []
        self._last = since
        self._p99s: dict[int, float | None] = {}  # of windows that can no longer change

    def take(self) -> None:
        for index, truck in enumerate(self._fleet):
            new = truck.latencies[self._cursors[index]:]
            self._cursors[index] += len(new)
            for t, seconds in new:
                window = int((t - self.since) / WINDOW_SECONDS)
                while len(self._windows) <= window:
                    self._windows.append([])
                self._windows[window].append(seconds)
                self._last = max(self._last, t)

    def p99s(self) -> list[float | None]:
        """Each full window's ack p99 (None: no ack in it); a window is full once an ack came after it."""
        full = int((self._last - self.since) / WINDOW_SECONDS)
        for index in range(full):
            if index not in self._p99s:
                window = self._windows[index] if index < len(self._windows) else []
                self._p99s[index] = p99(window) if window else None
        return [self._p99s[i] for i in range(full)]

    def recovered_at(self, threshold: float) -> float | None:
        """The start of the first of GOOD_WINDOWS consecutive full windows whose ack p99 is within ``threshold``,
        with every later full window within it too; None if there is none yet."""
        return recovered_at(self.p99s(), self.since, threshold)


def recovered_at(p99s: list[float | None], since: float, threshold: float) -> float | None:
    """See :meth:`AckWindows.recovered_at` (``p99s`` per window from ``since``)."""
    good = [w is not None and w <= threshold for w in p99s]
    for index in range(len(good) - GOOD_WINDOWS + 1):
        if all(good[index:]):
            return since + index * WINDOW_SECONDS
    return None


async def slow_store_under_trucks(mesh_pki: Pki, tmp_path: Path, fault_proxy, seed: int, *, trucks: int,
                                  latency_seconds: float,
                                  baseline_seconds: float, frames_per_message: int, workers: int = 1
                                  ) -> dict[str, float]:
    """The whole AT-10 run on ``workers`` telemetry worker processes (HAULMESH_WORKERS); returns its figures. The
    memory bound is per process: the peak is the highest any worker reached.

    On a store of its own: the session's holds every earlier test's frames (an earlier seed's 250,000 among them),
    and its size (AOF rewrites the acks' fsyncs share the disk with, vehicles the workers' periodic jobs walk)
    would be part of what the recovery measures."""
    store = EmbeddedStore(tmp_path / "store")
    store_url = (await asyncio.to_thread(store.ensure_running)).url
    try:
        return await _slow_store_under_trucks(mesh_pki, store_url, tmp_path, fault_proxy, seed, trucks=trucks,
                                              latency_seconds=latency_seconds, baseline_seconds=baseline_seconds,
                                              frames_per_message=frames_per_message, workers=workers)
    finally:
        await asyncio.to_thread(store.stop)


async def _slow_store_under_trucks(mesh_pki: Pki, store_url: str, tmp_path: Path, fault_proxy, seed: int, *,
                                   trucks: int, latency_seconds: float, baseline_seconds: float,
                                   frames_per_message: int, workers: int) -> dict[str, float]:
    rng = random.Random(seed)
    store_address = urlsplit(store_url).netloc.rpartition("@")[2]
    proxy: FaultProxy = await fault_proxy(store_address)
    fleet_trucks = await asyncio.to_thread(lambda: [Truck.mint(mesh_pki.ca, f"AT10-{uuid.uuid4().hex[:10].upper()}")
                                                    for _ in range(trucks)])
    await asyncio.to_thread((tmp_path / "state").mkdir, parents=True, exist_ok=True)
    metrics_port = free_metrics_port(workers)
    metrics_ports = [metrics_port + index for index in range(workers)]
    fleet = [LightTruck(t, "", period_seconds=0.1 * frames_per_message, frames_per_message=frames_per_message)
             for t in fleet_trucks]
    # Every frame the run can record (10 a second): connecting, the settling and the longest baseline, the fault, and
    # the longest wait for the recovery; the few beyond (a slow start) are signed as recorded.
    run_seconds = 2 + baseline_seconds + 2 + latency_seconds + RECOVERY_BOUND_SECONDS + 2 * GOOD_WINDOWS + 10
    await presign(fleet, int(run_seconds * 10) + 1)
    async with TelemetryProcess.running(mesh_pki, tmp_path / "state", via_proxy(store_url, proxy.address),
                                        HAULMESH_METRICS_PORT=str(metrics_port),
                                        HAULMESH_WORKERS=str(workers)) as process:
        # Every worker listening (else the kernel hands the fleet to those that are).
        pids = await wait_for(lambda: (lambda p: p if len(p) == workers else None)(process.listening_workers()),
                              timeout_seconds=30)
        base_mib = max(rss_mib(pid) for pid in pids)
        for truck in fleet:
            truck.address = process.address
        tasks = []
        with RssSampler(pids) as rss, measuring_from_this_process():
            try:
                for truck in fleet:  # started over a second, as a fleet's connections would not arrive at once
                    tasks.append(asyncio.ensure_future(truck.run()))
                    await asyncio.sleep(1.0 / trucks)
                await wait_for(lambda: all(t.acked > 0 for t in fleet), timeout_seconds=60, interval_seconds=0.2)
                for truck in fleet:
                    truck.go.set()
                await asyncio.sleep(2)  # the fleet's rate settling (a duration): the baseline is what follows
                started = time.monotonic()
                # The baseline period, at a seeded length (the fault's moment): a duration, not a wait for something.
                await asyncio.sleep(baseline_seconds + rng.uniform(0, 2))
                baseline = p99([s for truck in fleet for t, s in truck.latencies if t >= started])
                proxy.delay(STORE_LATENCY_SECONDS)
                slow_from = time.monotonic()
                await asyncio.sleep(latency_seconds)  # the fault's duration
                proxy.delay(0)
                healed = time.monotonic()
                during = p99([s for truck in fleet for t, s in truck.latencies if slow_from <= t < healed])
                threshold = BASELINE_FACTOR * baseline + BASELINE_MARGIN_SECONDS
                after = AckWindows(fleet, healed)

                def back() -> bool:
                    after.take()
                    return after.recovered_at(threshold) is not None

                with contextlib.suppress(TimeoutError):
                    await wait_for(back, timeout_seconds=RECOVERY_BOUND_SECONDS + 2 * GOOD_WINDOWS,
                                   interval_seconds=0.5)
                after.take()
                recovery = after.recovered_at(threshold)
                window_p99s = [round(w, 2) if w is not None else None for w in after.p99s()]
                assert process.process is not None and process.process.returncode is None, "telemetry died"
                inflight_peak = max([await asyncio.to_thread(gauge, port, "haulmesh_telemetry_inflight_frames_peak")
                                     for port in metrics_ports])
                tracking_peak = max([await asyncio.to_thread(gauge, port,
                                                             "haulmesh_telemetry_tracking_backlog_frames_peak")
                                     for port in metrics_ports])
                # A worker that died (out of memory, say) is restarted by its parent: alive means the same ones.
                alive = process.process.returncode is None and process.worker_pids() == pids
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        peak = rss.peak
    store_client = connect_async(store_url)
    try:
        lost = await acked_not_stored(store_client, fleet)
    finally:
        await store_client.aclose()
    sent = sum(t.sent for t in fleet)
    figures = {
        "trucks": trucks, "rate_hz": 10, "frames_per_message": frames_per_message, "workers": workers,
        "latency_each_way_seconds": STORE_LATENCY_SECONDS, "latency_for_seconds": round(latency_seconds, 1),
        "rss_base_mib": round(base_mib, 1), "rss_peak_mib": round(peak, 1),
        "rss_model_mib": round(base_mib + trucks / workers * PER_STREAM_MIB + FRAMES_MIB, 1),
        "rss_process_bound_mib": PROCESS_BOUND_MIB, "alive": alive, "inflight_frames_peak": inflight_peak,
        "tracking_backlog_peak": tracking_peak,
        "ack_p99_baseline_s": round(baseline, 3), "ack_p99_during_s": round(during, 3),
        "ack_p99_threshold_s": round(threshold, 3),
        "recovery_seconds": round(recovery - healed, 1) if recovery is not None else None,
        "ack_p99_per_window_after_s": window_p99s,
        "frames_sent": sent, "frames_acked": sum(t.acked for t in fleet), "acked_lost": lost,
        "sessions_reopened": sum(t.sessions - 1 for t in fleet), "seed": seed,
    }
    print(figures)
    return figures


async def acked_not_stored(client: redis.asyncio.Redis, fleet: list[LightTruck]) -> int:
    """How many frames the fleet had acknowledged are not in the store: counted, not listed. A vehicle's stream
    ids are its sequences (≥ 1, each at most once), so its entries at or below what was acked are all of
    1..acked exactly when there are that many of them: the stream's length less its entries above the mark.
    Reading every entry back instead (half a million frames with their payloads) took this process 20 s."""
    pipe = client.pipeline(transaction=False)
    for truck in fleet:
        key = TelemetryStore.frames_key(truck.truck.vehicle_id)
        pipe.xlen(key)
        pipe.xrange(key, min=f"{truck.acked + 1}-0")
    replies = await pipe.execute()
    return sum(truck.acked - (length - len(above))
               for truck, length, above in zip(fleet, replies[0::2], replies[1::2], strict=True))


def check_at10(figures: dict) -> None:
    assert figures["alive"], figures
    # The process bound the doc states, and the counted parts within theirs. The parts' model (rss_model_mib) is
    # recorded beside it (docs/capacity.md, "Memory bound per telemetry process", AT-10), not asserted: the
    # allocator's high-water and the per-stream figure are measured averages, not bounds.
    assert figures["rss_peak_mib"] <= figures["rss_process_bound_mib"], figures
    assert figures["inflight_frames_peak"] <= INFLIGHT_BOUND, figures
    assert figures["tracking_backlog_peak"] <= TRACKING_BOUND, figures
    assert figures["recovery_seconds"] is not None, figures
    assert figures["recovery_seconds"] <= RECOVERY_BOUND_SECONDS, figures
    assert figures["acked_lost"] == 0, figures


def test_ack_windows_find_the_recovery_as_samples_arrive() -> None:
    """AckWindows, fed in increments, finds what one pass over every sample finds: the first of the good windows
    that stay good (a late bad window moves it), never a window before ``since`` or one not yet full."""
    rng = random.Random(7)
    trucks = [type("T", (), {"latencies": []})() for _ in range(3)]
    since = 100.0
    slow = {3, 4, 9}  # bad windows: recovery is at 10 once windows 10-12 are full
    for truck in trucks:  # the fault's acks, before ``since``: not counted
        truck.latencies.extend((since - 1 + step * 0.1, 5.0) for step in range(10))
    windows = AckWindows(trucks, since)  # type: ignore[arg-type]
    found = []
    for step in range(150):  # 15 s of acks, 0.1 s apart, checked as they come
        t = since + step * 0.1
        for truck in trucks:
            window = int((t - since) / WINDOW_SECONDS)
            truck.latencies.append((t, 5.0 if window in slow else rng.uniform(0.1, 0.5)))
        windows.take()
        found.append(windows.recovered_at(threshold=1.0))
    assert windows.recovered_at(threshold=1.0) == since + 10
    # As windows fill: three good ones (0-2) are a recovery until window 3 is bad, then 5-7 until 9, then 10-12,
    # each found only once its third window is full (an ack in the window after it).
    changes = [(step, value) for step, value in enumerate(found) if step == 0 or found[step - 1] != value]
    assert changes == [(0, None), (30, since), (40, None), (80, since + 5), (100, None), (130, since + 10)]
    assert windows.p99s()[3] == 5.0 and windows.p99s()[2] <= 0.5


async def test_acked_not_stored_counts_exactly_the_acknowledged_frames_missing(
        store_client: redis.asyncio.Redis, mesh_pki: Pki) -> None:
    """The count AT-10 asserts on: frames above the acked mark (stored, not yet acked) do not hide one missing at or
    below it, and a truck's other frames do not count for it."""
    fleet = [LightTruck(Truck.mint(mesh_pki.ca), "unused", period_seconds=1.0) for _ in range(2)]
    stored = ([1, 2, 4, 5, 6, 7], [1, 2, 3])
    for light, sequences in zip(fleet, stored, strict=True):
        for sequence in sequences:
            await store_client.xadd(TelemetryStore.frames_key(light.truck.vehicle_id), {"p": b""},
                                    id=f"{sequence}-0")
    fleet[0].acked, fleet[1].acked = 5, 3
    assert await acked_not_stored(store_client, fleet) == 1  # the 3rd of the first truck
    fleet[0].acked = 2
    assert await acked_not_stored(store_client, fleet) == 0
    fleet[1].acked = 8
    assert await acked_not_stored(store_client, fleet) == 5


@pytest.mark.timeout(120)
async def test_at10_slow_store_under_50_trucks_memory_bounded_and_acks_recover(
        mesh_pki: Pki, tmp_path: Path, fault_proxy, chaos_seed: int, chaos_record) -> None:
    """The short version: 50 trucks at 10 Hz, 5 s of 500 ms store latency."""
    figures = await slow_store_under_trucks(mesh_pki, tmp_path, fault_proxy, chaos_seed,
                                            trucks=50, latency_seconds=5.0, baseline_seconds=4.0,
                                            frames_per_message=1)
    chaos_record("AT-10", **figures)
    check_at10(figures)


@pytest.mark.chaos(seeds=2)  # two seeded latency lengths: ~70 s each, within make chaos's 15 minutes
@pytest.mark.timeout(300)
async def test_at10_full(mesh_pki: Pki, tmp_path: Path, fault_proxy, chaos_seed: int, chaos_record) -> None:
    """500 trucks at 10 Hz (each sending its last half second of frames together, as an edge client sends what
    its spool holds), a seeded 15-25 s of 500 ms store latency."""
    latency = random.Random(chaos_seed).uniform(15, 25)
    figures = await slow_store_under_trucks(mesh_pki, tmp_path, fault_proxy, chaos_seed,
                                            trucks=500, latency_seconds=latency, baseline_seconds=8.0,
                                            frames_per_message=5, workers=AT10_FULL_WORKERS)
    chaos_record("AT-10", **figures)
    check_at10(figures)


# --- W-1 full: 1,000 watches while 100 trucks stream ------------------------------------------------------------

W1_WATCHES, W1_GRPC_IDENTITIES, W1_TRUCKS = 1000, 10, 100


async def _fleet_streaming(mesh: Mesh, mesh_pki: Pki, count: int, *, period_seconds: float,
                           first: Truck | None = None) -> tuple[list[LightTruck], list[asyncio.Task[None]]]:
    """``count`` light trucks (``first`` among them) streaming to the mesh's telemetry, each acknowledged once."""
    minted = await asyncio.to_thread(lambda: [Truck.mint(mesh_pki.ca, f"LD-{uuid.uuid4().hex[:10].upper()}")
                                              for _ in range(count - (first is not None))])
    fleet = [LightTruck(t, mesh.address("telemetry"), period_seconds=period_seconds)
             for t in ([first] if first else []) + minted]
    tasks = []
    for truck in fleet:
        tasks.append(asyncio.ensure_future(truck.run()))
        await asyncio.sleep(1.0 / count)
    await wait_for(lambda: all(t.acked > 0 for t in fleet), timeout_seconds=60, interval_seconds=0.2)
    for truck in fleet:
        truck.go.set()
    return fleet, tasks


def _acks_p99(fleet: list[LightTruck], since: float, until: float = float("inf")) -> float:
    """Ack latency p99 of the frames first sent in [since, until)."""
    return p99([s for truck in fleet for t, s in truck.latencies if since <= t - s < until])


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.chaos(seeds=1)
@pytest.mark.chaos_id("W-1")
@pytest.mark.timeout(300)
async def test_w1_full(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory, chaos_seed: int,
                       chaos_record) -> None:
    """1,000 watches at once (500 gRPC vehicle watches from 10 operators, 500 SSE mission watches of one carrier)
    at the default caps while 100 trucks stream at 1 Hz: those beyond a cap refused with a retry hint, every
    service up and SERVING, the trucks' ack p99 unchanged within noise."""
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("w1-full"), env={"HAULMESH_RATE_LIMIT": "off"}) as mesh:
        watched = Truck.mint(mesh_pki.ca, f"W1-{uuid.uuid4().hex[:8].upper()}")
        carrier = f"w1-{uuid.uuid4().hex[:8]}"
        mission = await dispatch_to(mesh, mesh_pki, watched, carrier)
        pids = {name: child.process.pid for name, child in mesh.children.items()}
        fleet, tasks = await _fleet_streaming(mesh, mesh_pki, W1_TRUCKS, period_seconds=1.0, first=watched)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(_stop, tasks)
            stack.enter_context(measuring_from_this_process())
            started = time.monotonic()
            await asyncio.sleep(5)  # the baseline period of ack latencies (a duration, not a wait)
            baseline = _acks_p99(fleet, started)
            opened = time.monotonic()
            outcomes = await _open_watches(stack, mesh, mesh_pki, mission, watched, carrier)
            answered = time.monotonic()
            # The watches held open while the trucks stream (a duration); the p99 of the frames sent from a second
            # after every watch was answered (admitted or refused) on; the opening burst's is recorded beside it.
            await asyncio.sleep(7)
            during_from = answered + 1
            during = _acks_p99(fleet, during_from, during_from + 5)
            opening = _acks_p99(fleet, opened, answered)
            statuses = await mesh.status()
            alive = all(child.process.returncode is None for child in mesh.children.values())
            same_pids = {name: child.process.pid for name, child in mesh.children.items()} == pids
        figures = {"watches": W1_WATCHES, "trucks": W1_TRUCKS, **outcomes,
                   "open_seconds": round(answered - opened, 1), "ack_p99_baseline_s": round(baseline, 3),
                   "ack_p99_while_opening_s": round(opening, 3),
                   "ack_p99_during_s": round(during, 3), "alive": alive and same_pids,
                   "not_serving": sorted(n for n, s in statuses.items() if s != "SERVING")}
        print(figures)
        chaos_record("W-1", **figures)
    assert figures["alive"] and not figures["not_serving"], figures
    assert figures["other_errors"] == 0 and figures["refused_without_hint"] == 0, figures
    assert figures["grpc_admitted"] + figures["grpc_refused"] + figures["sse_admitted"] + figures["sse_refused"] \
        == W1_WATCHES, figures
    # The default caps (docs/telemetry.md): 256 watches per process, 32 per tenant; SSE 16 per carrier.
    assert figures["grpc_admitted"] + figures["sse_admitted"] <= 256, figures
    assert figures["grpc_max_per_identity"] <= 32 and figures["sse_admitted"] <= 16, figures
    assert figures["grpc_admitted"] > 0 and figures["sse_admitted"] > 0, figures
    assert during <= max(2 * baseline, baseline + 0.25), figures  # within the noise of a loaded 2-core box


async def _open_watches(stack: AsyncExitStack, mesh: Mesh, mesh_pki: Pki, mission, watched: Truck,
                        carrier: str) -> dict[str, int]:
    """Open W1_WATCHES watches at once; admitted ones are drained (as clients do) until ``stack`` closes."""
    grpc_count = W1_WATCHES // 2
    sse_count = W1_WATCHES - grpc_count
    counts = {"grpc_admitted": 0, "grpc_refused": 0, "sse_admitted": 0, "sse_refused": 0,
              "refused_without_hint": 0, "other_errors": 0}
    per_identity: dict[int, int] = {}
    request = telemetry_service_pb2.WatchVehicleTelemetryRequest(vehicle=f"vehicles/{watched.vehicle_id}")
    channels = [await stack.enter_async_context(grpc.aio.secure_channel(
        mesh.address("telemetry"), mesh_pki.credentials("operator", f"w1-ops-{i}"))) for i in range(W1_GRPC_IDENTITIES)]
    drains: list[asyncio.Future[None]] = []
    stack.push_async_callback(_stop, drains)  # type: ignore[arg-type]

    async def grpc_watch(index: int) -> None:
        identity = index % W1_GRPC_IDENTITIES
        call = telemetry_service_pb2_grpc.TelemetryServiceStub(channels[identity]).WatchVehicleTelemetry(
            request, timeout=300)
        try:
            reply = await asyncio.wait_for(call.read(), 60)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                counts["other_errors"] += 1
                return
            counts["grpc_refused"] += 1
            counts["refused_without_hint"] += retry_delay_seconds(status_of(exc)) is None
            return
        assert reply is not grpc.aio.EOF
        counts["grpc_admitted"] += 1
        per_identity[identity] = per_identity.get(identity, 0) + 1
        stack.callback(call.cancel)

        async def drain() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await call.read() is not grpc.aio.EOF:
                    pass

        drains.append(asyncio.ensure_future(drain()))

    http = await stack.enter_async_context(httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=httpx.Timeout(30, read=300),
        limits=httpx.Limits(max_connections=sse_count + 10, max_keepalive_connections=0)))
    token = mint(carrier=carrier, scopes="telemetry:read", state_dir=mesh.state_dir)
    headers = {**bearer(token), "Accept": "text/event-stream"}
    url = f"/api/v1/{mission.name}:watchTelemetry"

    async def sse_watch() -> None:
        try:
            response = await stack.enter_async_context(http.stream("GET", url, headers=headers))
        except httpx.HTTPError:
            counts["other_errors"] += 1
            return
        if response.status_code == 429:
            counts["sse_refused"] += 1
            counts["refused_without_hint"] += "Retry-After" not in response.headers
            await response.aclose()
            return
        if response.status_code != 200:
            counts["other_errors"] += 1
            return
        counts["sse_admitted"] += 1

        async def drain() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async for _ in response.aiter_lines():
                    pass

        drains.append(asyncio.ensure_future(drain()))

    # SSE first (the gateway's cap lets 16 of the carrier's through to telemetry), then gRPC takes what is left.
    await asyncio.gather(*(sse_watch() for _ in range(sse_count)))
    await asyncio.gather(*(grpc_watch(i) for i in range(grpc_count)))
    counts["grpc_max_per_identity"] = max(per_identity.values(), default=0)
    return counts


# --- W-2 full: the store restarted, and its connections exhausted, while 100 trucks stream ---------------------

W2_TRUCKS = 100


async def _w2_through_a_fault(mesh: Mesh, mesh_pki: Pki, fault, heal, *, rng: random.Random) -> dict:
    """100 trucks stream at 2 Hz; ``fault`` breaks the store at a seeded moment; health must say NOT_SERVING;
    ``heal``; then every service SERVING again, none replaced, every truck's acks past what it sent, and every
    acknowledged frame stored once, in order, without a hole."""
    pids = {name: child.process.pid for name, child in mesh.children.items()}
    fleet, tasks = await _fleet_streaming(mesh, mesh_pki, W2_TRUCKS, period_seconds=0.5)
    seen_not_serving: set[str] = set()
    try:
        await asyncio.sleep(rng.uniform(1, 4))  # the fault's seeded moment
        acked_before = sum(t.acked for t in fleet)
        faulted = time.monotonic()
        await fault()

        async def stuck() -> bool:
            statuses = await mesh.status()
            seen_not_serving.update(n for n, s in statuses.items() if s == "NOT_SERVING")
            return bool(seen_not_serving)

        await wait_for(stuck, timeout_seconds=30, interval_seconds=0.2)
        await asyncio.sleep(1)  # an outage of a moment more, the trucks still sending
        await heal()
        healed = time.monotonic()
        await mesh.wait_serving(timeout_seconds=60)
        serving_seconds = time.monotonic() - healed
        targets = [t.sent for t in fleet]
        await wait_for(lambda: all(t.acked >= s for t, s in zip(fleet, targets, strict=True)), timeout_seconds=90,
                       interval_seconds=0.2)
        caught_up_seconds = time.monotonic() - healed
    finally:
        await _stop(tasks)
    client: redis.asyncio.Redis = connect_async(mesh.store.url)
    lost = duplicated = 0
    try:
        for truck in fleet:
            entries = await client.xrange(TelemetryStore.frames_key(truck.truck.vehicle_id))
            sequences = [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
            stored = set(sequences)
            lost += sum(1 for s in range(1, truck.acked + 1) if s not in stored)
            duplicated += len(sequences) - len(stored)
    finally:
        await client.aclose()
    return {"trucks": W2_TRUCKS, "acked_before": acked_before, "acked": sum(t.acked for t in fleet),
            "acked_lost": lost, "duplicated": duplicated, "not_serving": sorted(seen_not_serving),
            "outage_seconds": round(healed - faulted, 1), "serving_after_heal_seconds": round(serving_seconds, 1),
            "caught_up_after_heal_seconds": round(caught_up_seconds, 1),
            "sessions_reopened": sum(t.sessions - 1 for t in fleet),
            "nobody_exited": {n: c.process.pid for n, c in mesh.children.items()} == pids
            and all(c.process.returncode is None for c in mesh.children.values())}


@pytest.mark.chaos(seeds=1)
@pytest.mark.chaos_id("W-2")
@pytest.mark.timeout(400)
async def test_w2_full(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory, chaos_seed: int,
                       chaos_record) -> None:
    """Both W-2 faults in turn on one mesh under 100 trucks: the store killed -9 and restarted on its port, then
    every connection of every pool dropped while the store takes no new client."""
    rng = random.Random(chaos_seed)
    figures: dict[str, dict] = {}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("w2-full")) as mesh:
        async def kill() -> None:
            kill_store(mesh)

        async def restart() -> None:
            await asyncio.to_thread(restart_store, mesh)

        figures["restart"] = await _w2_through_a_fault(mesh, mesh_pki, kill, restart, rng=rng)
        store = ConnectionsRefused(mesh.store.url)
        try:
            figures["pool_exhausted"] = await _w2_through_a_fault(mesh, mesh_pki, store.exhaust, store.heal, rng=rng)
        finally:
            await store.aclose()
    print(figures)
    chaos_record("W-2", **figures)
    for fault, figure in figures.items():
        assert figure["nobody_exited"] and figure["not_serving"], (fault, figure)
        assert figure["acked_lost"] == 0 and figure["duplicated"] == 0, (fault, figure)
        assert figure["acked"] > figure["acked_before"], (fault, figure)
