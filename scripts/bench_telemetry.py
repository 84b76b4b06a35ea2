"""Telemetry figures for ``make bench``: the telemetry service under signed traffic from many trucks.

* live CPU: trucks on their own streams each send one signed frame per message; the figure is the
  telemetry *server process's* CPU time (from /proc) divided by the frames it acknowledged, so the load
  generator sharing the machine does not count;
* replay: one truck sends a spooled backlog in batches of Welcome.max_batch_frames; frames acknowledged
  per second;
* subscriber latency: a watcher on a truck's frames while the fleet sends 2,000 frames/s in all; latency
  from the frame's device time (stamped just before sending) to its arrival at the watcher;
* open streams: trucks that completed Hello → Welcome and stay connected; the server's RSS with them;
* archive: one truck's 20,000 stored frames archived by RunArchive (Parquet parts written, read back, manifest,
  index); frames archived per second, and bytes per frame in Parquet (the parts' sizes) against bytes per frame
  in Redis (MEMORY USAGE of the truck's stream, before any trim).

Frames are signed up front (ECDSA P-256, as a truck's TPM would) so signing does not slow the generator.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass

import grpc
import redis.asyncio
from bench_yardsticks import frame_payload
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import Mesh, certificate_key_id, pki

__all__ = ["drive_1hz", "drive_live", "make_trucks", "run_telemetry_bench"]

@dataclass
class Truck:
    vehicle_id: str
    issued: pki.IssuedCertificate
    credentials: grpc.ChannelCredentials
    key_id: str

    def frame(self, sequence: int) -> frame_pb2.SignedFrame:
        raw = frame_payload(self.vehicle_id, sequence)
        return frame_pb2.SignedFrame(sequence=sequence, payload=raw, key_id=self.key_id,
                                     signature=self.issued.private_key.sign(raw, ec.ECDSA(hashes.SHA256())))


def make_trucks(ca: pki.CertificateAuthority, count: int, prefix: str) -> list[Truck]:
    """``count`` bench trucks of ``ca``, each with its own certificate (vehicle ids PREFIX-00000 ...)."""
    trucks = []
    for i in range(count):
        vehicle_id = f"{prefix}-{i:05d}"
        issued = pki.issue(ca, pki.identity_for("vehicle", vehicle_id), valid_days=1)
        credentials = grpc.ssl_channel_credentials(ca.certificate_pem, issued.private_key_pem, issued.certificate_pem)
        trucks.append(Truck(vehicle_id, issued, credentials, certificate_key_id(issued.certificate_pem)))
    return trucks


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Session:
    """One truck's open stream: Hello → Welcome, then frames and acks."""

    def __init__(self, channel: grpc.aio.Channel, truck: Truck) -> None:
        self.truck = truck
        self._queue: asyncio.Queue[stream_pb2.StreamTelemetryRequest | None] = asyncio.Queue()
        self._call = telemetry_service_pb2_grpc.TelemetryServiceStub(channel).StreamTelemetry(self._requests())
        self.acked = 0
        self.acks = 0  # Ack messages received (the 1 Hz figure is per-frame-ack traffic: one Ack a frame)
        self.welcome: stream_pb2.Welcome | None = None
        self._acked_event = asyncio.Event()

    async def _requests(self):
        while (item := await self._queue.get()) is not None:
            yield item

    async def open(self) -> None:
        await self._queue.put(stream_pb2.StreamTelemetryRequest(hello=stream_pb2.Hello(
            vehicle_id=self.truck.vehicle_id, boot_id=uuid.uuid4().hex)))
        reply = await self._call.read()
        self.welcome = reply.welcome
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (reply := await self._call.read()) is not grpc.aio.EOF:
            if reply.WhichOneof("message") == "ack":
                self.acked = max(self.acked, reply.ack.through_sequence)
                self.acks += 1
                self._acked_event.set()

    async def send(self, frames: list[frame_pb2.SignedFrame]) -> None:
        await self._queue.put(stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=frames)))

    async def wait_acked(self, sequence: int, timeout_seconds: float = 60) -> None:
        deadline = time.monotonic() + timeout_seconds
        while self.acked < sequence:
            self._acked_event.clear()
            await asyncio.wait_for(self._acked_event.wait(), max(0.01, deadline - time.monotonic()))

    async def close(self) -> None:
        await self._queue.put(None)
        self._call.cancel()


