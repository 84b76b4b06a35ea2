"""Typed configuration from the environment: every wrong input gets a clear error naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime import ConfigError, ServiceConfig


def test_defaults(tmp_path: Path) -> None:
    config = ServiceConfig.from_env("tender", {"HAULMESH_STATE_DIR": str(tmp_path)})
    assert config.port == 50051
    assert config.listen_address == "127.0.0.1:50051"
    assert config.tls.cert_file == tmp_path / "certs" / "tender.pem"
    assert config.redis_url is None
    assert config.peer_addresses["billing"] == "127.0.0.1:50054"
    assert config.grace_period_seconds == 10.0
    # The server's keepalive policy (docs/decisions.md, "Keepalive, both ends"); the edge client pings every 10 s.
    assert (config.keepalive_time_seconds, config.keepalive_timeout_seconds,
            config.keepalive_min_ping_interval_seconds) == (20.0, 10.0, 5.0)
    assert config.call_max_attempts == 3 and config.store_ack_replicas == 0 and config.test_faults_file is None


def test_retries_and_replica_acks_are_read(tmp_path: Path) -> None:
    config = ServiceConfig.from_env("tender", {"HAULMESH_CALL_MAX_ATTEMPTS": "1", "HAULMESH_STORE_ACK_REPLICAS": "2",
                                               "HAULMESH_STORE_ACK_REPLICA_DISK": "0"})
    assert config.call_max_attempts == 1 and config.store_ack_replicas == 2 and not config.store_ack_replica_disk
    assert ServiceConfig.from_env("tender", {}).store_ack_replica_disk


def test_event_claim_idle_time_is_read() -> None:
    assert ServiceConfig.from_env("billing", {}).events_claim_idle_seconds == 30.0
    assert ServiceConfig.from_env("billing", {"HAULMESH_EVENTS_CLAIM_IDLE_SECONDS": "2.5"}
                                  ).events_claim_idle_seconds == 2.5


@pytest.mark.parametrize("env,field", [
    ({"HAULMESH_PORT": "70000"}, "HAULMESH_PORT"),
    ({"HAULMESH_PORT": "abc"}, "HAULMESH_PORT"),
    ({"HAULMESH_GRACE_PERIOD_SECONDS": "soon"}, "HAULMESH_GRACE_PERIOD_SECONDS"),
    ({"HAULMESH_CALL_TIMEOUT_SECONDS": "0"}, "HAULMESH_CALL_TIMEOUT_SECONDS"),
    ({"HAULMESH_DURABLE_TIMEOUT_SECONDS": "never"}, "HAULMESH_DURABLE_TIMEOUT_SECONDS"),
    ({"HAULMESH_BILLING_ADDR": "nohost"}, "HAULMESH_BILLING_ADDR"),
    ({"HAULMESH_LOG_LEVEL": "LOUD"}, "HAULMESH_LOG_LEVEL"),
    ({"HAULMESH_KEEPALIVE_TIME_SECONDS": "0"}, "HAULMESH_KEEPALIVE_TIME_SECONDS"),
    ({"HAULMESH_KEEPALIVE_TIMEOUT_SECONDS": "soon"}, "HAULMESH_KEEPALIVE_TIMEOUT_SECONDS"),
    ({"HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS": "-1"}, "HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS"),
    ({"HAULMESH_CALL_MAX_ATTEMPTS": "0"}, "HAULMESH_CALL_MAX_ATTEMPTS"),
    ({"HAULMESH_CALL_MAX_ATTEMPTS": "6"}, "HAULMESH_CALL_MAX_ATTEMPTS"),
    ({"HAULMESH_STORE_ACK_REPLICAS": "-1"}, "HAULMESH_STORE_ACK_REPLICAS"),
    ({"HAULMESH_STORE_ACK_REPLICAS": "all"}, "HAULMESH_STORE_ACK_REPLICAS"),
    ({"HAULMESH_STORE_ACK_REPLICA_DISK": "yes"}, "HAULMESH_STORE_ACK_REPLICA_DISK"),
    ({"HAULMESH_EVENTS_CLAIM_IDLE_SECONDS": "0"}, "HAULMESH_EVENTS_CLAIM_IDLE_SECONDS"),
])
def test_bad_values_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceConfig.from_env("tender", env)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_unknown_service() -> None:
    with pytest.raises(ConfigError, match="unknown service"):
        ServiceConfig.from_env("teleporter", {})


def test_missing_certificate_is_named(tmp_path: Path) -> None:
    config = ServiceConfig.from_env("tender", {"HAULMESH_STATE_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"ca\.pem does not exist"):
        config.tls.check_readable()


def test_the_probe_port_is_off_by_default_and_checked() -> None:
    assert ServiceConfig.from_env("billing", {}).health_port == 0
    assert ServiceConfig.from_env("billing", {"HAULMESH_HEALTH_PORT": "9465"}).health_port == 9465
    for bad in ("http", "-1", "70000"):
        with pytest.raises(ConfigError) as caught:
            ServiceConfig.from_env("billing", {"HAULMESH_HEALTH_PORT": bad})
        assert caught.value.field == "HAULMESH_HEALTH_PORT"
