"""A scripted truck and a telemetry process of the tests' own, for the telemetry tests."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2, location_pb2
from services.runtime import Mesh, carrier_metadata, free_port, new_id
from tests.conftest import Pki, wait_for
from tests.trucks import Truck


def batch(frames: list[frame_pb2.SignedFrame]) -> stream_pb2.StreamTelemetryRequest:
    return stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=frames))


class Session:
    """An open StreamTelemetry call whose requests the test feeds and whose responses it collects."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._requests: asyncio.Queue[stream_pb2.StreamTelemetryRequest | None] = asyncio.Queue()
        self.call = telemetry_service_pb2_grpc.TelemetryServiceStub(channel).StreamTelemetry(
            self._request_iterator(), timeout=120)
        self.responses: list[stream_pb2.StreamTelemetryResponse] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _request_iterator(self) -> AsyncIterator[stream_pb2.StreamTelemetryRequest]:
        while (item := await self._requests.get()) is not None:
            yield item

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.append(response)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def send(self, request: stream_pb2.StreamTelemetryRequest) -> None:
        self._requests.put_nowait(request)

    def close(self) -> None:
        self._requests.put_nowait(None)

    def of(self, kind: str) -> list:
        return [getattr(r, kind) for r in self.responses if r.WhichOneof("message") == kind]

    @property
    def acked_through(self) -> int:
        acks = self.of("ack")
        return acks[-1].through_sequence if acks else 0

    async def aclose(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


_SESSION_ARCHIVES: dict[str, Path] = {}


def session_archive(redis_url: str) -> Path:
    """The archive directory every test telemetry process on ``redis_url`` shares unless told otherwise: a Redis
    store archives to one object store only (the first one's STORE-ID; a process with another refuses to
    archive), as the replicas of a deployment share one bucket. Removed when the test run ends."""
    if redis_url not in _SESSION_ARCHIVES:
        directory = Path(tempfile.mkdtemp(prefix="haulmesh-test-archive-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _SESSION_ARCHIVES[redis_url] = directory
    return _SESSION_ARCHIVES[redis_url]


def free_metrics_port(workers: int) -> int:
    """A port for HAULMESH_METRICS_PORT with the next ``workers - 1`` ports free too (worker i serves on port + i)."""
    while True:
        port = free_port()
        try:
            with contextlib.ExitStack() as held:
                for index in range(1, workers):
                    probe = held.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port + index))
            return port
        except OSError:
            continue


class TelemetryProcess:
    """``python -m services.telemetry`` as a child process of the test, on a free port."""

    def __init__(self, cert_dir: Path, state_dir: Path, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("HAULMESH_")}
        self._env.update(HAULMESH_CERT_DIR=str(cert_dir), HAULMESH_STATE_DIR=str(state_dir), REDIS_URL=redis_url,
                         HAULMESH_PORT=str(self.port))
        self._env.update({"HAULMESH_GRACE_PERIOD_SECONDS": "1", **env})  # a short grace unless the test sets one
        self._env.setdefault("HAULMESH_ARCHIVE_URL", str(session_archive(redis_url)))
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = state_dir / "telemetry.log"

    async def start(self, probe: grpc.ChannelCredentials) -> None:
        # The child writes to its own copy of the descriptor; the parent's is closed once it is started.
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.telemetry",
                                                                env=self._env, stderr=log)
        async with grpc.aio.secure_channel(self.address, probe) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                if self.process.returncode is not None:
                    raise RuntimeError(f"telemetry exited with {self.process.returncode}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("telemetry did not become SERVING")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The processes serving the port: with HAULMESH_WORKERS > 1 the supervising parent's children, else it."""
        if int(self._env.get("HAULMESH_WORKERS", "1")) <= 1:
            return [self.pid]
        return sorted(int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split())

    def listening_workers(self) -> list[int]:
        """The worker pids that hold a listening socket on the gRPC port (from /proc: a worker's socket inode in
        LISTEN state on the port), so a test knows the kernel can hand each of them connections."""
        listening: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as rows:
                for row in list(rows)[1:]:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                        listening.add(f"socket:[{fields[9]}]")
        holders = []
        for pid in self.worker_pids():
            with contextlib.suppress(FileNotFoundError):
                sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
                if sockets & listening:
                    holders.append(pid)
        return holders

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    @classmethod
    @asynccontextmanager
    async def running(cls, mesh_pki: Pki, state_dir: Path, redis_url: str, **env: str) -> AsyncIterator[Self]:
        """The one way a test runs its own telemetry process: started with the mesh's certificates on
        ``redis_url``, probed as an operator until SERVING, stopped after."""
        process = cls(mesh_pki.directory, state_dir, redis_url, **env)
        try:
            await process.start(mesh_pki.credentials("operator", "probe"))
            yield process
        finally:
            await process.stop()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                await self.kill()


async def open_streams(process: TelemetryProcess, trucks: list[Truck]) -> list[tuple[grpc.aio.Channel, Session]]:
    """Opens a stream per truck, all at once, sends frame 1 on each and asserts each is acknowledged."""
    opened = []
    for truck in trucks:
        channel = grpc.aio.secure_channel(process.address, truck.credentials())
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch([truck.frame(1)]))
        opened.append((channel, session))
    for _, session in opened:
        try:
            await wait_for(lambda session=session: session.acked_through == 1 or session.ended.is_set(),
                           timeout_seconds=30)
        except TimeoutError:
            raise AssertionError(f"no ack in 30 s; responses {session.responses}") from None
        assert session.acked_through == 1, f"stream ended: {session.error}"
    return opened