async def _open_sessions(address: str | Mesh, trucks: list[Truck]) -> tuple[list[Session], list[grpc.aio.Channel]]:
    # One connection per truck, as on the road: each presents its own certificate.
    if isinstance(address, Mesh):
        address = address.address("telemetry")
    channels = [grpc.aio.secure_channel(address, truck.credentials) for truck in trucks]
    sessions = [Session(channel, truck) for channel, truck in zip(channels, trucks, strict=True)]
    await asyncio.gather(*(s.open() for s in sessions))
    return sessions, channels


async def _open_in_batches(address: str | Mesh, trucks: list[Truck], batch: int = 250
                           ) -> tuple[list[Session], list[grpc.aio.Channel]]:
    # A few hundred TLS handshakes at a time: thousands at once time out on 2 cores.
    sessions: list[Session] = []
    channels: list[grpc.aio.Channel] = []
    for start in range(0, len(trucks), batch):
        more, more_channels = await _open_sessions(address, trucks[start:start + batch])
        sessions += more
        channels += more_channels
    return sessions, channels


@dataclass
class LiveFigures:
    """Server CPU per frame; the store's CPU and memory per stored frame (inputs of docs/capacity.md)."""

    server_cpu_us: float
    store_cpu_us: float
    store_bytes: float


async def live_cpu(mesh: Mesh, ca: pki.CertificateAuthority, *, trucks: int = 100, rate: int = 1000,
                   seconds: float = 5.0) -> LiveFigures:
    fleet = make_trucks(ca, trucks, "LIVE")
    pids = {"server": mesh.children["telemetry"].process.pid}
    if mesh.store is not None:
        pids["store"] = mesh.store.pid
    used = await drive_live(mesh.address("telemetry"), pids, fleet, rate=rate, seconds=seconds)
    store_bytes = await _bytes_per_frame(mesh, fleet[0].vehicle_id, int(rate * seconds / trucks))
    return LiveFigures(used["server"], used.get("store", float("nan")), store_bytes)


async def drive_live(address: str, pids: dict[str, int], fleet: list[Truck], *, rate: int,
                     seconds: float) -> dict[str, float]:
    """The 10 Hz phase against the server at ``address``: each truck one frame per message at ``rate`` frames/s
    in all; CPU µs per frame of each process of ``pids`` (by name), from the first frame until the last is acked
    (the streams are opened before)."""
    trucks = len(fleet)
    sessions, channels = await _open_sessions(address, fleet)
    per_truck = int(rate * seconds / trucks)
    frames = {s.truck.vehicle_id: [s.truck.frame(i + 1) for i in range(per_truck)] for s in sessions}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}

    async def drive(session: Session) -> None:
        for frame in frames[session.truck.vehicle_id]:
            await session.send([frame])  # live traffic: one frame per message
            await asyncio.sleep(trucks / rate)
        await session.wait_acked(per_truck)

    await asyncio.gather(*(drive(s) for s in sessions))
    used = {name: (cpu_seconds(pid) - before[name]) / (per_truck * trucks) * 1e6 for name, pid in pids.items()}
    for s in sessions:
        await s.close()
    for c in channels:
        await c.close()
    return used


@dataclass
class SlowFleetFigures:
    """1,000 trucks at 1 Hz: server CPU per frame, and Acks per frame (1.0: every frame its own Ack)."""

    server_cpu_us: float
    acks_per_frame: float
    frames: int


async def live_cpu_1hz(mesh: Mesh, ca: pki.CertificateAuthority, *, trucks: int = 1000,
                       seconds: int = 10) -> SlowFleetFigures:
    """Real trucks' rate: each truck one frame a second (see :func:`drive_1hz`)."""
    return await drive_1hz(mesh.address("telemetry"), mesh.children["telemetry"].process.pid,
                           make_trucks(ca, trucks, "SLOW"), seconds=seconds)


