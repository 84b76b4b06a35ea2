"""The embedded store: the wheel's Valkey, AOF on, free port, password, data kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from services.runtime import ConfigError, EmbeddedStore, resolve_redis_url


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
