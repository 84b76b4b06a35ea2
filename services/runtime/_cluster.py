"""Redis Cluster: the client the store factory returns for ``redis+cluster://`` URLs, and durable waits.

redis-py's asyncio ``RedisCluster`` routes single commands by key, but its pipelines refuse what the
stores rely on: PUBLISH and EVALSHA are blocked in cluster pipelines, and its transactional pipeline
resolves slots on a helper thread with an event loop of its own. :class:`ClusterClient` therefore keeps
redis-py's routing for plain commands and Pub/Sub, and runs every pipeline on ordinary
``redis.asyncio.Redis`` clients, one per primary (:meth:`ClusterClient.node_client`):

* a transaction (``transaction()`` or ``pipeline(transaction=True)``) goes to the primary of its first
  watched key, or of its first queued key when it watches none; the key design keeps what commits
  together in one slot (hash tags), and the server refuses (MOVED/CROSSSLOT) anything that is not;
* a plain pipeline is split by primary, the parts run concurrently, and the replies come back in the
  order the commands were queued (a keyless PUBLISH goes to the primary of its channel's slot: classic
  Pub/Sub is broadcast over the cluster bus, so any node will do).

Stores stay unaware of the topology: the same code runs on one node and on a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisClusterException

__all__ = ["ClusterClient", "confirmed_durable", "queue_durable_wait", "wait_all_durable", "wait_durable"]

#: Lifetime of the probe key a durable wait writes (see :func:`wait_durable`).
_PROBE_TTL_MS = 60_000


class ClusterClient(redis.asyncio.RedisCluster):
    """A ``RedisCluster`` whose pipelines and transactions run on per-primary clients (see the module)."""

    def __init__(self, *args: Any, node_max_connections: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._node_clients: dict[str, redis.asyncio.Redis] = {}
        self._node_max_connections = node_max_connections

    def node_client(self, node: ClusterNode) -> redis.asyncio.Redis:
        """A plain client of ``node`` (same credentials and timeouts), for pipelines and transactions."""
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "redis_connect_func"}
            pool = redis.asyncio.BlockingConnectionPool(connection_class=node.connection_class,
                                                        max_connections=self._node_max_connections,
                                                        timeout=kwargs.get("socket_timeout") or 5.0, **kwargs)
            client = self._node_clients[node.name] = redis.asyncio.Redis.from_pool(pool)
        return client

    async def node_for(self, *args: Any) -> ClusterNode:
        """The primary serving the command ``args`` (a keyless command: any primary)."""
        if self._initialize:
            await self.initialize()
        try:
            slot = await self._determine_slot(*args)
        except RedisClusterException:
            return self.get_primaries()[0]
        return self.nodes_manager.get_node_from_slot(slot, False)

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        return self.nodes_manager.get_node_from_slot(self.keyslot(key), False)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _RoutedPipeline:  # type: ignore[override]
        return _RoutedPipeline(self, bool(transaction))

    #: redis-py's single-node helper (WATCH, run, EXEC, again on WatchError) over :meth:`pipeline`.
    transaction = redis.asyncio.Redis.transaction  # type: ignore[assignment]

    async def aclose(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        self._node_clients.clear()
        await super().aclose()


class _RoutedPipeline(Pipeline):
    """A single-node pipeline whose connection pool is chosen by key (see the module docstring)."""

    _callbacks = redis.asyncio.Redis().response_callbacks

    def __init__(self, cluster: ClusterClient, transaction: bool) -> None:
        super().__init__(None, self._callbacks, transaction, None)  # type: ignore[arg-type]
        self._cluster = cluster

    async def _route(self, *args: Any) -> None:
        self.connection_pool = self._cluster.node_client(await self._cluster.node_for(*args)).connection_pool

    async def watch(self, *names: Any) -> Any:
        if not self.watching:
            await self._route("EXISTS", names[0])
        return await super().watch(*names)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self.command_stack and not self.watching:
            return []
        if self.is_transaction:
            if self.connection is None:
                await self._route(*self.command_stack[0][0])
            return await super().execute(raise_on_error)
        stack, parts = self.command_stack, {}
        try:
            for index, (args, _) in enumerate(stack):
                node = await self._cluster.node_for(*args)
                parts.setdefault(node.name, (node, []))[1].append(index)
            replies: list[Any] = [None] * len(stack)
            for indexes, part in await asyncio.gather(*(self._run(node, indexes, stack)
                                                        for node, indexes in parts.values())):
                for index, reply in zip(indexes, part, strict=True):
                    replies[index] = reply
        finally:
            await self.reset()
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def _run(self, node: ClusterNode, indexes: list[int], stack: list[Any]) -> tuple[list[int], list[Any]]:
        pipe = self._cluster.node_client(node).pipeline(transaction=False)
        for index in indexes:
            args, options = stack[index]
            pipe.execute_command(*args, **options)
        return indexes, await pipe.execute(raise_on_error=False)


async def wait_durable(client: redis.asyncio.Redis, keys: Iterable[str], timeout_ms: int, *,
                       replicas: int = 0, replica_disk: bool = True) -> bool:
    """Whether every write already applied to the stores holding ``keys`` is fsync'd to the AOF, and, when
    ``replicas`` > 0, held by at least that many of each store's replicas (HAULMESH_STORE_ACK_REPLICAS): on their
    disk too with ``replica_disk`` (``WAITAOF 1 <replicas>``; a replica reports its fsync'd offset about once a
    second, so each wait takes ≈ 1 s), else received (``WAIT <replicas>``, one round trip, then ``WAITAOF 1 0``):
    either way what a failover to one of them keeps (docs/capacity.md, "Durability").

    ``WAITAOF`` waits for the offset of the last write *of its own connection*: on a connection that has
    written nothing it answers at once, confirming nothing. So each store (each primary that holds one of
    ``keys``, on a cluster) gets a probe write — a short-lived key in the slot of one of ``keys`` — and
    ``WAITAOF 1 0`` on the same connection (one pipeline): the probe follows every write already applied
    there, so its fsync covers them all, whichever connections carried them.
    """
    targets: dict[str, tuple[redis.asyncio.Redis, str]] = {}
    for key in keys:
        if isinstance(client, ClusterClient):
            node = client.node_for_key(key)
            targets.setdefault(node.name, (client.node_client(node), key))
        else:
            targets.setdefault("", (client, key))
            break

    async def one(node_client: redis.asyncio.Redis, key: str) -> bool:
        pipe = node_client.pipeline(transaction=False)
        queue_durable_wait(pipe, key, timeout_ms, replicas=replicas, replica_disk=replica_disk)
        return confirmed_durable(await pipe.execute(), replicas=replicas, replica_disk=replica_disk)

    return all(await asyncio.gather(*(one(c, k) for c, k in targets.values())))


def queue_durable_wait(pipe: Any, key: str, timeout_ms: int, *, replicas: int = 0, replica_disk: bool = True) -> None:
    """Queue :func:`wait_durable`'s probe and wait for one store (not a cluster) at the end of ``pipe``, behind
    the writes queued before them: one round trip for the writes and their durability. Their replies are the
    pipeline's last ones; :func:`confirmed_durable` reads them."""
    pipe.set(_probe_key(key), b"1", px=_PROBE_TTL_MS)
    if replicas and not replica_disk:
        pipe.execute_command("WAIT", replicas, timeout_ms)
        pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
    else:
        pipe.execute_command("WAITAOF", 1, replicas, timeout_ms)


