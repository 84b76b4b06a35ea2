"""A local three-primary Valkey cluster for tests, from the same binary the embedded store runs.

Three ``valkey-server`` processes with ``--cluster-enabled yes`` on free loopback ports, AOF on (the
stores' ``WAITAOF`` needs it) and a generated password, each in its own folder; joined with CLUSTER MEET,
the 16,384 slots split in three ranges with CLUSTER ADDSLOTSRANGE, ready when every node reports
``cluster_state:ok`` and knows all three. Config files (0600), not arguments, carry the password.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

from services.runtime import EmbeddedStore
from services.runtime._store import free_port

SLOTS = 16384


@dataclass
class ValkeyCluster:
    """Three primaries under ``directory``; :meth:`start`, then :attr:`url`, then :meth:`stop`."""

    directory: Path
    size: int = 3
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    ports: list[int] = field(default_factory=list)
    bus_ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL the runtime's store factory takes (any node seeds the slot map)."""
        return f"redis+cluster://:{quote(self.password, safe='')}@127.0.0.1:{self.ports[0]}"

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5)

    def start(self, timeout_seconds: float = 30.0) -> None:
        binary = EmbeddedStore.executable()
        for index in range(self.size):
            port, bus_port = free_port(), free_port()
            node_dir = self.directory / f"node{index}"
            node_dir.mkdir(parents=True, mode=0o700)
            conf = node_dir / "valkey.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join([
                    # The bus port explicitly: the default (port + 10000) overflows for high free ports.
                    "bind 127.0.0.1", f"port {port}", f"cluster-port {bus_port}", f"dir {node_dir}",
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf", "cluster-node-timeout 5000", "appendonly yes",
                    "appendfsync everysec", 'save ""', f"requirepass {self.password}",
                    f"masterauth {self.password}", f"logfile {node_dir / 'valkey.log'}", "",
                ]))
            self.processes.append(subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
            self.bus_ports.append(bus_port)
        deadline = time.monotonic() + timeout_seconds
        clients = [self._node(port) for port in self.ports]
        try:
            for client in clients:
                self._until(deadline, lambda c=client: c.ping())
            per_node = SLOTS // self.size
            for index, client in enumerate(clients):
                last = SLOTS - 1 if index == self.size - 1 else (index + 1) * per_node - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", index * per_node, last)
            for port, bus_port in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port, bus_port)
            for client in clients:
                self._until(deadline, lambda c=client: self._ready(c))
        finally:
            for client in clients:
                client.close()

    def _ready(self, client: redis.Redis) -> bool:
        info = {str(k): str(v) for k, v in client.cluster("INFO").items()}
        return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == self.size

    def _until(self, deadline: float, predicate) -> None:
        while True:
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a cluster node exited at start (see {self.directory}/node*/valkey.log)")
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
