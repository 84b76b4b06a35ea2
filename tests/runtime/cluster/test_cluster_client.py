"""The runtime's cluster client itself: routing of pipelines and transactions, and durable waits per primary."""

from __future__ import annotations

import pytest
import redis.asyncio
from redis.exceptions import RedisError

from services.runtime import connect_async, wait_durable
from services.runtime._cluster import ClusterClient, _probe_key

from .valkey_cluster import ValkeyCluster

#: Hash tags that land on each of the three primaries of a fresh cluster (slots split in thirds).
KEYS = [f"t:{{v{i}}}:frames" for i in range(12)]


@pytest.fixture
async def cluster_client(valkey_cluster: ValkeyCluster) -> ClusterClient:
    client = connect_async(valkey_cluster.url)
    assert isinstance(client, ClusterClient)
    await client.initialize()
    yield client
    await client.aclose()


async def test_plain_pipeline_splits_by_primary_and_keeps_the_order(cluster_client: ClusterClient) -> None:
    nodes = {cluster_client.node_for_key(k).name for k in KEYS}
    assert len(nodes) == 3, nodes
    sha = await cluster_client.script_load("return redis.call('INCR', KEYS[1])")
    pipe = cluster_client.pipeline(transaction=False)
    for key in KEYS:
        pipe.set(key, key)
        pipe.evalsha(sha, 1, key + ":n")  # blocked in redis-py's own cluster pipelines
    pipe.publish("test:doorbell", "x")  # keyless for routing purposes: any primary
    for key in KEYS:
        pipe.get(key)
    replies = await pipe.execute()
    assert replies[-len(KEYS):] == [k.encode() for k in KEYS]
    assert replies[1:2 * len(KEYS):2] == [1] * len(KEYS)  # each script ran once, on its key's primary
    print(f"one pipeline of {len(replies)} commands over {len(nodes)} primaries: replies in queue order")


async def test_transaction_runs_on_its_slot_and_cross_slot_is_refused(cluster_client: ClusterClient) -> None:
    async def bump(pipe: redis.asyncio.client.Pipeline) -> int:
        value = int(await pipe.get("c:{acme}:n") or 0)
        pipe.multi()
        pipe.set("c:{acme}:n", value + 1)
        # Not the carrier's real event stream: the mesh sharing this cluster consumes that one.
        pipe.xadd("test-stream:{acme}", {"n": value + 1})
        pipe.publish("test:doorbell", "test-stream:{acme}")
        return value + 1

    first = await cluster_client.transaction(bump, "c:{acme}:n", value_from_callable=True)
    second = await cluster_client.transaction(bump, "c:{acme}:n", value_from_callable=True)
    assert second == first + 1
    other = next(k for k in KEYS if cluster_client.node_for_key(k).name
                 != cluster_client.node_for_key("c:{acme}:n").name)
    with pytest.raises(RedisError):
        async with cluster_client.pipeline(transaction=True) as pipe:
            pipe.set("c:{acme}:n", 0)
            pipe.set(other, 0)  # another primary's slot: the server answers MOVED, nothing commits
            await pipe.execute()
    assert int(await cluster_client.get("c:{acme}:n")) == second
    print("WATCH/MULTI with PUBLISH committed twice on the owner of {acme}; a cross-node MULTI was refused")


async def test_wait_durable_sends_a_probe_and_waitaof_to_every_primary_written(
        cluster_client: ClusterClient) -> None:
    for key in KEYS:
        await cluster_client.set(key, b"w")
    assert await wait_durable(cluster_client, KEYS, 2000)
    probed = {cluster_client.node_for_key(_probe_key(k)).name for k in KEYS if await cluster_client.exists(
        _probe_key(k))}
    assert len(probed) == 3, probed
    print("wait_durable: probe write + WAITAOF 1 0 on each of the 3 primaries that took writes")


async def test_waitaof_on_a_connection_without_writes_confirms_nothing(valkey_cluster: ValkeyCluster) -> None:
    """Why wait_durable writes a probe first: WAITAOF answers at once on a connection that wrote nothing."""
    port = valkey_cluster.ports[0]
    fresh = redis.asyncio.Redis(host="127.0.0.1", port=port, password=valkey_cluster.password)
    try:
        local, _ = await fresh.execute_command("WAITAOF", 1, 0, 1)
        info = await fresh.info("persistence")
    finally:
        await fresh.aclose()
    assert int(local) == 1 and info["aof_enabled"] == 1
    print("a fresh connection's WAITAOF returned 1 immediately: it only covers that connection's writes")
