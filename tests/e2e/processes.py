"""One mesh service as a child process of the test (``python -m services.<name>``), on free ports: a billing
process a test kills -9 and restarts (AT-06), a second gateway replica with settings of its own beside the
session mesh (AT-12 with rate limits off, AT-18 with a small quota)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import MESH_SERVICES, Mesh, free_port
from tests.conftest import Pki, wait_for


class ServiceProcess:
    """A service process with the mesh's certificates on ``redis_url``; its peers at ``peers``."""

    def __init__(self, name: str, cert_dir: Path, state_dir: Path, redis_url: str, *,
                 peers: Mapping[str, str] | None = None, **env: str) -> None:
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = free_port()
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("HAULMESH_")}
        self._env.update(HAULMESH_CERT_DIR=str(cert_dir), HAULMESH_STATE_DIR=str(state_dir), REDIS_URL=redis_url,
                         HAULMESH_PORT=str(self.port), HAULMESH_HTTP_PORT=str(self.http_port),
                         HAULMESH_GATEWAY_DEVICE_PORT=str(free_port()), HAULMESH_GRACE_PERIOD_SECONDS="1",
                         PYTHONUNBUFFERED="1")
        self._env.update({f"HAULMESH_{peer.upper()}_ADDR": address for peer, address in (peers or {}).items()})
        self._env.update(env)
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = state_dir / "logs" / f"{name}-{self.port}.log"

    @property
    def base_url(self) -> str:
        """The gateway's REST listener."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, probe: grpc.ChannelCredentials, *, timeout_seconds: float = 60.0) -> None:
        """Spawn it and wait until its health says SERVING (and, for a gateway, its REST listener answers)."""
        await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{self.name}", env=self._env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log)
        async with grpc.aio.secure_channel(self.address, probe) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, timeout_seconds=timeout_seconds, interval_seconds=0.1)
        if self.name == "gateway":
            async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as http:
                async def listening() -> bool:
                    try:
                        await http.get("/api/v1/tenders")  # 401 without a token: the listener is up
                    except httpx.TransportError:
                        return False
                    return True

                await wait_for(listening, timeout_seconds=timeout_seconds, interval_seconds=0.1)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is acknowledged on the way out."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                await self.kill()

    @classmethod
    @asynccontextmanager
    async def running(cls, name: str, mesh_pki: Pki, state_dir: Path, redis_url: str, *,
                      peers: Mapping[str, str] | None = None, **env: str) -> AsyncIterator[Self]:
        """Started (SERVING) on entry, stopped on exit."""
        process = cls(name, mesh_pki.directory, state_dir, redis_url, peers=peers, **env)
        try:
            await process.start(mesh_pki.credentials("operator", "probe"))
            yield process
        finally:
            await process.stop()


def gateway_replica(mesh: Mesh, mesh_pki: Pki, **env: str):
    """Another gateway process of ``mesh`` (its store, its services, its token issuer) with ``env`` of its own:
    what an operator's second replica with other settings would be."""
    assert mesh.store is not None
    return ServiceProcess.running("gateway", mesh_pki, mesh.state_dir, mesh.store.url,
                                  peers={name: mesh.address(name) for name in MESH_SERVICES}, **env)
