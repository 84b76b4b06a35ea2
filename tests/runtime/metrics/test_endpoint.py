"""The runtime's metrics endpoint: configuration, HTTP exposition, start and stop, and a real process."""

from __future__ import annotations

import asyncio
import socket
import sys

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from services.runtime import METRICS_REGISTRY, ConfigError, MetricsEndpoint, ServiceConfig
from services.runtime._store import free_port
from services.telemetry import metrics
from tests.conftest import Pki
from tests.telemetry.helpers import TelemetryProcess

from .conftest import parse, value


@pytest.mark.parametrize(("raw", "port"), [(None, 0), ("", 0), ("0", 0), ("9464", 9464)])
def test_metrics_port_from_env(raw: str | None, port: int) -> None:
    env = {} if raw is None else {"HAULMESH_METRICS_PORT": raw}
    assert ServiceConfig.from_env("telemetry", env).metrics_port == port


@pytest.mark.parametrize("raw", ["abc", "-1", "65536", "80.5"])
def test_bad_metrics_port_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceConfig.from_env("telemetry", {"HAULMESH_METRICS_PORT": raw})
    assert caught.value.field == "HAULMESH_METRICS_PORT"
    assert "HAULMESH_METRICS_PORT" in str(caught.value)


def test_port_zero_is_off() -> None:
    endpoint = MetricsEndpoint("127.0.0.1", 0)
    endpoint.start()
    assert not endpoint.enabled and endpoint.url == ""
    endpoint.stop()  # nothing to stop, no error


def test_out_of_range_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        MetricsEndpoint("127.0.0.1", 70000)


async def test_serves_the_registry_over_http_until_stopped() -> None:
    registry = CollectorRegistry()
    probe = Counter("haulmesh_test_probe_total", "A test counter.", ["kind"], registry=registry)
    probe.labels("a").inc(3)
    endpoint = MetricsEndpoint("127.0.0.1", free_port(), registry=registry)
    endpoint.start()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            reply = await http.get(endpoint.url)
        assert reply.status_code == 200
        assert value(parse(reply.text), "haulmesh_test_probe_total", kind="a") == 3
    finally:
        await asyncio.to_thread(endpoint.stop)
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(endpoint.url)


def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        endpoint = MetricsEndpoint("127.0.0.1", busy.getsockname()[1])
        with pytest.raises(ConfigError) as caught:
            endpoint.start()
    assert caught.value.field == "HAULMESH_METRICS_PORT"


def test_open_streams_gauge_follows_opened_and_closed() -> None:
    def current() -> float:
        return METRICS_REGISTRY.get_sample_value("haulmesh_telemetry_open_streams")

    start = current()
    metrics.stream_opened()
    metrics.stream_opened()
    assert current() == start + 2
    metrics.stream_closed()
    metrics.stream_closed()
    assert current() == start


def test_edge_cpu_ignores_unset_and_impossible_values() -> None:
    def count() -> float:
        return METRICS_REGISTRY.get_sample_value("edge_cpu_utilization_percent_count")

    start = count()
    for percent in (0.0, -5.0, 100.5, float("nan")):
        metrics.record_edge_cpu(percent)
    assert count() == start
    metrics.record_edge_cpu(100.0)
    assert count() == start + 1


def _telemetry_env(mesh_pki: Pki, store_url: str, tmp_path_factory: pytest.TempPathFactory,
                   metrics_port: str) -> dict[str, str]:
    """The environment the tests' telemetry process gets, with ``HAULMESH_METRICS_PORT`` overridden."""
    process = TelemetryProcess(mesh_pki.directory, tmp_path_factory.mktemp("telemetry"), store_url)
    return {**process._env, "HAULMESH_METRICS_PORT": metrics_port}


async def test_a_service_with_a_bad_metrics_port_exits_2_naming_it(mesh_pki: Pki, store_url: str,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    env = _telemetry_env(mesh_pki, store_url, tmp_path_factory, "not-a-port")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.telemetry", env=env,
                                                   stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"HAULMESH_METRICS_PORT" in stderr


async def test_a_service_whose_metrics_port_is_taken_exits_2(mesh_pki: Pki, store_url: str,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = _telemetry_env(mesh_pki, store_url, tmp_path_factory, str(busy.getsockname()[1]))
        log = tmp_path_factory.mktemp("busy-log") / "telemetry.log"
        with log.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.telemetry", env=env,
                                                           stderr=sink)
            assert await asyncio.wait_for(process.wait(), 30) == 2
    assert "HAULMESH_METRICS_PORT" in log.read_text()