async def drive_1hz(address: str, pid: int, fleet: list[Truck], *, seconds: int) -> SlowFleetFigures:
    """Each truck one frame a second (starts spread over the first second), so every frame is more than the Ack
    interval after the previous one and gets its own Ack. The server's CPU (process ``pid``) from /proc over the
    sending until the last Ack, divided by the frames."""
    trucks = len(fleet)
    sessions, channels = await _open_in_batches(address, fleet)
    frames = {s.truck.vehicle_id: [s.truck.frame(i + 1) for i in range(seconds)] for s in sessions}
    acks_before = sum(s.acks for s in sessions)
    before = cpu_seconds(pid)
    began = time.perf_counter()

    async def drive(index: int, session: Session) -> None:
        for i, frame in enumerate(frames[session.truck.vehicle_id]):
            await asyncio.sleep(max(0.0, began + index / trucks + i - time.perf_counter()))
            await session.send([frame])
        await session.wait_acked(seconds)

    await asyncio.gather(*(drive(i, s) for i, s in enumerate(sessions)))
    used = cpu_seconds(pid) - before
    acks = sum(s.acks for s in sessions) - acks_before
    for s in sessions:
        await s.close()
    await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    total = seconds * trucks
    return SlowFleetFigures(used / total * 1e6, acks / total, total)


async def _bytes_per_frame(mesh: Mesh, vehicle_id: str, frames: int) -> float:
    """MEMORY USAGE of one truck's frame stream (every entry sampled) over its frames."""
    if mesh.store is None:
        return float("nan")
    client = redis.asyncio.Redis.from_url(mesh.store.url)
    try:
        used = await client.memory_usage(f"telemetry:{{{vehicle_id}}}:frames", samples=0)
    finally:
        await client.aclose()
    return (used or 0) / frames


async def replay(mesh: Mesh, ca: pki.CertificateAuthority, *, frames: int = 20_000) -> float:
    [truck] = make_trucks(ca, 1, "REPLAY")
    backlog = [truck.frame(i + 1) for i in range(frames)]
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials)
    session = Session(channel, truck)
    await session.open()
    batch = max(1, session.welcome.max_batch_frames or 500)
    began = time.perf_counter()
    for start in range(0, frames, batch):
        await session.send(backlog[start:start + batch])
    await session.wait_acked(frames, timeout_seconds=300)
    elapsed = time.perf_counter() - began
    await session.close()
    await channel.close()
    return frames / elapsed


async def subscriber_latency(mesh: Mesh, ca: pki.CertificateAuthority, operator: grpc.ChannelCredentials, *,
                             trucks: int = 50, rate: int = 2000, seconds: float = 5.0) -> tuple[float, float]:
    fleet = make_trucks(ca, trucks, "WATCH")
    sessions, channels = await _open_sessions(mesh, fleet)
    watched = sessions[0].truck.vehicle_id
    latencies: list[float] = []
    watch_channel = grpc.aio.secure_channel(mesh.address("telemetry"), operator)
    watch = telemetry_service_pb2_grpc.TelemetryServiceStub(watch_channel).WatchVehicleTelemetry(
        telemetry_service_pb2.WatchVehicleTelemetryRequest(vehicle=f"vehicles/{watched}"))

    async def listen() -> None:
        while (reply := await watch.read()) is not grpc.aio.EOF:
            sent = reply.telemetry_frame.payload.device_time.ToNanoseconds() / 1e9
            latencies.append(time.time() - sent)

    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0.5)
    per_truck = int(rate * seconds / trucks)

    async def drive(session: Session) -> None:
        for i in range(per_truck):
            await session.send([session.truck.frame(i + 1)])  # signed now: device time = send time
            await asyncio.sleep(trucks / rate)
        await session.wait_acked(per_truck)

    await asyncio.gather(*(drive(s) for s in sessions))
    await asyncio.sleep(0.5)
    watch.cancel()
    listener.cancel()
    for s in sessions:
        await s.close()
    for c in [*channels, watch_channel]:
        await c.close()
    if not latencies:
        return float("nan"), float("nan")
    ordered = sorted(latencies)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


@dataclass
class OpenStreams:
    """Streams held open (Hello → Welcome, connected) by one telemetry process, the time it took, its RSS."""

    held: int
    seconds: float
    rss_mib: float


