"""The embedded store: the wheel's Valkey, AOF on, free port, password, data kept across restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from services.runtime import ConfigError, EmbeddedStore, connect_async, new_id, resolve_redis_url


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def test_start_persist_stop_restart(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    info = store.ensure_running()
    try:
        client = _client(info.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.set(b"k", b"v")
        assert client.execute_command("WAITAOF", 1, 0, 5000) == [1, 0]
        # A second caller finds the same store instead of starting another.
        assert store.ensure_running().pid == info.pid
        # The password is required and never shown.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=info.host, port=info.port).ping()
        assert info.password not in info.display_url
    finally:
        assert store.stop()
    assert store.info() is None
    assert not store.stop()
    again = store.ensure_running()
    try:
        assert _client(again.url).get(b"k") == b"v"
        assert (tmp_path / "store" / "data" / "appendonlydir").is_dir()
    finally:
        store.stop()


def test_redis_url_overrides_embedded(tmp_path: Path) -> None:
    url = "redis://example.invalid:6379/0"
    assert resolve_redis_url(url, tmp_path) == url
    assert not (tmp_path / "store").exists()


def test_bad_redis_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL must start with"):
        resolve_redis_url("http://localhost:6379", tmp_path)


async def test_replica_acks_wait_for_replicas_that_are_not_there(store_client) -> None:
    """HAULMESH_STORE_ACK_REPLICAS set on a store without replicas: nothing is confirmed (the ack is withheld and
    the caller told UNAVAILABLE), never a silent local-only ack. With replicas: tests/telemetry, AT-05."""
    from services.runtime import wait_durable

    assert await wait_durable(store_client, ["replica-acks"], 1000)
    assert not await wait_durable(store_client, ["replica-acks"], 100, replicas=1)
    assert not await wait_durable(store_client, ["replica-acks"], 100, replicas=1, replica_disk=False)


async def test_a_closed_client_opens_no_connection_again(store_url: str) -> None:
    """A task still running when its client is closed (a commit loop, a consumer a test forgot) must not open a
    connection that nothing will ever close: redis-py's pool would open one on demand and keep it, and its socket
    is then found unclosed by the garbage collector at random, much later (once: at the end of the test run).
    The runtime's pool stays closed: a command after the close fails as a connection error, opening nothing, and
    a command in flight at the close leaves nothing open either."""
    client = connect_async(store_url)
    await client.ping()
    blocked = asyncio.create_task(client.blpop([f"nothing-{new_id()}"], timeout=2))
    await asyncio.sleep(0.2)  # the BLPOP is on the wire
    await client.aclose()
    with pytest.raises(redis.ConnectionError):
        await blocked
    with pytest.raises(redis.ConnectionError, match="closed"):
        await client.set("after-close", b"1")
    pool = client.connection_pool
    assert [c for c in (*pool._available_connections, *pool._in_use_connections) if c.is_connected] == []
