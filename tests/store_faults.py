"""Faults of the store itself, injected for real, for the W-2 tests (tests/runtime/test_store_restart.py, the short
version; tests/telemetry/test_chaos_load.py, the full one): the mesh's embedded Valkey killed -9 and started again
on its own port and AOF, and every connection dropped while the store takes no new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import redis.asyncio

from services.runtime import EmbeddedStore, Mesh

__all__ = ["ConnectionsRefused", "kill_store", "restart_store"]


def kill_store(mesh: Mesh) -> None:
    """kill -9 of the mesh's embedded store."""
    os.kill(json.loads((mesh.state_dir / "store" / "store.json").read_text())["pid"], signal.SIGKILL)


def restart_store(mesh: Mesh) -> int:
    """Start the mesh's embedded Valkey again from its own config (same port, password, AOF directory) and
    record its new pid where EmbeddedStore (and so the mesh's stop) finds it. Returns the pid."""
    directory = mesh.state_dir / "store"
    pidfile = directory / "valkey.pid"
    pidfile.unlink(missing_ok=True)
    subprocess.run([EmbeddedStore.executable(), str(directory / "valkey.conf")], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True, timeout=30)
    record = json.loads((directory / "store.json").read_text())
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text().strip():
            record["pid"] = int(pidfile.read_text().strip())
            (directory / "store.json").write_text(json.dumps(record))
            return record["pid"]
        time.sleep(0.05)
    raise AssertionError("the restarted store wrote no pid file")


class ConnectionsRefused:
    """Every pool exhausted: ``exhaust`` drops every client connection while the store takes no new one
    (maxclients 1: the admin connection kept here is the one it keeps), ``heal`` takes clients again."""

    def __init__(self, url: str) -> None:
        self._admin: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, single_connection_client=True)
        self._limit: int | str | None = None

    async def exhaust(self) -> None:
        if self._limit is None:
            self._limit = (await self._admin.config_get("maxclients"))["maxclients"]
        await self._admin.config_set("maxclients", 1)
        await self._admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await self._admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    async def heal(self) -> None:
        if self._limit is not None:
            await self._admin.config_set("maxclients", self._limit)

    async def aclose(self) -> None:
        """Heal (whatever the test did) and close the admin connection."""
        try:
            await self.heal()
        finally:
            await self._admin.aclose()