async def open_streams(mesh: Mesh, ca: pki.CertificateAuthority, *, target: int = 10_000,
                       limit_seconds: float = 120.0) -> OpenStreams:
    """Opens up to ``target`` trucks' streams, 250 at a time, and stops at the first refusal or once
    ``limit_seconds`` have passed (no batch starts after it): the bench stays bounded on a slow machine."""
    fleet = make_trucks(ca, target, "OPEN")
    held, channels = 0, []
    sessions: list[Session] = []
    began = time.perf_counter()
    for start in range(0, target, 250):
        if time.perf_counter() - began > limit_seconds:
            break
        try:
            more, more_channels = await _open_sessions(mesh, fleet[start:start + 250])
        except grpc.aio.AioRpcError:
            break
        sessions += more
        channels += more_channels
        held = len(sessions)
    elapsed = time.perf_counter() - began
    rss = _rss_mib(mesh.children["telemetry"].process.pid)
    for s in sessions:
        await s.close()
    await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    return OpenStreams(held, elapsed, rss)


async def archive_rate(mesh: Mesh, ca: pki.CertificateAuthority, operator: grpc.ChannelCredentials, *,
                       frames: int = 20_000) -> tuple[float, float, float]:
    """``(frames archived per second, Parquet bytes per frame, Redis bytes per frame)`` for one truck's frames."""
    [truck] = make_trucks(ca, 1, "ARCHIVE")
    backlog = [truck.frame(i + 1) for i in range(frames)]
    channel = grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials)
    session = Session(channel, truck)
    await session.open()
    batch = max(1, session.welcome.max_batch_frames or 500)
    for start in range(0, frames, batch):
        await session.send(backlog[start:start + batch])
    await session.wait_acked(frames, timeout_seconds=300)
    await session.close()
    await channel.close()
    redis_bytes = await _bytes_per_frame(mesh, truck.vehicle_id, frames)
    async with grpc.aio.secure_channel(mesh.address("telemetry"), operator) as ops:
        began = time.perf_counter()
        reply = await telemetry_service_pb2_grpc.TelemetryServiceStub(ops).RunArchive(
            telemetry_service_pb2.RunArchiveRequest(vehicle=f"vehicles/{truck.vehicle_id}"), timeout=600)
        elapsed = time.perf_counter() - began
    parquet_bytes = float("nan")
    if mesh.store is not None:
        client = redis.asyncio.Redis.from_url(mesh.store.url)
        try:
            parquet_bytes = int(await client.hget(f"telemetry:{{{truck.vehicle_id}}}:archive", "bytes") or 0) / frames
        finally:
            await client.aclose()
    return reply.frames_archived / elapsed, parquet_bytes, redis_bytes


async def run_telemetry_bench(mesh: Mesh, ca: pki.CertificateAuthority, *, open_target: int = 10_000,
                              open_limit_seconds: float = 120.0, slow_trucks: int = 1000,
                              slow_seconds: int = 10) -> dict:
    live = await live_cpu(mesh, ca)
    slow = await live_cpu_1hz(mesh, ca, trucks=slow_trucks, seconds=slow_seconds)
    replay_rate = await replay(mesh, ca)
    p50, p99 = await subscriber_latency(mesh, ca, mesh.operator_credentials())
    held = await open_streams(mesh, ca, target=open_target, limit_seconds=open_limit_seconds)
    archived_per_s, parquet_bytes, redis_bytes = await archive_rate(mesh, ca, mesh.operator_credentials())
    return {
        "archive_frames_per_s": round(archived_per_s),
        "archive_parquet_bytes_per_frame": round(parquet_bytes, 1),
        "archive_redis_bytes_per_frame": round(redis_bytes, 1),
        "telemetry_server_cpu_us_per_frame": round(live.server_cpu_us, 1),
        "telemetry_store_cpu_us_per_frame": round(live.store_cpu_us, 1),
        "telemetry_store_bytes_per_frame": round(live.store_bytes),
        "telemetry_1hz_server_cpu_us_per_frame": round(slow.server_cpu_us, 1),
        "telemetry_1hz_acks_per_frame": round(slow.acks_per_frame, 3),
        "telemetry_1hz_trucks": slow_trucks,
        "telemetry_1hz_frames": slow.frames,
        "telemetry_replay_frames_per_s": round(replay_rate),
        "telemetry_subscriber_p50_ms": round(p50, 2),
        "telemetry_subscriber_p99_ms": round(p99, 2),
        "telemetry_open_streams": held.held,
        "telemetry_open_streams_target": open_target,
        "telemetry_open_streams_seconds": round(held.seconds, 1),
        "telemetry_open_streams_limit_seconds": open_limit_seconds,
        "telemetry_server_rss_mib": round(held.rss_mib, 1),
    }