def confirmed_durable(replies: list[Any], *, replicas: int = 0, replica_disk: bool = True) -> bool:
    """Whether the replies of :func:`queue_durable_wait`'s commands confirm the fsync (and the replicas); a
    reply that is an error (a pipeline run with ``raise_on_error=False``) is raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    if replicas and not replica_disk:
        _, copies, (local, _) = replies
    else:
        _, (local, copies) = replies
    return int(local) >= 1 and int(copies) >= replicas


async def wait_all_durable(client: redis.asyncio.Redis, timeout_ms: int, *, replicas: int = 0,
                           replica_disk: bool = True) -> bool:
    """Whether every write already applied anywhere in the store (every primary, on a cluster) is fsync'd:
    what a service waits for before it acknowledges a change whose keys it does not know (it made it
    through other services)."""
    if not isinstance(client, ClusterClient):
        return await wait_durable(client, ["durable-edge"], timeout_ms, replicas=replicas, replica_disk=replica_disk)
    if client._initialize:
        await client.initialize()
    keys: dict[str, str] = {}
    primaries = {node.name for node in client.get_primaries()}
    tag = 0
    while len(keys) < len(primaries) and tag < 100_000:  # a few dozen tags reach every primary
        key = f"durable-edge-{tag}"
        keys.setdefault(client.node_for_key(key).name, key)
        tag += 1
    return await wait_durable(client, keys.values(), timeout_ms, replicas=replicas, replica_disk=replica_disk)


def _probe_key(key: str) -> str:
    """``fsync-probe:{tag}`` in the slot of ``key`` (its hash tag, else the whole key as the tag)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    tag = key[start + 1:end] if start >= 0 and end > start + 1 else key
    return f"fsync-probe:{{{tag}}}"