async def close_streams(opened: list[tuple[grpc.aio.Channel, Session]]) -> None:
    for channel, session in opened:
        await session.aclose()
        await channel.close()


HOUSTON = location_pb2.Location(lat=29.7499, lon=-95.3584, address="Houston, TX")
ATLANTA = location_pb2.Location(lat=33.749, lon=-84.388, address="Atlanta, GA")


async def dispatch_to(mesh: Mesh, pki_: object, truck: Truck, carrier: str,
                      stops: list[mission_pb2.Stop] | None = None, tms_load_id: str = "") -> mission_pb2.Mission:
    """Registers ``truck`` as a fleet operator would, then dispatches a Houston → Atlanta mission to it for
    ``carrier`` as the tender service does on acceptance (``stops`` replaces the default two)."""
    stops = stops or [mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=HOUSTON),
                      mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=ATLANTA)]
    credentials = pki_.credentials  # type: ignore[attr-defined]
    async with grpc.aio.secure_channel(mesh.address("mission"), credentials("operator", "ops")) as ops, \
            grpc.aio.secure_channel(mesh.address("mission"), credentials("service", "tender")) as tender:
        await mission_service_pb2_grpc.MissionServiceStub(ops).CreateVehicle(
            mission_service_pb2.CreateVehicleRequest(vehicle_id=truck.vehicle_id, vehicle=vehicle_pb2.Vehicle(
                home_region="US-TX-HOU", capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))), timeout=10)
        return await mission_service_pb2_grpc.MissionServiceStub(tender).CreateMission(
            mission_service_pb2.CreateMissionRequest(request_id=new_id(), mission=mission_pb2.Mission(
                tender=f"tenders/{new_id()}", quote=f"quotes/{new_id()}", vehicle=f"vehicles/{truck.vehicle_id}",
                load=mission_pb2.LoadDetails(tms_load_id=tms_load_id or f"LOAD-{truck.vehicle_id}",
                                             equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT, weight_lb=30_000),
                stops=stops)),
            metadata=carrier_metadata(carrier), timeout=10)


async def stored_sequences(mesh: Mesh, mesh_pki: Pki, vehicle: str) -> list[int]:
    """Every stored sequence of ``vehicle``, through ListTelemetryFrames as a fleet operator."""
    sequences, token = [], ""
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("operator", "cli")) as channel:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        while True:
            page = await stub.ListTelemetryFrames(telemetry_service_pb2.ListTelemetryFramesRequest(
                parent=f"vehicles/{vehicle}", page_size=1000, page_token=token), timeout=30)
            sequences += [f.signed_frame.sequence for f in page.telemetry_frames]
            token = page.next_page_token
            if not token:
                return sequences
